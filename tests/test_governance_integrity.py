"""Governance integrity through real Dagster materialisations: one governed path feeds training,
every document is accounted for, and a failed blocking check stops what is downstream.

The task data is a small real one (two languages, three programs of the system's gettext
catalogues) written where ``task_splits`` writes it; everything after that runs through the
asset graph: ``task_pool`` → ``raw_documents[task_pool]`` → … → ``curated`` → ``ledger`` →
``classification_train``.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from assets.ingest import TASK_POOL_SOURCE, source_partitions
from assets.partitions import language_partitions, multi_key
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.definitions import defs
from quality_models.storage import read_published
from training.gettext_corpus import DEFAULT_LOCALE_DIR, build_parallel_corpus
from training.tasks import TaskConfig, build_tasks, write_tasks

warnings.filterwarnings("ignore", category=dg.BetaWarning)
LANGS = ("de", "ru")
DOMAINS = ("wget", "apt", "gtk")
VARIANTS = ("full", "no_dedup", "rehydrate")
PER_LANGUAGE = ["deduplicated", "quality_scored", "curated"]

pytestmark = pytest.mark.skipif(
    not all((DEFAULT_LOCALE_DIR / f"{x}/LC_MESSAGES/wget.mo").exists() for x in LANGS),
    reason="the system's gettext catalogues are not installed",
)


def _run(home, instance, selection, key=None, governance=None, raise_on_error=True):
    governance = governance or GovernanceSettings()
    return dg.materialize(
        assets=list(defs.assets),
        selection=selection,
        partition_key=str(key) if key is not None else None,
        resources={**defs.resources, "home": home, "governance": governance},
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _languages(home, variant):
    return read_published(home.stage_dir(variant, "language_id", "all")).kept_names


def _govern(home, instance, variant, governance=None, skip=()):
    _run(home, instance, "language_id", variant, governance)
    for lang in _languages(home, variant):
        if lang not in skip:
            _run(home, instance, PER_LANGUAGE, multi_key(variant, lang), governance)


@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    """A small real task, its pool governed through the graph for three arms, and their
    governed training sets."""
    home = GovtuneHome(root=str(tmp_path_factory.mktemp("integrity_home")))
    corpus = build_parallel_corpus(languages=list(LANGS), domains=list(DOMAINS), progress=False)
    config = TaskConfig(domains=DOMAINS, languages=LANGS, test_per_cell=20, dev_per_cell=8,
                        train_per_cell=40, raw_train_per_cell=120)  # fmt: skip
    write_tasks(build_tasks(corpus, config), home.path("tasks"))
    instance = dg.DagsterInstance.ephemeral()
    _run(home, instance, "task_pool")
    _run(home, instance, "raw_documents", TASK_POOL_SOURCE)
    _run(home, instance, "normalized")
    results = {}
    for variant in VARIANTS:
        _govern(home, instance, variant)
        res = _run(home, instance, ["ledger", "classification_train"], variant)
        results[variant] = res
    return {"home": home, "instance": instance, "results": results}


def _meta(result, asset):
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return event.materialization.metadata
    raise AssertionError(f"{asset} was not materialised")


def test_lineage_runs_from_curated_to_the_reports():
    graph = defs.resolve_asset_graph()

    def parents(key):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    assert {"curated", "ledger", "task_splits"} <= parents("classification_train")
    assert "classification_train" in parents("finetune")
    assert "finetune" in parents("model_evaluation")
    assert "model_evaluation" in parents("table_governance_ablation")
    assert "task_pool" in parents("raw_documents")
    assert "task_splits" in parents("task_pool")
    # no second, in-process governance route: the training set reads curated files only
    assert not {"language_id", "normalized", "deduplicated"} & parents("classification_train")


def test_the_training_file_holds_exactly_curated_rows(governed):
    home = governed["home"]
    for variant, result in governed["results"].items():
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks), variant  # the books balance
        named = {c.check_name: c for c in checks if c.asset_key.to_user_string() != "ledger"}
        assert {"no_evaluation_text_in_train", "every_cell_filled"} <= set(named), variant
        assert all(c.metadata["partition"].value == variant for c in named.values())
        curated = {}
        for lang in ("en", *LANGS):
            table = pq.read_table(home.curated_dir(variant) / f"{lang}.parquet")
            table = table.filter(pc.starts_with(table.column("source"), f"{TASK_POOL_SOURCE}:"))
            curated.update(zip(table.column("doc_id").to_pylist(),
                               table.column("text").to_pylist(), strict=True))  # fmt: skip
        train = pq.read_table(home.path("tasks", "train", variant, "train.parquet"))
        rows = dict(zip(train.column("id").to_pylist(), train.column("text").to_pylist(),
                        strict=True))  # fmt: skip
        assert rows and all(curated[i] == t for i, t in rows.items()), variant
        meta = _meta(result, "classification_train")
        removed = meta["contamination_removed"].value + meta["balanced_out"].value
        assert meta["curated_task_rows"].value == len(curated)
        assert len(curated) - removed == len(rows)
        assert (
            meta["data_version"].value
            == "sha256:"
            + hashlib.sha256(
                home.path("tasks", "train", variant, "trainer_data.parquet").read_bytes()
            ).hexdigest()
        )
        # the pass-through columns carried the labels: every (language, label) cell is filled
        cells = set(zip(train.column("lang").to_pylist(), train.column("label").to_pylist(),
                        strict=True))  # fmt: skip
        assert cells == {(lang, d) for lang in ("en", *LANGS) for d in DOMAINS}


def test_rehydrate_up_weights_representatives_and_differs_from_no_dedup(governed):
    home = governed["home"]

    def train(variant):
        return pq.read_table(home.path("tasks", "train", variant, "train.parquet"))

    full, rehydrate, no_dedup = train("full"), train("rehydrate"), train("no_dedup")
    # rehydrate governs like full: the same representatives, now weighted by cluster size
    assert rehydrate.column("id").to_pylist() == full.column("id").to_pylist()
    assert set(full.column("weight").to_pylist()) == {1.0}
    weights = rehydrate.column("weight").to_pylist()
    assert max(weights) > 1.0 and min(weights) == 1.0
    assert set(weights) <= {1.0, 2.0, 3.0, 5.0, 8.0}  # FineWeb-2's schedule
    assert set(no_dedup.column("weight").to_pylist()) == {1.0}
    digest = {v: hashlib.sha256(home.path("tasks", "train", v, "trainer_data.parquet")
                                .read_bytes()).hexdigest() for v in VARIANTS}  # fmt: skip
    assert len(set(digest.values())) == 3
    # the weight is the size of the cluster the curated row represents
    curated = pq.read_table(home.curated_dir("rehydrate") / "de.parquet").to_pylist()
    size = {r["doc_id"]: r["dup_cluster_size"] for r in curated}
    from training.data import rehydration_weight

    for r in rehydrate.to_pylist():
        if r["lang"] == "de":
            assert r["weight"] == rehydration_weight(size[r["id"]])


def test_a_failed_blocking_check_stops_downstream_materialisation(governed):
    home, instance = governed["home"], governed["instance"]
    # no_quality: one language left uncurated, so its documents are nowhere yet
    _govern(home, instance, "no_quality", skip=("ru",))
    res = _run(home, instance, ["ledger", "classification_train"], "no_quality",
               raise_on_error=False)  # fmt: skip
    (check,) = res.get_asset_check_evaluations()
    assert check.check_name == "conserves_documents" and not check.passed
    assert check.metadata["not_curated_count"].value >= 1
    assert check.metadata["missing_count"].value > 0
    mats = {e.asset_key.to_user_string() for e in res.get_asset_materialization_events()}
    assert mats == {"ledger"}  # classification_train did not run past the failed check
    assert not home.path("tasks", "train", "no_quality").exists()


def test_automation_waits_for_blocking_checks(governed, tmp_path):
    """New data reaches `classification_train[full]` only once the ledger balances again."""
    home, instance = governed["home"], governed["instance"]
    selection = dg.AssetSelection.groups("governance") | dg.AssetSelection.assets(
        "classification_train"
    )

    def tick(cursor):
        return dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor
        )

    def requested(result):
        return {
            r.key.to_user_string(): sorted(
                str(k) for k in r.true_subset.expensively_compute_partition_keys()
            )
            if r.true_subset.is_partitioned
            else [""]
            for r in result.results
            if r.true_subset.size
        }

    state = tick(None)
    # a new source with German and French documents: German changes curated[full|de]; French
    # becomes a new language partition that nothing has curated yet
    inbox = home.path("inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    rows = [
        {"text": f"Dies ist ein neuer deutscher Satz über das Wetter, Nummer {i}.", "lang": "de"}
        for i in range(4)
    ]
    rows += [{"text": f"Ceci est une nouvelle phrase française sur la météo, numéro {i}.",
              "lang": "fr"} for i in range(4)]  # fmt: skip
    (inbox / "batch.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    instance.add_dynamic_partitions(source_partitions.name, ["batch.jsonl"])
    _run(home, instance, "raw_documents", "batch.jsonl")
    _run(home, instance, "normalized")
    _run(home, instance, "language_id", "full")
    assert "fr" in instance.get_dynamic_partitions(language_partitions.name)
    for lang in ("en", *LANGS):
        _run(home, instance, PER_LANGUAGE, multi_key("full", lang))
    res = _run(home, instance, "ledger", "full", raise_on_error=False)
    assert not res.get_asset_check_evaluations()[0].passed  # fr is in no curated file yet
    state = tick(state.cursor)
    assert "classification_train" not in requested(state)
    _run(home, instance, PER_LANGUAGE, multi_key("full", "fr"))
    res = _run(home, instance, "ledger", "full")
    assert res.get_asset_check_evaluations()[0].passed
    state = tick(state.cursor)
    assert requested(state).get("classification_train") == ["full"]


def test_every_document_is_conserved_when_the_scope_is_two_languages(tmp_path):
    """The regression behind the issue: with two languages in scope (the config decides), the
    other languages' documents are ledger rows with a reason, never lost."""
    home = GovtuneHome(root=str(tmp_path / "home"))
    config = tmp_path / "scope.yaml"
    config.write_text("languages: [de, ru]\n")
    governance = GovernanceSettings(config_file=str(config))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(source_partitions.name, ["demo"])
    _run(home, instance, "demo_corpus", governance=governance)
    _run(home, instance, "raw_documents", "demo", governance)
    _run(home, instance, "normalized", governance=governance)
    _govern(home, instance, "full", governance)
    assert set(instance.get_dynamic_partitions(language_partitions.name)) == set(LANGS)
    res = _run(home, instance, "ledger", "full", governance)
    (check,) = res.get_asset_check_evaluations()
    assert check.passed, check.metadata
    meta = _meta(res, "ledger")
    assert (
        meta["raw_documents"].value == meta["curated_documents"].value + meta["ledger_rows"].value
    )
    ledger = pq.read_table(home.ledger_file("full"))
    reasons = set(ledger.column("reason").to_pylist())
    assert "out_of_scope_language" in reasons
    assert meta["raw_documents"].value > 5000 and meta["curated_documents"].value < 1500
