"""The curated per-language datasets: Parquet that ``datasets`` loads, with a dataset card."""

import dagster as dg
import pyarrow.compute as pc

from quality_models.contract import (
    read_parquet,
    reason_counts,
    write_parquet_atomic,
    write_text_atomic,
)

from .partitions import variant_and_lang, variant_language_partitions
from .quality import quality_scored
from .resources import GovtuneHome
from .stage_io import REFRESH_CONDITION, data_version


@dg.asset(
    group_name="governance",
    code_version="1",
    automation_condition=REFRESH_CONDITION,
    deps=[quality_scored],
    partitions_def=variant_language_partitions,
    kinds={"parquet", "huggingface"},
    check_specs=[
        dg.AssetCheckSpec(
            "matches_quality_scored",
            asset="curated",
            blocking=True,
            description="the curated file holds exactly the rows quality_scored kept (on disk)",
        )
    ],
)
def curated(context: dg.AssetExecutionContext, home: GovtuneHome):
    """``curated/<variant>/<lang>.parquet`` plus ``<lang>.md``: counts, settings, rejections."""
    variant, lang = variant_and_lang(context)
    table = read_parquet(home.stage_file(variant, "quality_scored", lang))
    path = write_parquet_atomic(table, home.curated_dir(variant) / f"{lang}.parquet")
    stages = []
    for stage_dir, name in (("language_id", "all"), ("dedup", lang), ("quality", lang)):
        ledger = home.ledger_file(variant, stage_dir, name)
        if ledger.is_file():
            rej = read_parquet(ledger)
            if name == "all":
                rej = rej.filter(pc.equal(rej.column("lang"), lang))
            stages += [f"| {stage_dir} | {k} | {v} |" for k, v in reason_counts(rej).items()]
    card = "\n".join(
        [
            f"# govtune curated `{lang}` (variant `{variant}`)",
            "",
            f"{table.num_rows} documents. Load with "
            f"`datasets.load_dataset('parquet', data_files='{path}')`.",
            "",
            "| stage | reason | rejected |",
            "|---|---|---:|",
            *stages,
        ]
    )
    write_text_atomic(card + "\n", path.with_suffix(".md"))
    buckets: dict[str, int] = {}
    for b in table.column("quality_bucket").to_pylist():
        buckets[str(b)] = buckets.get(str(b), 0) + 1
    yield dg.MaterializeResult(
        data_version=data_version(path, path.with_suffix(".md")),
        metadata={
            "documents": table.num_rows,
            "dagster/row_count": table.num_rows,
            "path": dg.MetadataValue.path(str(path)),
            "quality_buckets": dg.MetadataValue.json(buckets),
            "card": dg.MetadataValue.md(card),
        },
    )
    kept = read_parquet(home.stage_file(variant, "quality_scored", lang)).num_rows
    written = read_parquet(path).num_rows
    yield dg.AssetCheckResult(
        check_name="matches_quality_scored",
        passed=kept == written,
        metadata={"quality_scored_kept": kept, "curated_rows": written},
    )
