"""Scoring a finished run (evaluation/predict.py, ``python -m evaluation``) on the tiny model:
the item sample is the same for every run, perturbed copies only where asked, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.predict import PredictConfig, RobustnessSpec, predict, sample_per_language
from training.data import synthetic_classification_records, synthetic_translation_records
from training.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp: Path, name: str, seed: int, task: str, data: Path) -> Path:
    cfg = TrainConfig.from_dict(
        {"run_dir": str(tmp / name), "model": "tiny", "data": str(data), "task": task,
         "steps": 3, "batch_size": 8, "lr": 1e-2, "seed": seed, "threads": 1, "progress": False,
         "method": {"name": "lora"}}
    )  # fmt: skip
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("predict")
    cls = tmp / "classification.jsonl"
    recs = synthetic_classification_records(n_per_class=12)
    cls.write_text("\n".join(__import__("json").dumps(r) for r in recs))
    mt = tmp / "translation.jsonl"
    pairs = synthetic_translation_records(n=48)
    for i, r in enumerate(pairs):
        r["split"] = "devtest" if i % 3 == 0 else r["split"]
    mt.write_text("\n".join(__import__("json").dumps(r) for r in pairs))
    return {"tmp": tmp, "classification": cls, "translation": mt}


@pytest.fixture(scope="module")
def runs(data) -> dict[str, Path]:
    tmp = data["tmp"]
    return {
        "s0": _train(tmp, "s0", 0, "classification", data["classification"]),
        "s1": _train(tmp, "s1", 1, "classification", data["classification"]),
        "mt": _train(tmp, "mt", 0, "translation", data["translation"]),
    }


def _config(data, run: Path, out: str, **kw: object) -> PredictConfig:
    spec = RobustnessSpec(perturbations=["case", "typos"], severities=[0.5, 1.0], langs=["de"],
                          items_per_lang=3)  # fmt: skip
    base = {"run_dir": str(run), "data": str(data["classification"]),
            "out": str(data["tmp"] / out), "test_per_lang": 4, "dev_per_lang": 3,
            "robustness": spec, "progress": False}  # fmt: skip
    return PredictConfig(**{**base, **kw})


def test_classification_rows_are_paired_across_runs(data, runs):
    a = predict(_config(data, runs["s0"], "a.parquet")).to_pandas()
    b = predict(_config(data, runs["s1"], "b.parquet")).to_pandas()
    assert pq.read_table(data["tmp"] / "a.parquet").num_rows == len(a)
    key = ["split", "lang", "item_id", "perturbation", "severity"]
    assert a[key].equals(b[key])  # the same items for every training seed
    clean = a[(a.split == "test") & (a.perturbation == "clean")]
    assert clean.groupby("lang").size().to_dict() == {"de": 4, "en": 4, "fr": 4}
    assert a[a.split == "dev"].groupby("lang").size().to_dict() == {"de": 3, "en": 3, "fr": 3}
    noisy = a[a.perturbation != "clean"]
    assert set(noisy.lang) == {"de"} and len(noisy) == 2 * 2 * 3
    assert set(noisy.item_id) <= set(clean.item_id)  # perturbed copies of clean test items
    logits = np.stack(a.logits.to_numpy())
    assert logits.shape[1] == 4
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, atol=1e-4)  # log-probabilities
    assert not np.allclose(np.stack(b.logits.to_numpy()), logits)  # other weights, other scores


def test_sample_is_seeded_and_capped_per_language():
    recs = [{"id": f"{lang}{i}", "lang": lang} for lang in ("xx", "yy") for i in range(10)]
    one = sample_per_language(recs, 4, seed=0)
    assert [r["id"] for r in one] == [r["id"] for r in sample_per_language(recs[::-1], 4, seed=0)]
    assert {r["lang"] for r in one} == {"xx", "yy"} and len(one) == 8
    assert [r["id"] for r in one] != [r["id"] for r in sample_per_language(recs, 4, seed=1)]


def test_translation_hypotheses(data, runs):
    cfg = _config(data, runs["mt"], "mt.parquet", task="translation", max_new_tokens=6)
    cfg.data = str(data["translation"])
    table = predict(cfg).to_pandas()
    assert set(table.tgt_lang) == {"de", "fr"} and len(table) == 2 * 4  # 4 per direction
    assert all(isinstance(h, str) for h in table.hypothesis)
    assert (table.reference.str.len() > 0).all()


def test_bad_input_is_a_clear_error(data, runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation data not found"):
        cfg = _config(data, runs["s0"], "x.parquet")
        cfg.data = str(tmp_path / "missing.parquet")
        predict(cfg)
    with pytest.raises(ValueError, match="unknown perturbations"):
        PredictConfig.from_dict({"run_dir": "r", "data": "d", "out": "o",
                                 "robustness": {"perturbations": ["rot13"]}})  # fmt: skip
    with pytest.raises(ValueError, match="not trained on classification"):
        predict(_config(data, runs["mt"], "y.parquet"))
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", "--run-dir", str(runs["s0"]), "--data",
         str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o.parquet")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: evaluation data not found")
