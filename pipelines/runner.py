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


def run_tags(
    partition_key: str | dg.MultiPartitionKey | None, run_config: dict | None = None
) -> dict[str, str]:
    """Tags that say what a run did, for the Runs page filters: the governance variant, the
    language, the method, seed and task of an experiment run, and the experiment's name."""
    from assets.partitions import parse_run_key

    tags: dict[str, str] = {}
    if isinstance(partition_key, dg.MultiPartitionKey):
        dims = partition_key.keys_by_dimension
        if "variant" in dims:
            tags["govtune/variant"] = dims["variant"]
        if "lang" in dims:
            tags["govtune/lang"] = dims["lang"]
        if "run" in dims:
            task, method, seed = parse_run_key(dims["run"])
            tags.update({"govtune/method": method, "govtune/seed": str(seed), "govtune/task": task})
    ops = (run_config or {}).get("ops", {})
    for op in ops.values():
        experiment = op.get("config", {}).get("experiment")
        if experiment:
            tags["govtune/experiment"] = experiment
            break
    return tags


def materialize_partitions(
    defs: dg.Definitions,
    inst: dg.DagsterInstance,
    selection: str | Sequence[str],
    partition_keys: Sequence[str | dg.MultiPartitionKey | None],
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    resources: dict | None = None,
) -> None:
    """One in-process run of the named job that materialises ``selection``, per partition key
    (``pipelines.jobs``: never the anonymous asset job); stops at the first failure.
    ``resources`` overrides the code location's (a test's data root)."""
    from pipelines.jobs import job_for, job_selection

    name = job_for(selection)
    if resources:  # the same assets and jobs, bound to other resources (a test's data root)
        defs = dg.Definitions(
            assets=list(defs.assets or []),
            jobs=list(defs.jobs or []),
            resources={**(defs.resources or {}), **resources},
        )
    job = defs.resolve_job_def(name)
    wanted = [selection] if isinstance(selection, str) else list(selection)
    subset = None if set(wanted) == set(job_selection(name)) else wanted
    for key in partition_keys:
        t = time.time()
        variant = _variant_of(key)
        all_tags = {**run_tags(key, run_config), **(tags or {})}
        if variant and "govtune/variant" not in all_tags:
            all_tags["govtune/variant"] = variant
        result = job.execute_in_process(
            instance=inst,
            partition_key=str(key) if key is not None else None,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=[dg.AssetKey(a) for a in subset] if subset else None,
            tags=all_tags,
            raise_on_error=False,
        )
        label = f"{name}: {','.join(wanted)} [{key}]"
        if not result.success:
            raise RuntimeError(f"run failed: {label} (run {result.run_id})")
        print(f"  ok  {label}  ({time.time() - t:.1f}s)", flush=True)


def _variant_of(key: str | dg.MultiPartitionKey | None) -> str | None:
    """A plain partition key that is a governance variant (language_id, ledger, ...)."""
    from quality_models.pipeline import VARIANTS

    return key if isinstance(key, str) and key in VARIANTS else None


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
