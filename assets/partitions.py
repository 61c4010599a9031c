"""Partitions: languages (found by the language-ID stage), governance variants (the ablation
arms) and experiment runs.

Languages come from one source of truth: the governance config decides the scope (by default
every language the LID model can emit) and the ``language_id`` stage registers a ``languages``
partition for every language it keeps a document in. No second list exists, so a document can
never sit in a language that has no partition. Per-language stages are partitioned by
``variant x lang`` so every ablation arm of every language is its own materialisation.
"""

import dagster as dg

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


# Experiment runs: the fine-tuning method x training seed, on classification or (``mt-``)
# translation. With the governance variant they form the second partitioned grid, so every
# (arm, method, seed) model is its own materialisation.
METHODS = ("lora", "lora_ga", "boft", "oft", "hybrid", "hybrid_unitary", "full", "untuned")
SEEDS = (0, 1, 2)
RUN_KEYS = [f"{p}{m}-s{s}" for p in ("", "mt-") for m in METHODS for s in SEEDS]
run_partitions = dg.StaticPartitionsDefinition(RUN_KEYS)
variant_run_partitions = dg.MultiPartitionsDefinition(
    {"variant": variant_partitions, "run": run_partitions}
)


def run_key(method: str, seed: int, task: str = "classification") -> str:
    return f"{'mt-' if task == 'translation' else ''}{method}-s{seed}"


def parse_run_key(key: str) -> tuple[str, str, int]:
    """``"mt-lora_ga-s2"`` → ``("translation", "lora_ga", 2)``."""
    task = "translation" if key.startswith("mt-") else "classification"
    method, _, seed = key.removeprefix("mt-").rpartition("-s")
    if method not in METHODS or not seed.isdigit():
        raise ValueError(f"not a run key: {key!r} (expected <method>-s<seed>, mt- for translation)")
    return task, method, int(seed)


def variant_run_key(variant: str, run: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"variant": variant, "run": run})
