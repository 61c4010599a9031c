"""bench/training.py times the trainer's own step: LoRA and the method alternate step by step,
every step runs the trainer's λ refresh and constraint check at their default frequencies."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

import training.trainer as trainer_mod
from training.hybrid import HybridModel

ROOT = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "bench" / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_alternates_trainer_steps_with_their_periodic_work(monkeypatch):
    bench = bench_module()
    calls = {"refresh": [], "orth": 0}
    refresh = HybridModel.refresh_lambdas
    orth = trainer_mod.max_orthogonality_error

    def counted_refresh(self, step):
        rec = refresh(self, step)
        calls["refresh"].append((step, rec is not None))
        return rec

    def counted_orth(model, *a, **kw):
        calls["orth"] += 1
        return orth(model, *a, **kw)

    monkeypatch.setattr(HybridModel, "refresh_lambdas", counted_refresh)
    monkeypatch.setattr(trainer_mod, "max_orthogonality_error", counted_orth)
    args = argparse.Namespace(
        model="tiny", method="hybrid", steps=10, warmup=4, batch=8, seq=48, threads=1, seed=0
    )
    out = bench.time_worker(args)
    assert len(out["method_steps_s"]) == len(out["lora_steps_s"]) == 10
    assert out["turns"] == ["lora", "hybrid"] * 14  # one step each, in turn
    assert out["time_ratio"] > 0 and out["time_ratio_median_round"] > 0
    # the trainer's own step ran: a λ refresh call every step, a refresh at step 10 (inside the
    # measured steps 5..14), the orthogonality check on every logged step
    assert [s for s, _ in calls["refresh"]] == list(range(1, 15))
    assert [s for s, did in calls["refresh"] if did] == [10]
    assert calls["orth"] >= 14


def test_bench_config_is_the_reproduce_shape():
    bench = bench_module()
    args = argparse.Namespace(
        model="gemma-3-270m", steps=10, warmup=4, batch=8, seq=48, threads=2, seed=0
    )
    cfg = bench.train_config(args, "hybrid:hard", "/tmp/x")
    assert (cfg.batch_size, cfg.max_length, cfg.steps, cfg.log_every) == (8, 48, 14, 1)
    assert cfg.method.name == "hybrid" and cfg.method.hybrid == {"rule": "hard"}
    assert cfg.method.to_hybrid_config().refresh_every == 10
    with pytest.raises(ValueError):
        bench.train_config(args, "nope", "/tmp/x")
