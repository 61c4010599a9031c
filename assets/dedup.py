"""Exact + MinHash near-duplicate removal, per variant and language."""

import dagster as dg

from quality_models.dist_dedup import dedup_published, uses_shards
from quality_models.pipeline import dedup_or_skip

from .engine import EngineResource
from .language_id import language_id
from .partitions import variant_and_lang, variant_language_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    ledger_check,
    read_stage,
    stage_metadata,
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
    upstream = read_stage(home, variant, "language_id", "all")
    # the engine (local, or Ray: sharded across workers) changes where it runs, not the result
    config = engine.apply(governance.load(variant))
    folder = home.stage_dir(variant, "deduplicated", lang)
    if uses_shards(config, upstream.kept_rows(lang)):  # out of core: part files, one manifest
        info = {"partition": str(context.partition_key)}
        result, pub = dedup_published(upstream.kept_files(lang), config, lang, folder, info)
        yield dg.MaterializeResult(
            data_version=dg.DataVersion(pub.data_version),
            metadata=stage_metadata(result, pub, engine=config.engine.name),
        )
        yield ledger_check(pub)
        return
    table = upstream.kept(lang)
    result = dedup_or_skip(table, config, lang, variant)
    yield from finish_stage(result, table.num_rows, folder, partition=str(context.partition_key))
