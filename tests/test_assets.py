"""Real in-process Dagster materialisations of the governance graph on the demo data."""

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.ingest import DEMO_SOURCE, source_partitions
from assets.partitions import multi_key
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.definitions import defs
from quality_models.storage import read_published


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return GovtuneHome(root=str(tmp_path_factory.mktemp("govtune_home")))


@pytest.fixture(scope="module")
def instance():
    inst = dg.DagsterInstance.ephemeral()
    inst.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])
    return inst


def _run(home, instance, selection, partition_key=None):
    return dg.materialize(
        assets=list(defs.assets),
        selection=selection,
        partition_key=partition_key,
        resources={**defs.resources, "home": home, "governance": GovernanceSettings()},
        instance=instance,
        raise_on_error=True,
    )


def test_definitions_load_and_graph_is_connected():
    dg.Definitions.validate_loadable(defs)  # what `dagster dev` checks when it loads the code
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"demo_corpus", "raw_documents", "normalized", "language_id", "deduplicated",
            "quality_scored", "curated", "kenlm_models"} <= keys  # fmt: skip
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("quality_scored")).parent_keys}
    assert parents == {"deduplicated", "kenlm_models"}


def test_materialise_governance_for_two_languages(home, instance):
    _run(home, instance, "demo_corpus")
    checks = _run(home, instance, "raw_documents", DEMO_SOURCE).get_asset_check_evaluations()
    checks += _run(home, instance, "normalized").get_asset_check_evaluations()
    assert len(checks) == 2 and all(c.passed for c in checks)
    _run(home, instance, "language_id", "full")
    kenlm = _run(home, instance, "kenlm_models", "de").get_asset_materialization_events()[0]
    assert kenlm.materialization.metadata["order"].value >= 3
    for lang in ("de", "ru"):
        key = str(multi_key("full", lang))
        res = _run(home, instance, ["deduplicated", "quality_scored", "curated"], key)
        evaluations = res.get_asset_check_evaluations()
        assert len(evaluations) == 3 and all(c.passed for c in evaluations)
        mats = {m.asset_key.to_user_string(): m for m in res.get_asset_materialization_events()}
        meta = mats["deduplicated"].materialization.metadata
        assert meta["effective_threshold"].value == pytest.approx(0.7187, abs=1e-3)
        curated = pq.read_table(home.curated_dir("full") / f"{lang}.parquet")
        assert curated.num_rows > 100
        assert set(curated.column("lang").to_pylist()) == {lang}
        assert (home.curated_dir("full") / f"{lang}.md").is_file()
        perplexity = curated.column("perplexity").to_pylist()
        if lang == "de":  # its model was trained above: every document scored and bucketed
            assert all(p is not None and p > 1 for p in perplexity)
            assert set(curated.column("quality_bucket").to_pylist()) == {"head", "middle", "tail"}
        else:  # no model yet: documents pass through unscored, nothing lost
            assert all(p is None for p in perplexity)


def test_inbox_sensor_ingests_only_the_new_file(home, instance, tmp_path):
    from pipelines.sensors import inbox_sensor

    inbox = home.path("inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "batch1.jsonl").write_text(
        '{"text": "Ein neuer Satz aus dem Posteingang.", "lang": "de"}\n{"text": 3}\n'
    )
    (inbox / "notes.docx").write_bytes(b"PK\x03\x04 not a corpus")
    context = dg.build_sensor_context(instance=instance, resources={"home": home})
    result = inbox_sensor(context)
    assert [r.partition_key for r in result.run_requests] == ["batch1.jsonl"]
    assert (inbox / "quarantine" / "notes.docx.reason.txt").read_text().startswith("unsupported")
    assert not (inbox / "notes.docx").exists()
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    res = _run(home, instance, "raw_documents", "batch1.jsonl")
    assert all(c.passed for c in res.get_asset_check_evaluations())
    published = read_published(home.stage_dir("all", "raw_documents", "batch1.jsonl"))
    ingested, ledger = published.kept(), published.rejected()
    assert ingested.num_rows == 1 and ledger.num_rows == 1  # only that file, nothing lost
    # the source is named relative to its input root: the same ids wherever the root lives
    assert ingested["source"].to_pylist() == ["inbox:batch1.jsonl"]
    # the next tick sees nothing new: no run, nothing retried
    again = inbox_sensor(dg.build_sensor_context(instance=instance, resources={"home": home},
                                                 cursor=result.cursor))  # fmt: skip
    assert again.run_requests == []
