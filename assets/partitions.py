"""Partitions: languages (from configuration) and governance variants (the ablation arms).

Per-language stages are partitioned by ``variant x lang`` so every ablation arm of every language
is its own materialisation in the UI. ``GOVTUNE_LANGUAGES`` (comma-separated) overrides the demo
languages.
"""

import os

import dagster as dg

from quality_models.config import DEMO_LANGUAGES
from quality_models.pipeline import VARIANTS


def configured_languages() -> list[str]:
    env = os.environ.get("GOVTUNE_LANGUAGES")
    return [x.strip() for x in env.split(",") if x.strip()] if env else list(DEMO_LANGUAGES)


LANGUAGES = configured_languages()
language_partitions = dg.StaticPartitionsDefinition(LANGUAGES)
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
variant_language_partitions = dg.MultiPartitionsDefinition(
    {"variant": variant_partitions, "lang": language_partitions}
)


def variant_and_lang(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["variant"], keys["lang"]


def multi_key(variant: str, lang: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "lang": lang})
