"""Exact + MinHash near-duplicate removal, per variant and language."""

import dagster as dg

from quality_models.pipeline import dedup_or_skip

from .language_id import language_id
from .partitions import variant_and_lang, variant_language_partitions
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
    deps=[language_id],
    partitions_def=variant_language_partitions,
    kinds={"datasketch", "parquet"},
    check_specs=[ledger_check_spec("deduplicated")],
)
def deduplicated(context: dg.AssetExecutionContext, home: GovtuneHome,
                 governance: GovernanceSettings):  # fmt: skip
    """One document per exact/near-duplicate cluster (``rehydrate`` keeps all, labelled)."""
    variant, lang = variant_and_lang(context)
    table = read_rows(home.stage_file(variant, "language_id", "all"), lang)
    result = dedup_or_skip(table, governance.load(variant), lang, variant)
    kept_path = home.stage_file(variant, "deduplicated", lang)
    ledger_path = home.ledger_file(variant, "dedup", lang)
    write_stage(result, kept_path, ledger_path)
    yield dg.MaterializeResult(
        data_version=data_version(kept_path, ledger_path),
        metadata=stage_metadata(result, kept_path),
    )
    yield ledger_check(table.num_rows, kept_path, ledger_path)
