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
    [ingest, normalize, language_id, dedup, kenlm, quality, curated]
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

defs = dg.Definitions(
    assets=[*governance_assets, *task_assets, *training_assets, *evaluation_assets],
    jobs=[per_language_job, refresh_job],
    schedules=[refresh_schedule],
    sensors=[inbox_sensor, governance_refresh_sensor],
    resources={
        "home": GovtuneHome(),
        "governance": GovernanceSettings(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    },
)
