"""Schedules: a data refresh that re-ingests every known source (off by default).

The cron comes from ``GOVTUNE_REFRESH_CRON`` (default 03:00 daily). After a refresh, the UI
marks downstream stages stale where their inputs changed (data versions) or their logic changed
(code versions).
"""

import os

import dagster as dg

from assets.ingest import source_partitions
from pipelines.jobs import source_refresh_job


@dg.schedule(
    job=source_refresh_job,
    cron_schedule=os.environ.get("GOVTUNE_REFRESH_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def refresh_schedule(context: dg.ScheduleEvaluationContext):
    keys = context.instance.get_dynamic_partitions(source_partitions.name)
    stamp = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
    return [dg.RunRequest(run_key=f"{key}@{stamp}", partition_key=key) for key in keys]
