"""The curated per-language datasets: Parquet that `datasets` loads, with a dataset card."""

import hashlib

import dagster as dg
import pyarrow.compute as pc

from quality_models.contract import (
    read_parquet,
    reason_counts,
    write_parquet_atomic,
    write_text_atomic,
)
from quality_models.storage import NotPublished, read_published

from . import ui
from .partitions import variant_and_lang, variant_language_partitions
from .quality import quality_scored
from .resources import GovtuneHome
from .stage_io import REFRESH_CONDITION, read_stage

CURATED_CHECK = "matches_quality_scored"


@dg.asset(
    group_name="governance",
    code_version="2",
    automation_condition=REFRESH_CONDITION,
    deps=[quality_scored],
    partitions_def=variant_language_partitions,
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            CURATED_CHECK,
            asset="curated",
            blocking=True,
            description="the curated file holds exactly the rows quality_scored kept (on disk)",
        )
    ],
    owners=["team:governance"],
)
def curated(context: dg.AssetExecutionContext, home: GovtuneHome):
    """`curated/<variant>/<lang>.parquet` plus `<lang>.md`: counts, settings, rejections. Pass-
    through columns of the sources (a task's label, group, split) are kept."""
    variant, lang = variant_and_lang(context)
    upstream = read_stage(home, variant, "quality_scored", lang)
    table = upstream.kept()
    path = write_parquet_atomic(table, home.curated_dir(variant) / f"{lang}.parquet")
    card = dataset_card(home, variant, lang, table.num_rows, str(path))
    write_text_atomic(card + "\n", path.with_suffix(".md"))
    buckets: dict[str, int] = {}
    if "quality_bucket" in table.column_names:
        for b in table.column("quality_bucket").to_pylist():
            buckets[str(b)] = buckets.get(str(b), 0) + 1
    digest = hashlib.sha1(path.read_bytes() + path.with_suffix(".md").read_bytes()).hexdigest()
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(digest[:16]),
        metadata={
            "documents": table.num_rows,
            "dagster/row_count": table.num_rows,
            "path": dg.MetadataValue.path(str(path)),
            "quality_buckets": dg.MetadataValue.json(buckets),
            "kept_sample": ui.kept_sample(table),
            "dagster/column_schema": ui.column_schema(table.schema),
            "card": dg.MetadataValue.md(card),
        },
    )
    written = read_parquet(path)
    same = written.num_rows == upstream.kept_rows() and (
        written.column("doc_id").to_pylist() == table.column("doc_id").to_pylist()
    )
    yield dg.AssetCheckResult(
        check_name=CURATED_CHECK,
        passed=same,
        metadata={
            "partition": str(context.partition_key),
            "quality_scored_kept": upstream.kept_rows(),
            "curated_rows": written.num_rows,
        },
    )


def dataset_card(home: GovtuneHome, variant: str, lang: str, rows: int, path: str) -> str:
    """The card: how many documents, how to load them, and what each stage removed."""
    stages = []
    for stage, name, label in (
        ("language_id", "all", "language_id"),
        ("deduplicated", lang, "dedup"),
        ("quality_scored", lang, "quality"),
    ):
        try:
            rej = read_published(home.stage_dir(variant, stage, name)).rejected()
        except NotPublished:
            continue
        if name == "all" and rej.num_rows:
            rej = rej.filter(pc.equal(rej.column("lang"), lang))
        stages += [f"| {label} | {k} | {v} |" for k, v in reason_counts(rej).items()]
    return "\n".join(
        [
            f"# govtune curated `{lang}` (variant `{variant}`)",
            "",
            f"{rows} documents. Load with `datasets.load_dataset('parquet', data_files='{path}')`.",
            "",
            "| stage | reason | rejected |",
            "|---|---|---:|",
            *stages,
        ]
    )
