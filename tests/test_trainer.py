"""The trainer and its CLI on the tiny model: exact resume after a real kill, accumulation,
outputs, the documented loader, torchrun, MOO and Dagster Pipes."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.loader import load_finetuned
from training.trainer import TrainConfig, evaluate, prepare_task, train

ROOT = Path(__file__).resolve().parents[1]


def config(run_dir: Path, **kw) -> TrainConfig:
    base = {
        "run_dir": str(run_dir),
        "model": "tiny",
        "data": "synthetic",
        "steps": 10,
        "batch_size": 8,
        "lr": 1e-2,
        "checkpoint_every": 4,
        "threads": 1,
        "progress": False,
        "method": {
            "name": "hybrid",
            "dropout": 0.1,  # consumes the RNG every step: resume must restore it
            "hybrid": {"block_size": 16, "refresh_every": 3},
        },
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def write_yaml(path: Path, cfg: TrainConfig) -> Path:
    import yaml

    d = cfg.to_dict()
    path.write_text(yaml.safe_dump(d))
    return path


def test_kill_then_resume_gives_the_same_final_loss(tmp_path):
    reference = train(config(tmp_path / "ref"))
    cfg_file = write_yaml(tmp_path / "cfg.yaml", config(tmp_path / "killed"))
    killed = cli("--config", str(cfg_file), "--debug-kill-at-step", "6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "killed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000004"]
    assert not (run / "summary.json").exists()
    resumed = cli("--config", str(cfg_file))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == 4
    assert abs(summary["final_loss"] - reference.final_loss) <= 1e-6
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s > 0][:10]
    assert train_steps == list(range(1, 11)), steps  # no step logged twice after the resume
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # max_grad_norm huge: the gradient norm is logged but nothing is clipped
    kw = {"steps": 3, "method": {"name": "lora"}, "max_grad_norm": 1e9}
    big = train(config(tmp_path / "big", batch_size=8, grad_accum=1, **kw))
    small = train(config(tmp_path / "acc", batch_size=4, grad_accum=2, **kw))
    assert abs(big.final_loss - small.final_loss) < 1e-5

    def grad_norms(run):
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["grad_norm"] for x in lines if "grad_norm" in json.loads(x)]

    # the same examples and the same averaged gradient (Adam alone would hide a scale error)
    assert grad_norms(big) == pytest.approx(grad_norms(small), rel=1e-5)
    a = load_file(str(big.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(small.adapter_dir / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=2e-4) for k in a)


@pytest.mark.parametrize("task", ["classification", "translation"])
def test_run_outputs_and_the_documented_loader(tmp_path, task):
    cfg = config(tmp_path / "run", task=task, steps=6, checkpoint_every=3, log_every=2)
    result = train(cfg)
    run = result.run_dir
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    init = [r for r in lines if r.get("event") == "lambda_init"]
    assert len(init) == 1 and len(init[0]["lambdas"]) == 8
    logged = [r for r in lines if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    assert all(r["loss_by_lang"] and r["grad_layers"]["per_layer"] for r in logged)
    refresh_steps = [r["step"] for r in lines if "lambdas" in r and r.get("event") != "lambda_init"]
    assert refresh_steps == [3, 6]  # every λ logged on every refresh (K=3)
    assert all(r["orth_error_max"] < 1e-4 for r in logged)
    foot = json.loads((run / "footprint.json").read_text())
    for key in (
        "step_time_s_median",
        "tokens_per_s",
        "peak_rss_mb",
        "trainable_params",
        "total_params",
    ):
        assert foot[key] and foot[key] > 0, key
    assert foot["trainable_params"] < foot["total_params"]
    loaded = load_finetuned(run)
    assert loaded.method == "hybrid"
    data = prepare_task(cfg, loaded.tokenizer, _records(cfg))
    again = evaluate(loaded.model, loaded.tokenizer, data, cfg)
    assert again["dev_loss"] == pytest.approx(result.eval["dev_loss"], abs=1e-6)
    if task == "classification":
        assert loaded.classification_task is not None
        assert 0.0 <= result.eval["dev_accuracy"] <= 1.0


def _records(cfg):
    from training.trainer import load_task_records

    return load_task_records(cfg)


def test_resume_refuses_a_different_configuration(tmp_path):
    train(config(tmp_path / "run", steps=4))
    with pytest.raises(ValueError, match="different configuration"):
        train(config(tmp_path / "run", steps=4, lr=5e-3))
    # a changed length changes the run: an error unless asked for
    with pytest.raises(ValueError, match="run of 4 steps.*extend_steps: true"):
        train(config(tmp_path / "run", steps=6))
    more = train(config(tmp_path / "run", steps=6, extend_steps=True))
    assert more.resumed_from == 4


def test_bad_configuration_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown training config keys \\['stepz'\\]"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="moo must be one of"):
        TrainConfig.from_dict({"moo": "adam"})
    from training.cli import main

    rc = main(
        ["--model", "tiny", "--method", "hybrid", "--rule", "sometimes", "--run-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "rule='sometimes' is not one of" in err and "Traceback" not in err
    rc = main(
        ["--model", "tiny", "--data", str(tmp_path / "nope.parquet"), "--run-dir", str(tmp_path)]
    )
    assert rc == 2 and "task data file not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(["--model", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "holds no config.json: not a model directory" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("training.moo") is None, reason="training/moo.py absent"
)
def test_moo_path_writes_diagnostics(tmp_path):
    result = train(config(tmp_path / "moo", steps=3, moo="mgda", method={"name": "lora"}))
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    moo = [r["moo"] for r in lines if "moo" in r]
    assert len(moo) == 3 and sorted(moo[0]["languages"]) == ["de", "en", "fr"]


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_torchrun_two_processes_over_gloo(tmp_path):
    from launch import train_under_torchrun

    cfg = config(tmp_path / "ddp", steps=4, method={"name": "lora"})
    train_under_torchrun(cfg.to_dict(), tmp_path / "cfg.yaml", timeout=300)
    foot = json.loads((tmp_path / "ddp" / "footprint.json").read_text())
    assert foot["world_size"] == 2
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]  # rank 0 writes once
    assert lines[0]["tokens"] > 0


def test_cli_under_dagster_pipes_reports_metrics_and_materialization(tmp_path):
    dagster = pytest.importorskip("dagster")

    cfg_file = write_yaml(tmp_path / "cfg.yaml", config(tmp_path / "pipes", steps=3))

    @dagster.asset(required_resource_keys={"pipes"})
    def finetune(context):
        invocation = context.resources.pipes.run(
            command=[sys.executable, "-m", "training", "--config", str(cfg_file)],
            context=context,
            extras={"train_config": {"method.hybrid.rule": "learned"}},
            cwd=str(ROOT),
        )
        context.add_output_metadata({"messages": len(invocation.get_custom_messages())})
        return invocation.get_materialize_result()

    from assets.pipes import subprocess_client  # the resource the definitions use

    result = dagster.materialize([finetune], resources={"pipes": subprocess_client()})
    assert result.success
    mat = result.asset_materializations_for_node("finetune")[0]
    meta = mat.metadata
    assert meta["final_loss"].value > 0
    assert Path(meta["adapter_dir"].value).is_dir()
    assert meta["method"].value == "hybrid"
    assert meta["messages"].value >= 4  # λ init + 3 steps + final, streamed as they happen
    cfg = json.loads((tmp_path / "pipes" / "config.json").read_text())
    assert cfg["method"]["hybrid"]["rule"] == "learned"  # the Pipes extra overrode the YAML


# ----------------------------------------------------------------------------- issue 12 items
def test_rehydration_weight_follows_fineweb2() -> None:
    from training.data import rehydration_weight

    table = {None: 1, 0: 1, 1: 1, 2: 2, 3: 3, 4: 3, 5: 5, 99: 5, 100: 8, 999: 8, 1000: 1, 10**6: 1}
    assert {k: rehydration_weight(k) for k in table} == {k: float(v) for k, v in table.items()}
    with pytest.raises(ValueError, match="non-negative integer"):
        rehydration_weight(-2)


def test_weighted_sampler_is_reproducible_and_follows_the_weights() -> None:
    from training.trainer import StepSampler

    weights = [0.0, 1.0, 2.0, 5.0] * 5
    n = len(weights)

    def seq(w, rank=0):
        s = StepSampler(n, seed=3, batch_size=4, accum=2, world=2, rank=rank, weights=w)
        return [i for step in range(400) for m in range(2) for i in s.indices(step, m)]

    weighted, again = seq(weights), seq(weights)
    assert weighted == again  # a pure function of (seed, step): resume and ranks agree
    unit = seq(None)
    assert weighted != unit and seq([1.0] * n) == unit == seq([2.0] * n)  # equal weights: no-op
    assert seq(weights, rank=1) != weighted  # the ranks draw different examples
    counts = torch.bincount(torch.tensor(weighted + seq(weights, rank=1)), minlength=n).double()
    assert counts[0::4].sum() == 0  # weight 0: never drawn
    share = torch.stack([counts[k::4].sum() for k in (1, 2, 3)])
    share = share / share.sum()
    assert share.tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.02)
    with pytest.raises(ValueError, match="not all zero"):
        StepSampler(2, 0, 1, 1, 1, 0, weights=[0.0, 0.0])


def test_training_file_weights_change_the_sample_sequence_reproducibly(tmp_path) -> None:
    from training.data import synthetic_classification_records

    records = synthetic_classification_records(seed=0)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    weighted = tmp_path / "weighted.jsonl"
    rows = [dict(r, weight=[1.0, 3.0, 0.0, 8.0][i % 4]) for i, r in enumerate(records)]
    weighted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = {"steps": 4, "method": {"name": "lora"}, "checkpoint_every": 4}
    a = train(config(tmp_path / "a", data=str(weighted), **kw))
    b = train(config(tmp_path / "b", data=str(weighted), **kw))
    c = train(config(tmp_path / "c", data=str(plain), **kw))
    assert a.final_loss == b.final_loss  # same weights, same seed: the same run
    assert a.final_loss != c.final_loss  # the weights changed which examples were drawn
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(records[0], weight=-1)) + "\n")
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        train(config(tmp_path / "d", data=str(bad), **kw))


def test_fingerprint_follows_the_data_content_not_its_path(tmp_path) -> None:
    import hashlib

    from training.data import data_version, synthetic_classification_records

    body = "".join(json.dumps(r) + "\n" for r in synthetic_classification_records(seed=0))
    first, moved = tmp_path / "root1" / "d.jsonl", tmp_path / "root2" / "d.jsonl"
    for p in (first, moved):
        p.parent.mkdir()
        p.write_text(body)
    assert data_version(first) == "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    kw = {"steps": 2, "method": {"name": "lora"}, "checkpoint_every": 2}
    fp = config(tmp_path / "r", data=str(first), **kw).fingerprint()
    assert config(tmp_path / "r", data=str(moved), **kw).fingerprint() == fp
    done = train(config(tmp_path / "r", data=str(first), **kw))
    # the data root moved: the finished run is recognised and resumed, not retrained
    shutil.rmtree(first.parent)
    again = train(config(tmp_path / "r", data=str(moved), **kw))
    assert again.resumed_from == 2 and again.final_loss == done.final_loss  # not retrained
    assert json.loads((done.run_dir / "summary.json").read_text())["data_version"] == data_version(
        moved
    )
    # different data under the same path: a different fingerprint, and resume refuses it
    moved.write_text(body.replace('"split": "train"', '"split": "dev"', 3))
    assert config(tmp_path / "r", data=str(moved), **kw).fingerprint() != fp
    with pytest.raises(ValueError, match="different configuration"):
        train(config(tmp_path / "r", data=str(moved), **kw))


@pytest.mark.parametrize("method", ["lora", "untuned"])
def test_zero_steps_writes_a_finished_run_of_the_base_model(tmp_path, method) -> None:
    from training.methods import METHODS

    if method not in METHODS:
        pytest.skip(f"method {method!r} is not in training.methods yet")
    result = train(config(tmp_path / "run", steps=0, method={"name": method}))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["final_loss"] is None
    assert summary["eval"]["dev_loss"] > 0 and 0 <= summary["eval"]["dev_accuracy"] <= 1
    assert result.adapter_dir.is_dir() and not (result.run_dir / "checkpoints").exists()
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in lines if r.get("event") != "lambda_init"] == ["final"]


def test_moo_solves_once_per_accumulated_step(tmp_path) -> None:
    """The MOO objective is each language's loss over the whole step: 2 micro-batches of 4 give
    the run of one batch of 8, and the one-backward capture gives the split sub-batches' run."""
    kw = {"steps": 3, "moo": "mgda", "method": {"name": "lora", "dropout": 0.0}, "lr": 5e-2}
    runs = {
        "big": train(config(tmp_path / "big", batch_size=8, moo_gradients="split", **kw)),
        "accum": train(
            config(tmp_path / "acc", batch_size=4, grad_accum=2, moo_gradients="split", **kw)
        ),
        "capture": train(
            config(tmp_path / "cap", batch_size=4, grad_accum=2, moo_gradients="capture", **kw)
        ),
    }

    def moo(run):
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["moo"] for x in lines if "moo" in json.loads(x)]

    ref = moo(runs["big"])
    assert len(ref) == 3 and ref[0]["gradients"] == "split" and ref[0]["world_size"] == 1
    for name in ("accum", "capture"):
        got = moo(runs[name])
        assert len(got) == 3  # one solve per optimiser step, not per micro-batch
        assert got[0]["gradients"] == ("capture" if name == "capture" else "split")
        for a, b in zip(got, ref, strict=True):
            assert a["languages"] == b["languages"]
            assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
            for ga, gb in zip(a["groups"], b["groups"], strict=True):
                assert ga["alpha"] == pytest.approx(gb["alpha"], abs=1e-4)
        assert runs[name].final_loss == pytest.approx(runs["big"].final_loss, rel=1e-5)


def test_the_pipes_stream_carries_only_a_records_scalars() -> None:
    """Kilobyte records (per-layer gradient statistics, MOO diagnostics) stay in metrics.jsonl:
    a half-flushed long line stops Dagster's message reader for the rest of the run."""
    from training.cli import streamed_record

    rec = {"step": 3, "loss": 0.5, "lr": 1e-4, "note": None, "ok": True,
           "grad_layers": {str(i): {"norm": 0.1} for i in range(200)}, "moo": {"w": [0.5, 0.5]},
           "loss_by_lang": {"en": 0.5}}  # fmt: skip
    out = streamed_record(rec)
    assert out == {"step": 3, "loss": 0.5, "lr": 1e-4, "note": None, "ok": True}
    assert len(json.dumps(out)) < 200 < len(json.dumps(rec))
