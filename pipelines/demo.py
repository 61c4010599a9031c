"""``make demo``: materialise the whole asset graph on the bundled demo data into the local
Dagster instance (SQLite under the data root), so the UI shows every run, metadata and check:
governance, task data, then the small experiment of ``configs/demo.yaml`` (two methods, one
seed, every governance arm through training) and the six report assets."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_PLAN = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run_demo(
    variants: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
    plan: str | Path | None = DEMO_PLAN,
) -> int:
    """Governance for ``variants`` (default: every arm the plan trains on), then the plan."""
    from pipelines.definitions import defs
    from pipelines.experiment import ExperimentPlan, run_experiment
    from pipelines.runner import instance, run_governance

    inst = instance()
    print(f"govtune demo: Dagster instance at {os.environ['DAGSTER_HOME']}", flush=True)
    loaded = ExperimentPlan.load(plan) if plan is not None else None
    arms = list(variants or (loaded.variants() if loaded else ["full"]))
    run_governance(defs, inst, arms, languages)
    if loaded is not None:
        run_experiment(loaded, inst)
    print("govtune demo: done. `make ui` opens the Dagster UI on these runs.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
