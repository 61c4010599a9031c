"""``make demo``: materialise the whole asset graph on the bundled demo data into the local
Dagster instance (SQLite under the data root), so the UI shows every run, metadata and check."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import dagster as dg


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise RuntimeError("DAGSTER_HOME is not set: run through `make demo`, which sets it")
    return dg.DagsterInstance.get()


# a short hybrid run per variant: enough to show the training path and its lineage in the UI
DEMO_TRAINING = {"ops": {"finetune": {"config": {"steps": 8, "batch_size": 4,
                                                 "eval_max_examples": 32}}}}  # fmt: skip
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize_partitions(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: str | Sequence[str],
    partition_keys: Sequence[str | dg.MultiPartitionKey | None],
    run_config: dict | None = None,
) -> None:
    """One in-process run per partition key; stops at the first failure with its message."""
    for key in partition_keys:
        t = time.time()
        result = dg.materialize(
            assets=list(defs.assets),
            selection=selection,
            partition_key=str(key) if key is not None else None,
            instance=instance,
            resources=defs.resources,
            run_config={**QUIET, **(run_config or {})},
        )
        label = f"{selection if isinstance(selection, str) else ','.join(selection)} [{key}]"
        if not result.success:
            raise RuntimeError(f"materialisation failed: {label}")
        print(f"  ok  {label}  ({time.time() - t:.1f}s)", flush=True)


def run_demo(
    variants: Sequence[str] = ("full",),
    languages: Sequence[str] | None = None,
    with_tasks: bool = True,
    with_training: bool = True,
) -> int:
    from assets.partitions import LANGUAGES, multi_key
    from pipelines.definitions import defs

    instance = _instance()
    langs = list(languages or LANGUAGES)
    print(f"govtune demo: Dagster instance at {os.environ['DAGSTER_HOME']}", flush=True)
    from assets.ingest import DEMO_SOURCE, source_partitions

    instance.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
    materialize_partitions(defs, instance, "demo_corpus", [None])
    materialize_partitions(defs, instance, "raw_documents", [DEMO_SOURCE])
    materialize_partitions(defs, instance, "normalized", [None])
    for variant in variants:
        materialize_partitions(defs, instance, "language_id", [variant])
    materialize_partitions(defs, instance, "kenlm_models", langs)
    keys = [multi_key(v, lang) for v in variants for lang in langs]
    materialize_partitions(defs, instance, ["deduplicated", "quality_scored", "curated"], keys)
    if with_tasks:
        from assets.tasks import DEFAULT_LANGUAGES, TASK_LANGUAGES

        materialize_partitions(defs, instance, ["parallel_corpus", "task_splits"], [None])
        materialize_partitions(defs, instance, "classification_task", TASK_LANGUAGES)
        materialize_partitions(defs, instance, "translation_task", list(DEFAULT_LANGUAGES))
        materialize_partitions(defs, instance, "classification_train", list(variants))
    if with_training:
        materialize_partitions(defs, instance, "base_model", [None])
        materialize_partitions(defs, instance, "finetune", list(variants), run_config=DEMO_TRAINING)
    print("govtune demo: done. `make ui` opens the Dagster UI on these runs.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
