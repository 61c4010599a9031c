"""Language identification stage (fastText), one materialisation per governance variant."""

import dagster as dg

from quality_models.langid import language_id_stage

from .normalize import normalized
from .partitions import variant_partitions
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
    deps=[normalized],
    partitions_def=variant_partitions,
    kinds={"fasttext", "parquet"},
    check_specs=[ledger_check_spec("language_id")],
)
def language_id(context: dg.AssetExecutionContext, home: GovtuneHome,
                governance: GovernanceSettings):  # fmt: skip
    """``lang``, ``lang_score`` and ``script`` per document; out-of-scope, low-confidence and
    declared/predicted mismatches go to the ledger (not under ``no_lid``/``none``)."""
    variant = context.partition_key
    table = read_rows(home.stage_file("all", "normalized", "all"))
    result = language_id_stage(table, governance.load(variant))
    kept_path = home.stage_file(variant, "language_id", "all")
    ledger_path = home.ledger_file(variant, "language_id", "all")
    write_stage(result, kept_path, ledger_path)
    yield dg.MaterializeResult(
        data_version=data_version(kept_path, ledger_path),
        metadata=stage_metadata(result, kept_path),
    )
    yield ledger_check(table.num_rows, kept_path, ledger_path)
