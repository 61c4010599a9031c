"""Per-language KenLM models trained by the pipeline from reference text (CCNet style)."""

import dagster as dg

from quality_models.perplexity import (
    KenLMConfig,
    find_models,
    model_fingerprint,
    train_model,
)
from quality_models.reference import reference_lines, reference_tokens

from .partitions import language_partitions
from .resources import GovtuneHome
from .stage_io import GovernanceSettings


def kenlm_config(governance: GovernanceSettings) -> KenLMConfig:
    settings = {k: v for k, v in governance.load().perplexity.items() if k != "enabled"}
    return KenLMConfig.from_mapping(settings)


def model_for(home: GovtuneHome, lang: str) -> str | None:
    folder = home.kenlm_dir(lang)
    if not folder.is_dir():
        return None
    found = find_models(folder)
    return str(found[lang]) if lang in found else None


@dg.asset(
    group_name="quality_models",
    code_version="1",
    partitions_def=language_partitions,
    kinds={"kenlm"},
    owners=["team:governance"],
)
def kenlm_models(
    context: dg.AssetExecutionContext, home: GovtuneHome, governance: GovernanceSettings
) -> dg.MaterializeResult:
    """An n-gram model of the language's held-out reference text. Reused while the reference
    text and settings are unchanged: the data version is their fingerprint."""
    lang = context.partition_key
    config = kenlm_config(governance)
    lines = reference_lines(
        lang, min_lines=config.min_reference_lines, min_tokens=config.min_reference_tokens
    )
    if not lines:
        return dg.MaterializeResult(
            metadata={"model": "none", "reason": "not enough reference text; documents pass"},
            data_version=dg.DataVersion("no-model"),
        )
    fingerprint = model_fingerprint(lines, lang, config)
    info = train_model(lines, home.kenlm_dir(lang), lang, config)
    if info.reused:
        context.log.info(f"{lang}: reference and settings unchanged, reused {info.path}")
    meta = {
        k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list, tuple)) else v)
        for k, v in info.to_metadata().items()
        if v is not None
    }
    meta["reference_lines"] = len(lines)
    meta["reference_tokens"] = reference_tokens(lang)
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(fingerprint))
