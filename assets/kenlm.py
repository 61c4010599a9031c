"""Per-language KenLM models trained by the pipeline from reference text (CCNet style)."""

import hashlib
import json

import dagster as dg

from .partitions import language_partitions
from .resources import GovtuneHome
from .stage_io import GovernanceSettings

MODEL_FILE = "model.binary"
INFO_FILE = "model.json"


@dg.asset(
    group_name="quality_models",
    code_version="1",
    partitions_def=language_partitions,
    kinds={"kenlm"},
)
def kenlm_models(context: dg.AssetExecutionContext, home: GovtuneHome,
                 governance: GovernanceSettings) -> dg.MaterializeResult:  # fmt: skip
    """An n-gram model of the language's held-out reference text. Reused while the reference
    text and settings are unchanged (the data version is their checksum)."""
    from quality_models.perplexity import KenLMConfig, train_model
    from quality_models.reference import reference_lines

    lang = context.partition_key
    settings = {k: v for k, v in governance.load().perplexity.items() if k != "enabled"}
    kcfg = KenLMConfig(**settings)
    lines = reference_lines(lang)
    out_dir = home.kenlm_dir(lang)
    if not lines:
        return dg.MaterializeResult(
            metadata={"model": "none", "reason": "not enough reference text; documents pass"},
            data_version=dg.DataVersion("no-model"),
        )
    digest = hashlib.sha256(
        ("\n".join(lines) + json.dumps(settings, sort_keys=True)).encode()
    ).hexdigest()[:16]
    info_path = out_dir / INFO_FILE
    if info_path.is_file() and (out_dir / MODEL_FILE).is_file():
        info = json.loads(info_path.read_text())
        if info.get("key") == digest:
            context.log.info(f"{lang}: reference and settings unchanged, reusing {out_dir}")
            return dg.MaterializeResult(
                metadata={**_meta(info), "reused": True}, data_version=dg.DataVersion(digest)
            )
    model = train_model(lines, out_dir, lang, kcfg)
    info = {**model.as_dict(), "key": digest}
    info_path.write_text(json.dumps(info, indent=1, default=str))
    return dg.MaterializeResult(
        metadata={**_meta(info), "reused": False}, data_version=dg.DataVersion(digest)
    )


def _meta(info: dict) -> dict:
    return {k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v)
            for k, v in info.items() if v is not None}  # fmt: skip
