"""Scheduled refresh: re-ingesting unchanged data changes no data version and recomputes
nothing; new data re-materialises exactly the existing downstream partitions, one stage at a
time (the declarative automation condition behind the ``governance_refresh`` sensor)."""

import json
import warnings

import dagster as dg
import pytest

from assets.ingest import DEMO_SOURCE, source_partitions
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.definitions import defs

warnings.filterwarnings("ignore", category=dg.BetaWarning)
GOVERNANCE = dg.AssetSelection.groups("governance")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return GovtuneHome(root=str(tmp_path_factory.mktemp("refresh_home")))


def _run(home, instance, selection, key=None):
    result = dg.materialize(
        assets=list(defs.assets), selection=selection, partition_key=key, instance=instance,
        resources={**defs.resources, "home": home, "governance": GovernanceSettings()},
    )  # fmt: skip
    events = result.get_asset_materialization_events()
    return {e.asset_key.to_user_string(): e.materialization.tags for e in events}


def _tick(instance, cursor):
    """One evaluation of the refresh sensor's conditions, as a sensor tick would run it."""
    return dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=GOVERNANCE, cursor=cursor
    )


def _requested(result) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in result.results:
        if r.true_subset.size:
            key = r.key.to_user_string()
            if r.true_subset.is_partitioned:
                out[key] = sorted(
                    str(k) for k in r.true_subset.expensively_compute_partition_keys()
                )
            else:
                out[key] = [""]
    return out


def test_refresh_recomputes_only_what_changed(home):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
    _run(home, instance, "demo_corpus")
    first = _run(home, instance, "raw_documents", DEMO_SOURCE)
    _run(home, instance, "normalized")
    _run(home, instance, "language_id", "full")
    tick = _tick(instance, None)
    assert _requested(tick) == {}

    # the schedule re-ingests the same files: same data version, nothing downstream to do
    again = _run(home, instance, "raw_documents", DEMO_SOURCE)
    version = "dagster/data_version"
    assert again["raw_documents"][version] == first["raw_documents"][version]
    tick = _tick(instance, tick.cursor)
    assert _requested(tick) == {}

    # new records in the source: a new data version, and only the next stage is requested
    extra = home.path("raw", "demo", "sources", "zz_refresh.jsonl")
    rows = [{"text": f"Ein ganz neuer Satz über das Wetter in Berlin, Nummer {i}.", "lang": "de"}
            for i in range(5)]  # fmt: skip
    extra.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    changed = _run(home, instance, "raw_documents", DEMO_SOURCE)
    assert changed["raw_documents"][version] != first["raw_documents"][version]
    tick = _tick(instance, tick.cursor)
    assert _requested(tick) == {"normalized": [""]}
    _run(home, instance, "normalized")
    tick = _tick(instance, tick.cursor)
    # only the arm that exists is refreshed; the never-materialised arms stay untouched
    assert _requested(tick) == {"language_id": ["full"]}
