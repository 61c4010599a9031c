"""Quality stage: heuristic rules (Gopher/C4/FineWeb), then KenLM perplexity and CCNet buckets."""

import dagster as dg
import pyarrow as pa

from quality_models.contract import StageResult
from quality_models.pipeline import perplexity_or_skip, quality_or_skip

from .dedup import deduplicated
from .kenlm import kenlm_models, model_for
from .partitions import variant_and_lang, variant_language_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_stage,
)


@governance_stage(
    "quality_scored",
    deps=[deduplicated, kenlm_models],
    kinds={"kenlm", "parquet"},
    partitions_def=variant_language_partitions,
)
def quality_scored(context: dg.AssetExecutionContext, home: GovtuneHome,
                   governance: GovernanceSettings):  # fmt: skip
    """Documents that pass the heuristic rules, with perplexity and head/middle/tail bucket."""
    variant, lang = variant_and_lang(context)
    config = governance.load(variant)
    table = read_stage(home, variant, "deduplicated", lang).kept()
    rules = quality_or_skip(table, config)
    model = model_for(home, lang)
    models = {lang: model} if model else None
    ppl = perplexity_or_skip(rules.kept, config, models)
    combined = StageResult(
        ppl.kept,
        pa.concat_tables([rules.rejected, ppl.rejected]),
        {"rules": rules.metadata, "perplexity": ppl.metadata},
    )
    yield from finish_stage(
        combined,
        table.num_rows,
        home.stage_dir(variant, "quality_scored", lang),
        partition=str(context.partition_key),
        kenlm_model=model or "none",
    )
