"""Engines: the sharded dedup on the local engine and on a real local Ray (``num_cpus=2``) gives
exactly the rows and ledger of the in-process ``dedup_stage``, for any number of shards and
shuffle partitions; the Ray engine curates the demo corpus exactly as the local engine does; an
incremental run over a second source equals a full rerun over both."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from quality_models.config import ConfigError, DedupConfig, governance_config_from_dict
from quality_models.dedup import dedup_stage
from quality_models.dist_dedup import (
    build_index,
    dedup_generations,
    dedup_sharded,
    dedup_with_engine,
    load_index,
    parquet_shards,
    save_index,
)
from quality_models.engine import LocalEngine, RayEngine, make_engine

sys.path.insert(0, str(Path(__file__).parent))
from test_dedup import _chains, _planted, _table  # noqa: E402


@pytest.fixture(scope="module")
def ray_engine():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield RayEngine()
    ray.shutdown()


def _corpus(seed=1):
    """Planted near copies, edit chains and exact twins, in a shuffled row order."""
    docs, _ = _planted()
    docs += _chains(seed=3, n_chains=6)[0]
    docs += [(f"x{k}", t) for k, (_, t) in enumerate(docs[:30])]
    random.Random(seed).shuffle(docs)
    return _table(docs)


def _shards(table, n):
    step = -(-table.num_rows // n)
    return [table.slice(lo, step) for lo in range(0, table.num_rows, step)]


def _same(a, b):
    assert a.kept.equals(b.kept) and a.rejected.equals(b.rejected)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("similarity", ["signature", "shingles"])
def test_ray_dedup_equals_the_in_process_stage(ray_engine, shards, similarity):
    table = _corpus()
    cfg = DedupConfig(similarity=similarity)
    ref = dedup_stage(table, cfg, "en")
    assert ref.rejected.num_rows > 60  # exact twins, near copies and chains were removed
    for partitions in (1, 4):
        ray_engine.partitions = partitions
        res = dedup_sharded(_shards(table, shards), cfg, "en", ray_engine).to_stage_result()
        _same(res, ref)
        for key in ("near_removed", "exact_removed", "components_with_duplicates",
                    "components_split", "largest_cluster", "near_jaccard_histogram"):  # fmt: skip
            assert res.metadata[key] == ref.metadata[key], key


@pytest.mark.parametrize("keep", ["lowest_doc_id", "longest"])
def test_local_engine_shards_spill_to_disk_and_match(tmp_path, keep):
    table = _corpus(seed=4)
    cfg = DedupConfig(keep=keep)
    engine = LocalEngine(spill_dir=tmp_path / "spill", partitions=3)
    res = dedup_sharded(_shards(table, 3), cfg, "en", engine)
    assert list((tmp_path / "spill").glob("*.pkl"))  # intermediate results went to disk
    _same(res.to_stage_result(), dedup_stage(table, cfg, "en"))
    # Parquet shards read by row ranges give the same result again
    path = tmp_path / "in.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=50)
    specs = parquet_shards([path], 70)
    assert len(specs) == -(-table.num_rows // 70)
    _same(dedup_sharded(specs, cfg, "en", engine).to_stage_result(), dedup_stage(table, cfg, "en"))


def test_ray_engine_curates_the_demo_corpus_like_the_local_engine(ray_engine, governance_run):
    from quality_models.pipeline import curate

    local = governance_run["result"]
    config = governance_config_from_dict({"engine": {"name": "ray", "batch_rows": 200}})
    ray_engine.partitions = 4
    result = curate(governance_run["raw"], config, workers=1)
    assert sorted(result.curated) == sorted(local.curated)
    for lang, table in local.curated.items():
        assert result.curated[lang].equals(table), lang
    assert result.rejected.equals(local.rejected)
    dedup = {r.lang: r.metadata for r in result.reports if r.stage == "dedup"}
    assert sum(m["near_removed"] for m in dedup.values()) > 0
    assert any(m.get("candidate_edges", 0) for m in dedup.values())  # the sharded path ran


def _generations():
    """Two sources: the second holds exact and near copies of the first's documents, copies
    of its own, and new documents."""
    docs, _ = _planted(seed=5, n_base=80)
    first = docs[: len(docs) // 2]
    second = [(f"z{d}", t) for d, t in docs[len(docs) // 2 :]]
    second += [(f"y{k}", t) for k, (_, t) in enumerate(first[:10])]  # exact copies of source 1
    second += [(f"w{k}", t + " und so weiter") for k, (_, t) in enumerate(first[10:20])]
    second += [(f"v{k}", t) for k, (_, t) in enumerate(second[:5])]  # copies within source 2
    return _table(first), _table(second)


def test_incremental_dedup_of_a_second_source_equals_a_full_rerun(ray_engine, tmp_path):
    first, second = _generations()
    cfg = DedupConfig()
    full = dedup_generations([[first], [second]], cfg, "en", LocalEngine(partitions=2))
    _same(full[0], dedup_stage(first, cfg, "en"))  # the first source alone: plain dedup
    # incremental: the first source's index is saved when it is curated, then only the second
    # source is computed, on Ray, in two shards
    index_path = save_index(build_index([full[0].kept], cfg, "en"), tmp_path / "index.parquet")
    index = load_index(index_path, cfg, "en")
    ray_engine.partitions = 3
    inc = dedup_sharded(_shards(second, 2), cfg, "en", ray_engine, index=index).to_stage_result()
    _same(inc, full[1])
    old = set(full[0].kept.column("doc_id").to_pylist())
    removed = {r["doc_id"]: json.loads(r["details"]) for r in inc.rejected.to_pylist()}
    to_old = {d: det for d, det in removed.items() if det["duplicate_of"] in old}
    assert sum(d.startswith("y") for d in to_old) == 10  # exact copies name the old kept doc
    assert sum(d.startswith("w") for d in to_old) >= 7  # near copies too (LSH may miss one)
    assert any(det["duplicate_of"] not in old for det in removed.values())  # and new ones
    with pytest.raises(ValueError, match="other MinHash settings"):
        load_index(index_path, DedupConfig(num_perm=128, bands=16), "en")
    # a third source: copies of the first source's documents again; their cluster sizes count
    # the second source's copies too (the index grows with each generation's ledger)
    third = _table([(f"u{k}", t) for k, t in enumerate(first.column("text").to_pylist()[:10])])
    three = dedup_generations([[first], [second], [third]], cfg, "en", LocalEngine())
    _same(three[1], full[1])
    size = dict(zip(full[0].kept.column("doc_id").to_pylist(),
                    full[0].kept.column("dup_cluster_size").to_pylist(), strict=True))  # fmt: skip
    for det in removed.values():
        if det["duplicate_of"] in old:
            size[det["duplicate_of"]] = det["cluster_size"]
    third_removed = [json.loads(r["details"]) for r in three[2].rejected.to_pylist()]
    assert len(third_removed) == 10
    named = [det["duplicate_of"] for det in third_removed]
    for det in third_removed:
        of = det["duplicate_of"]
        assert of in old and det["cluster_size"] == size[of] + named.count(of)


def test_engine_config_is_validated_and_dispatches():
    with pytest.raises(ConfigError, match="engine.name"):
        governance_config_from_dict({"engine": {"name": "spark"}})
    with pytest.raises(ConfigError, match="batch_rows"):
        governance_config_from_dict({"engine": {"batch_rows": 0}})
    cfg = governance_config_from_dict({"engine": {"batch_rows": 40}})
    assert isinstance(make_engine(cfg.engine), LocalEngine)
    table = _corpus(seed=2)
    res = dedup_with_engine(table, cfg.dedup, "en", cfg.engine)  # sharded: 40 rows a shard
    assert "candidate_edges" in res.metadata
    _same(res, dedup_stage(table, cfg.dedup, "en"))
    assert pa.types.is_int32(res.kept.schema.field("dup_cluster_size").type)


def test_the_engine_resource_overrides_the_config():
    from assets.engine import EngineResource
    from quality_models.config import load_governance_config

    base = load_governance_config(None)
    assert EngineResource().apply(base) is base
    cfg = EngineResource(address="ray://head:10001", batch_rows=5000).apply(base)
    assert (cfg.engine.name, cfg.engine.address, cfg.engine.batch_rows) == (
        "ray",
        "ray://head:10001",
        5000,
    )
    assert base.engine.name == "local"  # the loaded config is not changed
    with pytest.raises(ConfigError, match="engine resource.name"):
        EngineResource(name="spark").apply(base)


def test_shards_publish_part_files_under_one_manifest(ray_engine, tmp_path):
    from quality_models.storage import publish, read_published

    table = _corpus(seed=6)
    cfg = DedupConfig()
    ref = dedup_stage(table, cfg, "en")
    folder = tmp_path / "stages" / "full" / "deduplicated" / "en"
    for engine, shards in ((LocalEngine(partitions=2), 3), (ray_engine, 2)):
        run = dedup_sharded(_shards(table, shards), cfg, "en", engine, out=(str(folder), "en"))
        pub = run.publish()
        assert len(pub.manifest["kept"]["en"]["parts"]) == shards  # one part per shard
        again = read_published(folder)
        assert again.kept("en").equals(ref.kept) and again.rejected().equals(ref.rejected)
        assert again.rows_on_disk() == (ref.kept.num_rows, ref.rejected.num_rows)
        assert again.manifest["input"] == table.num_rows
        assert {p.name for p in folder.iterdir()} == {p.name for p in pub.files()} | {
            "manifest.json"
        }
    # a later one-part publication supersedes the parts (they are deleted)
    single = publish(folder, {"en": ref.kept}, ref.rejected, input_rows=table.num_rows)
    assert "parts" not in single.manifest["kept"]["en"] and len(single.files()) == 2
    assert len(list(folder.glob("*.parquet"))) == 2


def test_dagster_deduplicated_on_ray_publishes_the_local_result_in_parts(ray_engine, tmp_path):
    """The same asset, partition, check and ledger; on Ray the shards' part files are published
    under one manifest and quality_scored reads them."""
    import dagster as dg

    from assets.engine import EngineResource
    from assets.ingest import DEMO_SOURCE, source_partitions
    from assets.partitions import multi_key
    from assets.resources import GovtuneHome
    from assets.stage_io import GovernanceSettings
    from pipelines.definitions import defs
    from quality_models.storage import read_published

    home = GovtuneHome(root=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(source_partitions.name, [DEMO_SOURCE])

    def run(selection, key=None, engine=None):
        return dg.materialize(
            assets=list(defs.assets),
            selection=selection,
            partition_key=str(key) if key is not None else None,
            resources={
                **defs.resources,
                "home": home,
                "governance": GovernanceSettings(),
                "engine": engine or EngineResource(),
            },  # fmt: skip
            instance=instance,
            raise_on_error=True,
        )

    run("demo_corpus")
    run("raw_documents", DEMO_SOURCE)
    run("normalized")
    run("language_id", "full")
    key = multi_key("full", "de")
    folder = home.stage_dir("full", "deduplicated", "de")
    run("deduplicated", key)
    local = read_published(folder)
    local_kept, local_rej = local.kept(), local.rejected()
    assert local_rej.num_rows > 0 and "parts" not in local.manifest["kept"]["all"]
    ray_dagster = EngineResource(name="ray", batch_rows=100, partitions=3)
    res = run(["deduplicated", "quality_scored"], key, ray_dagster)
    assert all(c.passed for c in res.get_asset_check_evaluations())
    pub = read_published(folder)
    assert len(pub.manifest["kept"]["all"]["parts"]) > 1
    assert pub.kept().equals(local_kept) and pub.rejected().equals(local_rej)
    mats = {m.asset_key.to_user_string(): m.materialization.metadata
            for m in res.get_asset_materialization_events()}  # fmt: skip
    assert mats["deduplicated"]["engine"].value == "ray"
    assert mats["deduplicated"]["kept"].value == local_kept.num_rows
    scored = read_published(home.stage_dir("full", "quality_scored", "de"))
    assert scored.manifest["input"] == local_kept.num_rows
