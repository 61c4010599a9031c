"""Partitions: languages (found by the language-ID stage), governance variants (the ablation
arms) and experiment runs.

Languages come from one source of truth: the governance config decides the scope (by default
every language the LID model can emit) and the `language_id` stage registers a `languages`
partition for every language it keeps a document in. No second list exists, so a document can
never sit in a language that has no partition. Per-language stages are partitioned by
`variant x lang` so every ablation arm of every language is its own materialisation.
"""

import dagster as dg

from evaluation.frames import METHOD_ORDER, TRANSLATE_TRAIN, ZERO_SHOT, parse_run
from quality_models.pipeline import VARIANTS

language_partitions = dg.DynamicPartitionsDefinition(name="languages")
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
variant_language_partitions = dg.MultiPartitionsDefinition(
    {"variant": variant_partitions, "lang": language_partitions}
)
# every language partition of one variant (curated[variant|*] -> ledger/classification_train)
PER_VARIANT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant")


def variant_and_lang(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["variant"], keys["lang"]


def multi_key(variant: str, lang: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "lang": lang})


# Experiment runs: the fine-tuning method x training seed, on classification (zero-shot: trained
# on English only; `tt-`: translate-train, trained on every task language) or (`mt-`)
# translation. With the governance variant they form the second partitioned grid, so every
# (arm, method, seed) model is its own materialisation. The run keys are dynamic: an experiment
# plan adds the runs it will train (`pipelines.experiment`), so the UI lists what exists.
# `lexical` (the character-n-gram baseline) and `untuned` (the base model) train nothing.
METHODS = METHOD_ORDER
UNTRAINED = ("lexical", "untuned")
run_partitions = dg.DynamicPartitionsDefinition(name="runs")
variant_run_partitions = dg.MultiPartitionsDefinition(
    {"variant": variant_partitions, "run": run_partitions}
)


def run_key(method: str, seed: int, task: str = "classification", protocol: str = ZERO_SHOT) -> str:
    if task == "translation":
        return f"mt-{method}-s{seed}"
    return f"{'tt-' if protocol == TRANSLATE_TRAIN else ''}{method}-s{seed}"


def parse_run_key(key: str) -> tuple[str, str, int]:
    """`"mt-lora_ga-s2"` → `("translation", "lora_ga", 2)` (the protocol of a classification
    run: :func:`run_protocol`)."""
    task, _, method, seed = _parse(key)
    return task, method, seed


def run_protocol(key: str) -> str:
    """`zero_shot` (trained on English), `translate_train` (`tt-`) or `""` (translation)."""
    return _parse(key)[1]


def _parse(key: str) -> tuple[str, str, str, int]:
    try:
        task, protocol, method, seed = parse_run(key)
    except ValueError:
        raise ValueError(f"not a run key: {key!r} (expected [mt-|tt-]<method>-s<seed>)") from None
    if method not in METHODS or (task == "translation" and method in UNTRAINED):
        raise ValueError(f"not a run key: {key!r} (unknown method {method!r}; one of {METHODS})")
    return task, protocol, method, seed


def variant_run_key(variant: str, run: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "run": run})
