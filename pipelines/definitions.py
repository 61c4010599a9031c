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
from assets.engine import EngineResource
from assets.pipes import subprocess_client
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.jobs import JOBS
from pipelines.schedules import refresh_schedule
from pipelines.sensors import governance_refresh_sensor, inbox_sensor

governance_assets = dg.load_assets_from_modules(
    [ingest, normalize, language_id, dedup, kenlm, quality, curated, ledger]
)
task_assets = dg.load_assets_from_modules([tasks])
training_assets = dg.load_assets_from_modules([training])
evaluation_assets = dg.load_assets_from_modules([evaluation, reports])

defs = dg.Definitions(
    assets=[*governance_assets, *task_assets, *training_assets, *evaluation_assets],
    jobs=JOBS,
    schedules=[refresh_schedule],
    sensors=[inbox_sensor, governance_refresh_sensor],
    resources={
        "home": GovtuneHome(),
        "governance": GovernanceSettings(),
        "engine": EngineResource(),
        "pipes_subprocess_client": subprocess_client(),  # whole-line message reader
    },
)
