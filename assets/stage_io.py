"""What every governance asset does around its library call: read the upstream stage's
*published* output, publish kept rows and ledger rows together (`quality_models.storage`),
report metadata, and check the ledger invariant (`input = kept + rejected`) from the files on
disk as a blocking asset check."""

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from quality_models.config import GovernanceConfig, load_governance_config
from quality_models.contract import StageResult, reason_counts
from quality_models.pipeline import variant_config
from quality_models.storage import NotPublished, Published, publish, read_published

from . import ui
from .resources import GovtuneHome

LEDGER_CHECK = "ledger_balances"

# What automation (the `governance_refresh` sensor) re-materialises: every partition that
# exists, whose inputs now carry another data version, and whose upstream blocking checks all
# passed — a failed check stops the refresh from running past it. A refresh that re-ingests
# unchanged data changes no data version, so nothing downstream is recomputed.
REFRESH_CONDITION = (
    ~dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("inputs_changed_and_checks_passed")


class GovernanceSettings(dg.ConfigurableResource):
    """The governance YAML (`None`: the defaults, which run on the demo data)."""

    config_file: str | None = None

    def load(self, variant: str = "full") -> GovernanceConfig:
        return variant_config(load_governance_config(self.config_file), variant)


def ledger_check_spec(asset: str) -> dg.AssetCheckSpec:
    """The blocking ledger check. Deliberately not a partitioned check: Dagster 1.13's
    `all_deps_blocking_checks_passed` let automation run past a failed *partitioned* blocking
    check in our tests (tests/test_governance_integrity.py), so gating checks stay asset-level
    and name their partition in their metadata."""
    return dg.AssetCheckSpec(
        LEDGER_CHECK,
        asset=asset,
        blocking=True,
        description="input = kept + rejected, counted from the published files on disk",
    )


def read_stage(home: GovtuneHome, variant: str, stage: str, name: str) -> Published:
    """An upstream stage's published output, or a clear failure naming the missing partition."""
    try:
        return read_published(home.stage_dir(variant, stage, name), f"{stage}[{variant}|{name}]")
    except NotPublished as exc:
        raise dg.Failure(f"{exc}: materialise it first") from None


def governance_stage(
    name: str,
    deps: Sequence[Any],
    kinds: set[str],
    partitions_def: dg.PartitionsDefinition | None = None,
    refresh: bool = True,
) -> Callable:
    """The decorator every governance stage shares: its group and code version, the refresh
    condition (not on ingest, which the schedule and the inbox sensor drive) and the blocking
    ledger check."""
    return dg.asset(
        name=name,
        group_name="governance",
        code_version="2",
        automation_condition=REFRESH_CONDITION if refresh else None,
        deps=deps,
        partitions_def=partitions_def,
        kinds=kinds,
        check_specs=[ledger_check_spec(name)],
        owners=["team:governance"],
    )


def finish_stage(
    result: StageResult,
    input_rows: int,
    folder: Path,
    kept: pa.Table | Mapping[str, pa.Table] | None = None,
    partition: str | None = None,
    **extra: Any,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Publish kept and ledger rows together, then yield the materialisation (content-hash data
    version, metadata) and the ledger check counted from the published files."""
    pub = publish(
        folder,
        result.kept if kept is None else kept,
        result.rejected,
        input_rows=input_rows,
        info={"partition": partition},
    )
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(pub.data_version),
        metadata=stage_metadata(result, pub, **extra),
    )
    yield ledger_check(pub)


def ledger_check(pub: Published) -> dg.AssetCheckResult:
    """`input = kept + rejected`, with the row counts read from the Parquet files themselves
    (not from the manifest's own numbers)."""
    kept, rejected = pub.rows_on_disk()  # every part file of every split
    partition = pub.manifest.get("partition") or "(unpartitioned)"
    return dg.AssetCheckResult(
        check_name=LEDGER_CHECK,
        passed=pub.manifest["input"] == kept + rejected,
        metadata={"partition": partition, "input": pub.manifest["input"], "kept": kept,
                  "rejected": rejected},
        description=f"{partition}: {pub.manifest['input']} in = {kept} kept + {rejected} rejected",
    )  # fmt: skip


def _md_table(rows: dict[str, Any], key: str, value: str) -> str:
    lines = [f"| {key} | {value} |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def _histograms(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, dg.MetadataValue]:
    """Every `{"counts": [...], "edges": [...]}` in a stage's metadata, as an inline plot."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(value, Mapping):
            continue
        name = f"{prefix}{key}"
        if "counts" in value and "edges" in value:
            out[f"{name.removesuffix('_histogram')}_histogram"] = ui.histogram(
                value["counts"], value["edges"], name.removesuffix("_histogram").replace("_", " ")
            )
        else:
            out.update(_histograms(value, f"{name}/"))
    return out


def stage_metadata(result: StageResult, pub: Published, **extra: Any) -> dict[str, Any]:
    """What the UI shows for a stage: counts, the reasons with a sample of rejected rows, the
    published files, inline histograms and the stage's own settings (numbers rounded)."""
    s = result.summary()
    meta: dict[str, Any] = {
        "input": s["input"],
        "kept": s["kept"],
        "rejected": s["rejected"],
        "keep_rate": dg.MetadataValue.float(round(float(s["keep_rate"]), 4)),
        "path": dg.MetadataValue.path(str(pub.folder)),
        "ledger_file": dg.MetadataValue.path(str(pub.folder / pub.manifest["rejected"]["file"])),
        "rejection_reasons": dg.MetadataValue.md(
            _md_table(reason_counts(result.rejected), "reason", "documents")
            if result.rejected.num_rows
            else "nothing rejected"
        ),
        "dagster/row_count": s["kept"],
    }
    if result.rejected.num_rows:
        meta["rejected_sample"] = ui.rejected_sample(result.rejected)
    everything = {**result.metadata, **extra}
    meta.update(_histograms(everything))
    for key, value in everything.items():
        if isinstance(value, (dict, list)):
            meta[key] = dg.MetadataValue.json(ui.rounded(value))
        elif isinstance(value, float):
            meta[key] = ui.rounded(value)
        elif isinstance(value, (int, str, bool)) or value is None:
            meta[key] = value if value is not None else "none"
    return meta
