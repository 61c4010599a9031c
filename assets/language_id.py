"""Language identification stage (fastText), one materialisation per governance variant."""

import dagster as dg

from quality_models.langid import language_id_stage

from .normalize import normalized
from .partitions import variant_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_rows,
)


@governance_stage(
    "language_id",
    deps=[normalized],
    kinds={"fasttext", "parquet"},
    partitions_def=variant_partitions,
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
    yield from finish_stage(result, table.num_rows, kept_path, ledger_path)
