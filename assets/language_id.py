"""Language identification stage (fastText), one materialisation per governance variant.

The stage registers a `languages` partition for every language it keeps a document in (the
one source of truth for the per-language stages), and publishes its kept rows split by
language so each per-language stage reads only its own file.
"""

import dagster as dg

from quality_models.dedup import split_by_language
from quality_models.langid import language_id_stage

from .normalize import normalized
from .partitions import language_partitions, variant_partitions
from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
    read_stage,
)


@governance_stage(
    "language_id",
    deps=[normalized],
    kinds={"fasttext", "parquet"},
    partitions_def=variant_partitions,
)
def language_id(context: dg.AssetExecutionContext, home: GovtuneHome,
                governance: GovernanceSettings):  # fmt: skip
    """`lang`, `lang_score`, `script` and `lid_decision` per document; out-of-scope,
    script mismatches, confident declared/predicted mismatches and low-confidence documents go
    to the ledger (not under `no_lid`/`none`). New languages become partitions."""
    variant = context.partition_key
    table = read_stage(home, "all", "normalized", "all").kept()
    result = language_id_stage(table, governance.load(variant))
    by_lang = split_by_language(result.kept)
    known = set(context.instance.get_dynamic_partitions(language_partitions.name))
    new = sorted(set(by_lang) - known)
    if new:
        context.instance.add_dynamic_partitions(language_partitions.name, new)
        context.log.info(f"new language partitions: {', '.join(new)}")
    yield from finish_stage(
        result,
        table.num_rows,
        home.stage_dir(variant, "language_id", "all"),
        partition=variant,
        kept=by_lang,
        languages=sorted(by_lang),
        new_language_partitions=new,
    )
