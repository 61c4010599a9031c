"""The Dagster code location: every asset, resource, job, schedule and sensor of govtune."""

from __future__ import annotations

import dagster as dg

from assets import (
    curated,
    dedup,
    evaluation,
    ingest,
    kenlm,
    language_id,
    ledger,
    normalize,
    quality,
    reports,
    tasks,
    training,
)
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.schedules import refresh_job, refresh_schedule
from pipelines.sensors import governance_refresh_sensor, inbox_sensor

governance_assets = dg.load_assets_from_modules(
    [ingest, normalize, language_id, dedup, kenlm, quality, curated, ledger]
)
task_assets = dg.load_assets_from_modules([tasks])
training_assets = dg.load_assets_from_modules([training])
evaluation_assets = dg.load_assets_from_modules([evaluation, reports])

# One job per partitioning, so each can be launched (or backfilled) from the UI.
per_language_job = dg.define_asset_job(
    "per_language_governance",
    selection=dg.AssetSelection.assets("deduplicated", "quality_scored", "curated"),
    description="dedup -> quality -> curated for one (variant, language) partition",
)

# Training and scoring launched through this job carry the run tag that dagster.yaml's run queue
# limits to one run at a time (op tags do not become run tags).
training_job = dg.define_asset_job(
    "train_and_score",
    selection=dg.AssetSelection.assets("finetune", "model_evaluation"),
    tags={"govtune/stage": "training"},
    description="finetune -> model_evaluation for one (variant, run) partition; one at a time",
)

defs = dg.Definitions(
    assets=[*governance_assets, *task_assets, *training_assets, *evaluation_assets],
    jobs=[per_language_job, training_job, refresh_job],
    schedules=[refresh_schedule],
    sensors=[inbox_sensor, governance_refresh_sensor],
    resources={
        "home": GovtuneHome(),
        "governance": GovernanceSettings(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
