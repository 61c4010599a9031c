"""Sensors: new files in the inbox folder under the data root trigger their own ingest run."""

import json
import shutil

import dagster as dg

from assets.ingest import raw_documents, source_partitions
from assets.resources import GovtuneHome
from quality_models.contract import write_text_atomic
from quality_models.sources import probe_source


@dg.sensor(
    name="inbox_sensor",
    asset_selection=dg.AssetSelection.assets(raw_documents),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="A file dropped into <data root>/inbox/ becomes its own `sources` partition and "
    "is ingested alone. Files that cannot be read at all move to inbox/quarantine/ with a "
    "reason file and are never retried.",
)
def inbox_sensor(context: dg.SensorEvaluationContext, home: GovtuneHome) -> dg.SensorResult:
    inbox = home.path("inbox")
    seen: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
    new_keys, requests, quarantined = [], [], []
    for path in sorted(p for p in inbox.glob("*") if p.is_file()) if inbox.is_dir() else []:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if seen.get(path.name) == stamp:
            continue
        seen[path.name] = stamp
        reason = probe_source(path)
        if reason is not None:
            target = inbox / "quarantine" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
            write_text_atomic(reason + "\n", target.with_name(path.name + ".reason.txt"))
            quarantined.append(path.name)
            context.log.warning(f"quarantined {path.name}: {reason}")
            continue
        if not context.instance.has_dynamic_partition(source_partitions.name, path.name):
            new_keys.append(path.name)
        requests.append(dg.RunRequest(run_key=f"{path.name}:{stamp[1]}", partition_key=path.name))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[source_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        cursor=json.dumps(seen, sort_keys=True),
    )


# Re-materialises, after a refresh, each existing governance partition whose inputs changed
# (assets.stage_io.REFRESH_CONDITION); stopped by default, like the refresh schedule.
governance_refresh_sensor = dg.AutomationConditionSensorDefinition(
    "governance_refresh",
    target=dg.AssetSelection.groups("governance"),
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
)
