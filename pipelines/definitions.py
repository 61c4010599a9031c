"""The Dagster code location: every asset, resource, job, schedule and sensor of govtune."""

from __future__ import annotations

import dagster as dg

from assets import curated, dedup, ingest, kenlm, language_id, normalize, quality, tasks
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings

governance_assets = dg.load_assets_from_modules(
    [ingest, normalize, language_id, dedup, kenlm, quality, curated]
)
task_assets = dg.load_assets_from_modules([tasks])

curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.groups("governance", "quality_models"),
    description="raw -> normalised -> language ID -> dedup -> quality -> curated",
)

defs = dg.Definitions(
    assets=[*governance_assets, *task_assets],
    jobs=[curation_job],
    resources={"home": GovtuneHome(), "governance": GovernanceSettings()},
)
