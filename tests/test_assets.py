"""Real in-process Dagster materialisations of the governance graph on the demo data."""

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.partitions import multi_key
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.definitions import defs


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return GovtuneHome(root=str(tmp_path_factory.mktemp("govtune_home")))


def _run(home, selection, partition_key=None):
    return dg.materialize(
        assets=list(defs.assets),
        selection=selection,
        partition_key=partition_key,
        resources={"home": home, "governance": GovernanceSettings()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=True,
    )


def test_definitions_load_and_graph_is_connected():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"demo_corpus", "raw_documents", "normalized", "language_id", "deduplicated",
            "quality_scored", "curated", "kenlm_models"} <= keys  # fmt: skip
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("quality_scored")).parent_keys}
    assert parents == {"deduplicated", "kenlm_models"}


def test_materialise_governance_for_two_languages(home):
    res = _run(home, ["demo_corpus", "raw_documents", "normalized"])
    checks = res.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    _run(home, "language_id", "full")
    kenlm = _run(home, "kenlm_models", "de").get_asset_materialization_events()[0]
    assert kenlm.materialization.metadata["order"].value >= 3
    for lang in ("de", "ru"):
        key = str(multi_key("full", lang))
        res = _run(home, ["deduplicated", "quality_scored", "curated"], key)
        evaluations = res.get_asset_check_evaluations()
        assert len(evaluations) == 2 and all(c.passed for c in evaluations)
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
