"""Normalisation stage: NFC, mojibake repair, control characters, whitespace."""

import dagster as dg

from quality_models.normalize import normalize_stage
from quality_models.storage import concat_tables, is_published

from .ingest import raw_documents, source_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_stage,
)


@governance_stage("normalized", deps=[raw_documents], kinds={"parquet"})
def normalized(
    context: dg.AssetExecutionContext, home: GovtuneHome, governance: GovernanceSettings
):
    """Documents in Unicode NFC without control characters or terminal escapes; what changed
    is counted. Reads every ingested source (sorted by key, so the order is stable)."""
    sources = sorted(context.instance.get_dynamic_partitions(source_partitions.name))
    published = [s for s in sources if is_published(home.stage_dir("all", "raw_documents", s))]
    if not published:
        raise dg.Failure("no ingested source yet: materialise raw_documents first")
    table = concat_tables([read_stage(home, "all", "raw_documents", s).kept() for s in published])
    result = normalize_stage(table, governance.load().normalize)
    yield from finish_stage(
        result,
        table.num_rows,
        home.stage_dir("all", "normalized", "all"),
        sources=published,
        sources_not_ingested=[s for s in sources if s not in published],
    )
