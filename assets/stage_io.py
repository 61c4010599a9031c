"""What every governance asset does around its library call: read the upstream stage file,
write kept rows and ledger rows atomically, report metadata, and check the ledger invariant
(``input = kept + rejected``) from the files on disk as a blocking asset check."""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from quality_models.config import GovernanceConfig, load_governance_config
from quality_models.contract import StageResult, read_parquet, reason_counts, write_parquet_atomic
from quality_models.pipeline import variant_config

LEDGER_CHECK = "ledger_balances"

# What a scheduled refresh re-materialises downstream: every partition that exists and whose
# inputs now carry another data version. A refresh that re-ingests unchanged data changes no
# data version, so nothing downstream is recomputed; the UI marks stale what did change.
REFRESH_CONDITION = (
    ~dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("inputs_changed")


class GovernanceSettings(dg.ConfigurableResource):
    """The governance YAML (``None``: the defaults, which run on the demo data)."""

    config_file: str | None = None

    def load(self, variant: str = "full") -> GovernanceConfig:
        return variant_config(load_governance_config(self.config_file), variant)


def ledger_check_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        LEDGER_CHECK,
        asset=asset,
        blocking=True,
        description="input = kept + rejected, counted from the files on disk",
    )


def read_rows(path: Path, lang: str | None = None) -> pa.Table:
    table = read_parquet(path)
    if lang is not None:
        table = table.filter(pc.equal(table.column("lang"), lang))
    return table


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
        code_version="1",
        automation_condition=REFRESH_CONDITION if refresh else None,
        deps=deps,
        partitions_def=partitions_def,
        kinds=kinds,
        check_specs=[ledger_check_spec(name)],
    )


def write_stage(result: StageResult, kept_path: Path, ledger_path: Path) -> None:
    write_parquet_atomic(result.kept, kept_path)
    write_parquet_atomic(result.rejected, ledger_path)


def finish_stage(
    result: StageResult, input_rows: int, kept_path: Path, ledger_path: Path, **extra: Any
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Write kept and ledger rows, then yield the materialisation (content-hash data version,
    metadata) and the ledger check counted from the files on disk."""
    write_stage(result, kept_path, ledger_path)
    yield dg.MaterializeResult(
        data_version=data_version(kept_path, ledger_path),
        metadata=stage_metadata(result, kept_path, **extra),
    )
    yield ledger_check(input_rows, kept_path, ledger_path)


def data_version(*paths: Path) -> dg.DataVersion:
    """The content hash of a stage's output files (our Parquet writes are byte-reproducible)."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(path.read_bytes())
    return dg.DataVersion(digest.hexdigest()[:16])


def ledger_check(input_rows: int, kept_path: Path, ledger_path: Path) -> dg.AssetCheckResult:
    kept = read_parquet(kept_path).num_rows
    rejected = read_parquet(ledger_path).num_rows
    return dg.AssetCheckResult(
        check_name=LEDGER_CHECK,
        passed=input_rows == kept + rejected,
        metadata={"input": input_rows, "kept": kept, "rejected": rejected},
    )


def _md_table(rows: dict[str, Any], key: str, value: str) -> str:
    lines = [f"| {key} | {value} |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def stage_metadata(result: StageResult, path: Path, **extra: Any) -> dict[str, Any]:
    s = result.summary()
    meta: dict[str, Any] = {
        "input": s["input"],
        "kept": s["kept"],
        "rejected": s["rejected"],
        "keep_rate": dg.MetadataValue.float(float(s["keep_rate"])),
        "path": dg.MetadataValue.path(str(path)),
        "rejection_reasons": dg.MetadataValue.md(
            _md_table(reason_counts(result.rejected), "reason", "documents")
            if result.rejected.num_rows
            else "nothing rejected"
        ),
        "dagster/row_count": s["kept"],
    }
    for key, value in {**result.metadata, **extra}.items():
        if isinstance(value, (dict, list)):
            meta[key] = dg.MetadataValue.json(value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            meta[key] = value if value is not None else "none"
    return meta
