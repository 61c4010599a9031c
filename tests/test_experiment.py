"""Experiments through Dagster: the (variant x run) grid, reuse of finished runs, the report
assets and the headless CLI, on the tiny model and synthetic task files (real materialisations,
real subprocesses through Pipes)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet
import pytest

from assets.partitions import (
    METHODS,
    parse_run_key,
    run_key,
    run_partitions,
    run_protocol,
    variant_run_key,
)
from assets.reports import REPORT_TABLES
from assets.resources import GovtuneHome
from assets.stage_io import GovernanceSettings
from pipelines.definitions import defs
from pipelines.experiment import REPORT_ASSETS, ExperimentPlan
from quality_models.contract import write_parquet_atomic
from training.data import synthetic_classification_records, synthetic_translation_records

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def test_run_keys_round_trip_and_reject_junk():
    keys = [run_key(m, s, "classification", p) for m in METHODS for s in (0, 7)
            for p in ("zero_shot", "translate_train")]  # fmt: skip
    keys += [run_key(m, s, "translation") for m in METHODS[2:] for s in (0, 7)]
    for key in keys:
        task, method, seed = parse_run_key(key)
        assert run_key(method, seed, task, run_protocol(key)) == key
    assert parse_run_key("mt-lora_ga-s2") == ("translation", "lora_ga", 2)
    assert run_protocol("tt-hybrid-s1") == "translate_train"
    for bad in ("lora", "sgd-s0", "lora-sx", "mt-", "mt-lexical-s0"):
        with pytest.raises(ValueError, match="not a run key"):
            parse_run_key(bad)


def test_plans_load_and_order_partial_results_first(tmp_path):
    plan = ExperimentPlan.load(ROOT / "configs" / "reproduce.yaml")
    keys = plan.keys()
    n_base, n_methods = len(plan.baselines), len(plan.methods)
    assert keys[:n_base] == [("full", f"{b}-s0") for b in plan.baselines]  # baselines first
    # then every method at the first seed, before translation and the other seeds
    assert keys[n_base : n_base + n_methods] == [("full", f"{m}-s0") for m in plan.methods]
    method_runs = {k for k in keys if k[0] == "full" and not k[1].startswith(("mt-", "tt-"))}
    assert len(method_runs) == n_base + n_methods * len(plan.seeds)
    assert len(plan.seeds) >= 3  # every arm a verdict uses has three seeds (issue 14)
    ablation = [k for k in keys if k[0] != "full"]
    assert {r for _, r in ablation} <= set(plan.ablation_runs)  # seed-matched governance arms
    assert {v for v, _ in keys} == {plan.variant, *plan.ablation_variants}
    assert len(keys) == len(set(keys))
    demo = ExperimentPlan.load(ROOT / "configs" / "demo.yaml")
    cfg = demo.run_config()["ops"]
    assert cfg["finetune"]["config"]["experiment"] == "demo"
    assert cfg["model_evaluation"]["config"]["translation_langs"] == ["de"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\nmethod: [lora]\n")
    with pytest.raises(ValueError, match="unknown keys"):
        ExperimentPlan.load(bad)
    with pytest.raises(FileNotFoundError):
        ExperimentPlan.load(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> GovtuneHome:
    """Synthetic task files where the task assets would write theirs."""
    home = GovtuneHome(root=str(tmp_path_factory.mktemp("experiment_home")))
    cls = synthetic_classification_records(n_per_class=12)
    write_parquet_atomic(pa.Table.from_pylist(cls), home.path("tasks", "classification.parquet"))
    for variant in ("full", "none"):  # the trainer's file classification_train writes
        write_parquet_atomic(
            pa.Table.from_pylist(cls),
            home.path("tasks", "train", variant, "trainer_data.parquet"),
        )
    mt = synthetic_translation_records(n=48)
    for i, r in enumerate(mt):
        r["split"] = "devtest" if i % 3 == 0 else r["split"]
    write_parquet_atomic(pa.Table.from_pylist(mt), home.path("tasks", "translation.parquet"))
    return home


def _materialize(home, instance, selection, key=None, config=None):
    return dg.materialize(
        assets=list(defs.assets),
        selection=selection,
        partition_key=str(key) if key is not None else None,
        resources={**defs.resources, "home": home, "governance": GovernanceSettings()},
        instance=instance,
        run_config=config or {},
        raise_on_error=True,
    )


PLAN = {
    "experiment": "t",
    "finetune": {"model": "tiny", "steps": 3, "batch_size": 8, "lr": 0.01,
                 "train_langs": ["en", "de", "fr"], "eval_max_examples": 8},
    "evaluation": {"test_per_lang": 4, "dev_per_lang": 4, "robustness_items": 3,
                   "robustness_perturbations": ["case", "diacritics"],
                   "translation_per_direction": 4, "max_new_tokens": 4},
}  # fmt: skip


def test_experiment_grid_reuse_and_reports(home):
    plan = ExperimentPlan(**PLAN)
    config = {"ops": {k: v for k, v in plan.run_config()["ops"].items() if k != "reports"}}
    instance = dg.DagsterInstance.ephemeral()
    keys = [("full", "lora-s0"), ("full", "hybrid-s0"), ("none", "hybrid-s0"),
            ("full", "mt-lora-s0"), ("full", "lexical-s0")]  # fmt: skip
    instance.add_dynamic_partitions(run_partitions.name, sorted({r for _, r in keys}))
    for variant, run in keys:
        res = _materialize(home, instance, ["finetune", "model_evaluation"],
                           variant_run_key(variant, run), config)  # fmt: skip
        mats = {m.asset_key.to_user_string(): m.materialization.metadata
                for m in res.get_asset_materialization_events()}  # fmt: skip
        assert mats["finetune"]["reused"].value is False
        assert mats["model_evaluation"]["method"].value == parse_run_key(run)[1]
        checks = {(c.asset_key.to_user_string(), c.check_name): c
                  for c in res.get_asset_check_evaluations()}  # fmt: skip
        assert checks[("model_evaluation", "every_test_item_scored")].passed, run
        assert ("model_evaluation", "above_lexical_baseline") in checks
        assert checks[("finetune", "data_version_recorded")].passed, run
        key = str(variant_run_key(variant, run))  # a partitioned check names its partition
        assert all(c.metadata["partition"].value == key for c in checks.values()), run
        assert all(c.description.startswith(key) for c in checks.values()), run
    # the same partition again: the finished run and its predictions are reused, not redone
    again = _materialize(home, instance, ["finetune", "model_evaluation"],
                         variant_run_key("full", "lora-s0"), config)  # fmt: skip
    meta = {m.asset_key.to_user_string(): m.materialization.metadata
            for m in again.get_asset_materialization_events()}  # fmt: skip
    assert meta["finetune"]["reused"].value is True
    assert meta["model_evaluation"]["reused"].value is True
    preds = home.path("evaluations", "t", "full")
    assert sorted(p.name for p in preds.glob("*.parquet")) == [
        "hybrid-s0.parquet", "lexical-s0.parquet", "lora-s0.parquet",
        "mt-lora-s0.parquet"]  # fmt: skip
    # the lexical baseline scores exactly the items every method scores, with the same columns
    rows = {r: pa.parquet.read_table(preds / f"{r}.parquet").to_pandas()
            for r in ("lora-s0", "hybrid-s0", "lexical-s0")}  # fmt: skip
    item = ["split", "lang", "item_id", "key", "perturbation", "severity", "gold"]
    assert rows["lexical-s0"][item].equals(rows["lora-s0"][item])
    assert rows["hybrid-s0"][item].equals(rows["lora-s0"][item])
    assert set(rows["lora-s0"].protocol) == {"zero_shot"}
    foot = json.loads((preds / "lora-s0.footprint.json").read_text())
    assert len(foot["step_times"]) == 3 and all(t > 0 for t in foot["step_times"])
    assert json.loads((preds / "lexical-s0.footprint.json").read_text())["method"] == "lexical"
    # fitted on the languages finetune recorded for the run key (the plan's train_langs)
    stamp = json.loads((preds / "lexical-s0.json").read_text())["config"]
    assert stamp["train_langs"] == ["en", "de", "fr"] and stamp["method"] == "lexical"

    res = _materialize(home, instance, REPORT_ASSETS, config={"ops": {
        "reports": {"config": {"experiment": "t", "n_boot": 200}}}})  # fmt: skip
    mats = {m.asset_key.to_user_string(): m.materialization.metadata
            for m in res.get_asset_materialization_events()}  # fmt: skip
    assert set(mats) == set(REPORT_ASSETS)
    out = home.path("reports", "t")
    for name, key in REPORT_TABLES.items():
        assert "table" in mats[name] or "figure" in mats[name]
        assert mats[name]["plot"].value.startswith("![")  # the full PNG, a click away
        glance = mats[name]["glance"].value  # short enough for the UI to render it inline
        assert len(glance) < 1000, (name, len(glance))
        assert glance.startswith("![") and "data:image/png;base64," in glance
        for suffix in (".md", ".csv", ".png"):
            assert (out / f"{key}{suffix}").is_file(), f"{key}{suffix} missing"
    report = (out / "report.md").read_text()
    assert "Verdict" in report or "verdict" in report
    ablation = (out / "governance_ablation.md").read_text()
    assert "none" in ablation and "full" in ablation
    # lineage: every report asset reads the per-run predictions
    graph = defs.resolve_asset_graph()
    for name in REPORT_ASSETS:
        assert dg.AssetKey("model_evaluation") in graph.get(dg.AssetKey(name)).parent_keys
    summary = json.loads((out / "report.json").read_text())
    assert summary["experiment"] == "t"
    (check,) = res.get_asset_check_evaluations()
    assert check.check_name == "every_claim_has_a_verdict" and check.passed
    assert set(check.metadata["verdicts"].value) >= {"accuracy", "governance", "overhead"}


def _govtune(tmp_path, *args):
    import os
    import subprocess
    import sys

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "GOVTUNE_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_cli_status_and_bad_run_requests(tmp_path):
    status = _govtune(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["asset"]: r for r in json.loads(status.stdout)}
    assert set(REPORT_ASSETS) | {"curated", "finetune", "model_evaluation"} <= set(rows)
    assert rows["curated"]["materialised"] == "0/0"  # no language found yet: no partition
    bad = _govtune(tmp_path, "run", "--languages", "de,xx")
    assert bad.returncode == 2
    assert "unknown languages ['xx']" in bad.stderr
    bad = _govtune(tmp_path, "run", "--variant", "nope")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_finetune_runs_data_parallel_moo_under_torchrun(home):
    """`nproc: 2` launches the trainer with torchrun under Pipes: DDP over gloo, the bucket-level
    MGDA in the DDP hook, and one materialisation reported by rank 0."""
    plan = ExperimentPlan(**{**PLAN, "finetune": {**PLAN["finetune"], "nproc": 2, "moo": "mgda",
                                                   "moo_scope": "bucket", "steps": 2}})  # fmt: skip
    config = {"ops": {"finetune": plan.run_config()["ops"]["finetune"]}}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(run_partitions.name, ["lora-s3"])
    res = _materialize(home, instance, "finetune", variant_run_key("full", "lora-s3"), config)
    (mat,) = res.get_asset_materialization_events()
    assert mat.materialization.metadata["reused"].value is False
    assert all(
        c.passed for c in res.get_asset_check_evaluations() if c.check_name != "loss_decreases"
    )
    run_dir = home.path("runs", "t", "full", "lora-s3")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["placement"]["world_size"] == 2
    moo = [json.loads(x).get("moo") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    moo = [m for m in moo if m]
    assert moo and all(m.get("world_size") == 2 for m in moo), moo[:1]
