"""The ledger of one governance variant and its global conservation check.

Every document that entered through any source partition must end in exactly one place: a
curated file of that variant, or one ledger row (ingest quarantine, normalisation, language ID,
dedup, quality) with its stage and reason. The check counts document ids, not rows, so a
document lost between stages, counted twice, or left in a language whose partition was never
curated fails it; it is blocking, so nothing trains on a variant whose books do not balance.
"""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from quality_models.contract import REJECTED_SCHEMA, write_parquet_atomic
from quality_models.storage import NotPublished, read_published

from . import ui
from .curated import curated
from .dedup import deduplicated
from .ingest import raw_documents, source_partitions
from .language_id import language_id
from .normalize import normalized
from .partitions import PER_VARIANT, variant_partitions
from .quality import quality_scored
from .resources import GovtuneHome
from .stage_io import REFRESH_CONDITION

CONSERVATION_CHECK = "conserves_documents"


def _ids(table: pa.Table) -> list[str]:
    return table.column("doc_id").to_pylist() if table.num_rows else []


def audit(home: GovtuneHome, variant: str, sources: list[str]) -> dict:
    """Where every raw document of `variant` ended, read from the published files."""
    raw: set[str] = set()
    ledgers: list[pa.Table] = []
    stale: list[str] = []
    for source in sources:
        try:
            pub = read_published(home.stage_dir("all", "raw_documents", source))
        except NotPublished:
            continue
        raw.update(_ids(pub.kept().select(["doc_id"])))
        rej = pub.rejected()
        raw.update(_ids(rej))
        ledgers.append(rej)
    missing_stages: list[str] = []
    upstream = {
        "normalized": ("all", "normalized", "all"),
        "language_id": (variant, "language_id", "all"),
    }
    published = {}
    for label, where in upstream.items():
        try:
            published[label] = read_published(home.stage_dir(*where))
            ledgers.append(published[label].rejected())
        except NotPublished:
            missing_stages.append(label)
    lid = published.get("language_id")
    languages = lid.kept_names if lid else []
    curated_ids: list[str] = []
    not_curated: list[str] = []
    for lang in languages:
        previous = lid.kept_rows(lang)
        for stage in ("deduplicated", "quality_scored"):
            try:
                pub = read_published(home.stage_dir(variant, stage, lang))
            except NotPublished:
                not_curated.append(f"{stage}[{variant}|{lang}]")
                break
            if pub.manifest["input"] != previous:
                stale.append(f"{stage}[{variant}|{lang}]")
            ledgers.append(pub.rejected())
            previous = pub.kept_rows()
        path = home.curated_dir(variant) / f"{lang}.parquet"
        if not path.is_file():
            not_curated.append(f"curated[{variant}|{lang}]")
            continue
        if pq.read_metadata(path).num_rows != previous:
            stale.append(f"curated[{variant}|{lang}]")
        curated_ids += pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()
    ledger = pa.concat_tables(
        [t.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA) for t in ledgers if t.num_rows]
        or [REJECTED_SCHEMA.empty_table()]
    )
    ledger_ids = _ids(ledger)
    counted = Counter(curated_ids) + Counter(ledger_ids)
    return {
        "raw": len(raw),
        "curated": len(curated_ids),
        "ledger": len(ledger_ids),
        "missing": sorted(raw - set(counted)),
        "counted_twice": sorted(d for d, n in counted.items() if n > 1),
        "unknown": sorted(set(counted) - raw),
        "not_curated": not_curated,
        "missing_stages": missing_stages,
        "stale": stale,
        "languages": languages,
        "ledger_table": ledger,
    }


@dg.asset(
    group_name="governance",
    code_version="1",
    deps=[
        dg.AssetDep(raw_documents, partition_mapping=dg.AllPartitionMapping()),
        normalized,
        language_id,
        dg.AssetDep(deduplicated, partition_mapping=PER_VARIANT),
        dg.AssetDep(quality_scored, partition_mapping=PER_VARIANT),
        dg.AssetDep(curated, partition_mapping=PER_VARIANT),
    ],
    partitions_def=variant_partitions,
    kinds={"parquet"},
    automation_condition=REFRESH_CONDITION,
    check_specs=[
        dg.AssetCheckSpec(
            CONSERVATION_CHECK,
            asset="ledger",
            blocking=True,
            description="every raw document is in exactly one place: a curated file of this "
            "variant or one ledger row (counted by doc_id across all partitions)",
        )
    ],
    owners=["team:governance"],
)
def ledger(context: dg.AssetExecutionContext, home: GovtuneHome):
    """Every ledger row of one governance variant (all sources, stages and languages) in
    `rejected/<variant>.parquet`, and the global conservation check: raw = Σ curated + Σ
    ledger, by document id."""
    variant = context.partition_key
    sources = sorted(context.instance.get_dynamic_partitions(source_partitions.name))
    found = audit(home, variant, sources)
    table = found.pop("ledger_table")
    path = write_parquet_atomic(table, home.ledger_file(variant))
    stages, reasons = table.column("stage").to_pylist(), table.column("reason").to_pylist()
    by_stage = Counter(zip(stages, reasons, strict=True))
    rows = [f"| {s} | {r} | {n} |" for (s, r), n in sorted(by_stage.items())]
    yield dg.MaterializeResult(
        metadata={
            "raw_documents": found["raw"],
            "curated_documents": found["curated"],
            "ledger_rows": found["ledger"],
            "dagster/row_count": table.num_rows,
            "path": dg.MetadataValue.path(str(path)),
            "by_stage_and_reason": dg.MetadataValue.md(
                "\n".join(["| stage | reason | documents |", "|---|---|---:|", *rows])
            ),
            "languages": dg.MetadataValue.json(found["languages"]),
            "rejected_sample": ui.rejected_sample(table, per_reason=2, limit=40),
        }
    )
    problems = {
        k: found[k]
        for k in ("missing", "counted_twice", "unknown", "not_curated", "missing_stages", "stale")
        if found[k]
    }
    yield dg.AssetCheckResult(
        check_name=CONSERVATION_CHECK,
        passed=not problems,
        metadata={
            "raw": found["raw"],
            "curated + ledger": found["curated"] + found["ledger"],
            **{k: dg.MetadataValue.json(v[:20]) for k, v in problems.items()},
            **{f"{k}_count": len(v) for k, v in problems.items()},
        },
        description="balanced"
        if not problems
        else "; ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in problems.items()),
    )
