"""Headless materialisation, shared by ``govtune demo``, ``govtune run`` and ``govtune
experiment``: the same assets, partitions and Dagster instance the UI shows."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import dagster as dg

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
STAGES = ("curated", "finetune", "reports")


def instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise RuntimeError("DAGSTER_HOME is not set: run through make (demo, ui, reproduce)")
    return dg.DagsterInstance.get()


def materialize_partitions(
    defs: dg.Definitions,
    inst: dg.DagsterInstance,
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
            instance=inst,
            resources=defs.resources,
            run_config={**QUIET, **(run_config or {})},
            raise_on_error=False,
        )
        label = f"{selection if isinstance(selection, str) else ','.join(selection)} [{key}]"
        if not result.success:
            raise RuntimeError(f"materialisation failed: {label} (run {result.run_id})")
        print(f"  ok  {label}  ({time.time() - t:.1f}s)", flush=True)


def languages_kept(home, variant: str) -> list[str]:
    """The languages ``language_id[variant]`` kept documents in (its published split)."""
    from quality_models.storage import read_published

    return read_published(home.stage_dir(variant, "language_id", "all")).kept_names


def run_task_data(defs: dg.Definitions, inst: dg.DagsterInstance, force: bool = False) -> None:
    """The gettext task: parallel corpus, splits and the training pool that governance ingests
    as the ``task_pool`` source (skipped when already on disk, unless ``force``)."""
    from assets.resources import GovtuneHome

    home = GovtuneHome()
    done = (
        home.path("tasks", "translation.parquet").is_file()
        and home.path("raw", "task_pool", "pool.parquet").is_file()
    )
    if force or not done:
        materialize_partitions(defs, inst, ["parallel_corpus", "task_splits", "task_pool"], [None])


def run_governance(
    defs: dg.Definitions,
    inst: dg.DagsterInstance,
    variants: Sequence[str],
    languages: Sequence[str] | None = None,
) -> None:
    """raw → curated → ledger for every variant: every source (the demo corpus, the task pool,
    every inbox file), then every language the language-ID stage found (or only
    ``languages``), then each variant's ledger and its conservation check."""
    from assets.ingest import DEMO_SOURCE, source_partitions
    from assets.partitions import multi_key
    from assets.resources import GovtuneHome

    home = GovtuneHome()
    inst.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
    materialize_partitions(defs, inst, "demo_corpus", [None])
    run_task_data(defs, inst)
    materialize_partitions(
        defs, inst, "raw_documents", inst.get_dynamic_partitions(source_partitions.name)
    )
    materialize_partitions(defs, inst, "normalized", [None])
    found: dict[str, list[str]] = {}
    for variant in variants:
        materialize_partitions(defs, inst, "language_id", [variant])
        found[variant] = [
            lang for lang in languages_kept(home, variant) if languages is None or lang in languages
        ]
    every = sorted({lang for langs in found.values() for lang in langs})
    materialize_partitions(defs, inst, "kenlm_models", every)
    keys = [multi_key(v, lang) for v in variants for lang in found[v]]
    materialize_partitions(defs, inst, ["deduplicated", "quality_scored", "curated"], keys)
    if languages is None:  # a subset of languages cannot balance the books: no ledger then
        materialize_partitions(defs, inst, "ledger", list(variants))


def status_rows(defs: dg.Definitions, inst: dg.DagsterInstance) -> list[dict]:
    """Per asset: materialised partitions out of all, the last materialisation and its run's
    status, and the last evaluation of each of its checks (what the UI's asset list shows)."""
    graph = defs.resolve_asset_graph()
    rows = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        event = inst.get_latest_materialization_event(key)
        if node.partitions_def is not None:
            total = len(node.partitions_def.get_partition_keys(dynamic_partitions_store=inst))
            done = len(inst.get_materialized_partitions(key))
        else:
            total, done = 1, int(event is not None)
        checks = []
        for check_key in node.check_keys:
            record = inst.event_log_storage.get_latest_asset_check_execution_by_key(
                [check_key]
            ).get(check_key)
            state = record.status.value if record is not None else "never run"
            checks.append(f"{check_key.name}: {state}")
        rows.append(
            {
                "asset": key.to_user_string(),
                "group": node.group_name or "",
                "materialised": f"{done}/{total}",
                "last": time.strftime("%Y-%m-%d %H:%M", time.localtime(event.timestamp))
                if event
                else "never",
                "checks": "; ".join(checks),
            }
        )
    return rows
