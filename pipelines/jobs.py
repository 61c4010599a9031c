"""The named jobs every headless command launches (and the UI can launch): one per stage and
partitioning, so each run in the Runs page says what it did, and carries tags to filter by.

A Dagster asset job runs one partition of assets that share a partitioning; the stages of
govtune have seven partitionings (none, source, variant, language, variant × language, task
language, variant × run), so there is one job per stage group. ``govtune demo``, ``govtune run``
and ``govtune experiment`` launch these, never the anonymous ``__ephemeral_asset_job__``.
"""

from __future__ import annotations

import dagster as dg

from assets.reports import REPORT_TABLES
from assets.training import TRAINING_TAG

STAGE_TAG = "govtune/stage"


_ASSETS: dict[str, set[str]] = {}  # job name -> the assets it materialises


def _job(
    name: str, assets: list[str], stage: str, description: str
) -> dg.UnresolvedAssetJobDefinition:
    _ASSETS[name] = set(assets)
    return dg.define_asset_job(
        name,
        selection=dg.AssetSelection.assets(*assets),
        tags={STAGE_TAG: stage},
        description=description,
    )


prepare_sources_job = _job(
    "prepare_sources",
    ["demo_corpus", "parallel_corpus", "task_splits", "task_pool"],
    "sources",
    "the bundled demo corpus and the gettext task (parallel corpus, splits, the training pool "
    "that governance ingests as the task_pool source)",
)
source_refresh_job = _job(
    "source_refresh", ["raw_documents"], "ingest", "ingest one source partition"
)
normalize_job = _job("normalize", ["normalized"], "normalize", "normalise every ingested source")
language_id_job = _job(
    "language_identification",
    ["language_id"],
    "language_id",
    "fastText language ID for one governance variant; registers the language partitions",
)
kenlm_job = _job(
    "train_quality_models", ["kenlm_models"], "kenlm", "the KenLM model of one language"
)
per_language_job = _job(
    "per_language_governance",
    ["deduplicated", "quality_scored", "curated"],
    "per_language",
    "dedup -> quality -> curated for one (variant, language) partition",
)
ledger_job = _job(
    "governance_ledger",
    ["ledger"],
    "ledger",
    "one variant's ledger and its global conservation check (raw = curated + ledger)",
)
training_set_job = _job(
    "training_set",
    ["classification_train"],
    "training_set",
    "one variant's governed training set: its curated task-pool rows, decontaminated, balanced",
)
task_items_job = _job(
    "task_items", ["classification_task"], "task_items", "one language's evaluation items"
)
translation_items_job = _job(
    "translation_items", ["translation_task"], "task_items", "one language's translation pairs"
)
base_model_job = _job(
    "prepare_base_model", ["base_model"], "base_model", "convert the shipped GGUF base model once"
)
# Training and scoring carry the run tag that dagster.yaml's run queue limits to one run at a
# time; the two assets are also in the `training` concurrency pool (one step at a time across
# every run, also runs launched outside this job).
training_job = _job(
    "train_and_score",
    ["finetune", "model_evaluation"],
    TRAINING_TAG,
    "finetune -> model_evaluation for one (variant, run) partition; one at a time",
)
reports_job = _job(
    "build_reports",
    list(REPORT_TABLES),
    "reports",
    "the report tables and figures of an experiment",
)

JOBS = [
    prepare_sources_job,
    source_refresh_job,
    normalize_job,
    language_id_job,
    kenlm_job,
    per_language_job,
    ledger_job,
    training_set_job,
    task_items_job,
    translation_items_job,
    base_model_job,
    training_job,
    reports_job,
]


def job_for(selection: str | list[str]) -> str:
    """The name of the job that materialises ``selection`` (assets of one job)."""
    names = {selection} if isinstance(selection, str) else set(selection)
    for name, assets in _ASSETS.items():
        if names <= assets:
            return name
    raise KeyError(f"no job materialises {sorted(names)}")


def job_selection(name: str) -> list[str]:
    return sorted(_ASSETS[name])
