"""Normalisation stage: NFC, mojibake repair, control characters, whitespace."""

import dagster as dg
import pyarrow as pa

from quality_models.normalize import normalize_stage

from .ingest import raw_documents
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_rows,
)


@governance_stage("normalized", deps=[raw_documents], kinds={"parquet"})
def normalized(home: GovtuneHome, governance: GovernanceSettings):
    """Documents in Unicode NFC without control characters; what changed is counted. Reads every
    ingested source (sorted by name, so the order is stable)."""
    files = sorted(home.path("stages", "all", "raw_documents").glob("*.parquet"))
    if not files:
        raise dg.Failure("no ingested source yet: materialise raw_documents first")
    table = pa.concat_tables([read_rows(f) for f in files])
    result = normalize_stage(table, governance.load().normalize)
    kept_path = home.stage_file("all", "normalized", "all")
    ledger_path = home.ledger_file("all", "normalize", "all")
    yield from finish_stage(
        result, table.num_rows, kept_path, ledger_path, sources=[f.stem for f in files]
    )
