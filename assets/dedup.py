"""Exact + MinHash near-duplicate removal, per variant and language."""

import dagster as dg

from quality_models.pipeline import dedup_or_skip

from .engine import EngineResource
from .language_id import language_id
from .partitions import variant_and_lang, variant_language_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_stage,
)


@governance_stage(
    "deduplicated",
    deps=[language_id],
    kinds={"datasketch", "parquet"},
    partitions_def=variant_language_partitions,
)
def deduplicated(context: dg.AssetExecutionContext, home: GovtuneHome,
                 governance: GovernanceSettings, engine: EngineResource):  # fmt: skip
    """One kept representative per exact/near-duplicate cluster, with its cluster size (the
    `rehydrate` arm up-weights by it in training); every removal names a kept document."""
    variant, lang = variant_and_lang(context)
    table = read_stage(home, variant, "language_id", "all").kept(lang)
    # the engine (local, or Ray: sharded across workers) changes where it runs, not the result
    result = dedup_or_skip(table, engine.apply(governance.load(variant)), lang, variant)
    yield from finish_stage(
        result,
        table.num_rows,
        home.stage_dir(variant, "deduplicated", lang),
        partition=str(context.partition_key),
    )
