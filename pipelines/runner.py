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


def run_governance(
    defs: dg.Definitions,
    inst: dg.DagsterInstance,
    variants: Sequence[str],
    languages: Sequence[str],
) -> None:
    """raw → curated for every (variant, language): the demo source, every inbox source."""
    from assets.ingest import DEMO_SOURCE, source_partitions
    from assets.partitions import multi_key

    inst.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
    materialize_partitions(defs, inst, "demo_corpus", [None])
    materialize_partitions(
        defs, inst, "raw_documents", inst.get_dynamic_partitions(source_partitions.name)
    )
    materialize_partitions(defs, inst, "normalized", [None])
    for variant in variants:
        materialize_partitions(defs, inst, "language_id", [variant])
    materialize_partitions(defs, inst, "kenlm_models", list(languages))
    keys = [multi_key(v, lang) for v in variants for lang in languages]
    materialize_partitions(defs, inst, ["deduplicated", "quality_scored", "curated"], keys)


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
