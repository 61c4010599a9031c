"""Exact + MinHash near-duplicate removal, per variant and language."""

import dagster as dg

from quality_models.pipeline import dedup_or_skip

from .language_id import language_id
from .partitions import variant_and_lang, variant_language_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_rows,
)


@governance_stage(
    "deduplicated",
    deps=[language_id],
    kinds={"datasketch", "parquet"},
    partitions_def=variant_language_partitions,
)
def deduplicated(context: dg.AssetExecutionContext, home: GovtuneHome,
                 governance: GovernanceSettings):  # fmt: skip
    """One document per exact/near-duplicate cluster (``rehydrate`` keeps all, labelled)."""
    variant, lang = variant_and_lang(context)
    table = read_rows(home.stage_file(variant, "language_id", "all"), lang)
    result = dedup_or_skip(table, governance.load(variant), lang, variant)
    kept_path = home.stage_file(variant, "deduplicated", lang)
    ledger_path = home.ledger_file(variant, "dedup", lang)
    yield from finish_stage(result, table.num_rows, kept_path, ledger_path)
