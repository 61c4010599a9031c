"""Normalisation stage: NFC, mojibake repair, control characters, whitespace."""

import dagster as dg
import pyarrow as pa

from quality_models.normalize import normalize_stage

from .ingest import raw_documents
from .resources import GovtuneHome
from .stage_io import (
    REFRESH_CONDITION,
    GovernanceSettings,
    data_version,
    ledger_check,
    ledger_check_spec,
    read_rows,
    stage_metadata,
    write_stage,
)


@dg.asset(
    group_name="governance",
    code_version="1",
    automation_condition=REFRESH_CONDITION,
    deps=[raw_documents],
    kinds={"parquet"},
    check_specs=[ledger_check_spec("normalized")],
)
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
    write_stage(result, kept_path, ledger_path)
    yield dg.MaterializeResult(
        data_version=data_version(kept_path, ledger_path),
        metadata=stage_metadata(result, kept_path, sources=[f.stem for f in files]),
    )
    yield ledger_check(table.num_rows, kept_path, ledger_path)
