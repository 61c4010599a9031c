"""Scoring a run (evaluation/predict.py, ``python -m evaluation``) on the tiny model: parallel
items (the same messages in every language, stratified by label), the one-pass scorer equals the
training path's scores, perturbed copies carry their measured corruption and no-ops are gone,
the lexical and untuned baselines write the same rows, per-step times for the footprint, clear
errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.frames import prepare
from evaluation.perturb import corruption
from evaluation.predict import (
    PredictConfig,
    RobustnessSpec,
    _batches,
    class_log_probs,
    footprint_with_steps,
    parallel_sample,
    predict,
    sample_per_language,
)
from quality_models.contract import write_parquet_atomic
from training.data import (
    score_classification,
    synthetic_classification_records,
    synthetic_translation_records,
)
from training.loader import load_finetuned
from training.tasks import LexicalBaseline
from training.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp: Path, name: str, seed: int, task: str, data: Path, method: str = "lora",
           steps: int = 3) -> Path:  # fmt: skip
    cfg = TrainConfig.from_dict(
        {"run_dir": str(tmp / name), "model": "tiny", "data": str(data), "task": task,
         "steps": steps, "batch_size": 8, "lr": 1e-2, "seed": seed, "threads": 1,
         "progress": False, "method": {"name": method}}
    )  # fmt: skip
    return train(cfg).run_dir


def parallel_records(n_per_class: int = 12) -> list[dict]:
    """The synthetic set with a source-message key shared by the languages (item i of a label
    is the same message in en, de and fr) and the task builder's overlap flag."""
    recs = synthetic_classification_records(n_per_class=n_per_class)
    for r in recs:
        _, lang, label, i = r["id"].split("-")
        r["key"] = f"{label}-{i}"
        r["overlap_controlled"] = None if r["split"] == "train" else int(i) % 2 == 0
    return recs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("predict")
    cls = tmp / "classification.parquet"
    write_parquet_atomic(pa.Table.from_pylist(parallel_records()), cls)
    plain = tmp / "plain.jsonl"  # no keys: not parallel
    plain.write_text("\n".join(json.dumps(r) for r in synthetic_classification_records(12)))
    mt = tmp / "translation.jsonl"
    pairs = synthetic_translation_records(n=48)
    for i, r in enumerate(pairs):
        r["split"] = "devtest" if i % 3 == 0 else r["split"]
        r["key"] = f"k{i // 6}"  # devtest rows 6k (en-fr) and 6k+3 (en-de): one message
        r["domain"] = "d" + str(i % 4)
    mt.write_text("\n".join(json.dumps(r) for r in pairs))
    return {"tmp": tmp, "classification": cls, "plain": plain, "translation": mt}


@pytest.fixture(scope="module")
def runs(data) -> dict[str, Path]:
    tmp = data["tmp"]
    return {
        "s0": _train(tmp, "s0", 0, "classification", data["classification"], steps=6),
        "s1": _train(tmp, "s1", 1, "classification", data["classification"]),
        "untuned": _train(
            tmp, "untuned", 0, "classification", data["classification"], method="untuned", steps=0
        ),  # fmt: skip
        "mt": _train(tmp, "mt", 0, "translation", data["translation"]),
    }


SPEC = RobustnessSpec(perturbations=["case", "typos", "diacritics", "transliterate"],
                      severities=[0.1, 0.3], langs=["de", "fr"], items_per_lang=4)  # fmt: skip


def _config(data, run: Path, out: str, **kw: object) -> PredictConfig:
    base = {"run_dir": str(run), "data": str(data["classification"]),
            "out": str(data["tmp"] / out), "test_per_lang": 4, "dev_per_lang": 3,
            "robustness": SPEC, "progress": False}  # fmt: skip
    return PredictConfig(**{**base, **kw})


def test_classification_rows_are_parallel_and_paired_across_runs(data, runs):
    a = predict(_config(data, runs["s0"], "a.parquet", protocol="translate_train")).to_pandas()
    b = predict(_config(data, runs["s1"], "b.parquet")).to_pandas()
    assert pq.read_table(data["tmp"] / "a.parquet").num_rows == len(a)
    key = ["split", "lang", "item_id", "key", "perturbation", "severity", "corruption"]
    assert a[key].equals(b[key])  # the same items and copies for every training seed
    assert set(a.protocol) == {"translate_train"} and set(b.protocol) == {"zero_shot"}
    clean = a[(a.split == "test") & (a.perturbation == "clean")]
    assert clean.groupby("lang").size().to_dict() == {"de": 4, "en": 4, "fr": 4}
    # parallel: every language scores the same source messages, labels spread (4 of 4)
    keys = {lang: set(g.key) for lang, g in clean.groupby("lang")}
    assert keys["en"] == keys["de"] == keys["fr"]
    assert Counter(clean[clean.lang == "en"].gold).most_common(1)[0][1] == 1
    dev = a[a.split == "dev"]
    assert dev.groupby("lang").size().to_dict() == {"de": 3, "en": 3, "fr": 3}
    assert not set(dev.key) & set(clean.key)
    assert clean.overlap_controlled.notna().all()
    # perturbed copies: of clean test items, in the robustness languages, never unchanged
    noisy = a[a.perturbation != "clean"]
    assert set(noisy.lang) == {"de", "fr"} and set(noisy.key) <= set(clean.key)
    assert (noisy.corruption > 0).all() and (clean.corruption == 0).all()
    assert "transliterate" not in set(noisy.perturbation)  # Latin text: every copy a no-op
    assert {"case", "typos"} <= set(noisy.perturbation)
    per_cell = noisy.groupby(["perturbation", "severity", "lang"]).key.nunique()
    assert per_cell.max() == 4  # the same 4 messages in each language
    logits = np.stack(a.logits.to_numpy())
    assert logits.shape[1] == 4
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, atol=1e-4)  # log-probabilities
    assert not np.allclose(np.stack(b.logits.to_numpy()), logits)  # other weights, other scores
    df = prepare(a.assign(variant="full", run_key="tt-lora-s0", method="lora", seed=0))
    assert set(df.protocol) == {"translate_train"} and df.key.notna().all()


def test_perturbed_rows_record_the_corruption_of_their_text(data, runs):
    cfg = _config(data, runs["s0"], "c.parquet")
    rows = predict(cfg).to_pandas()
    recs = {r["id"]: r for r in parallel_records()}
    from evaluation.perturb import perturb_measured

    noisy = rows[rows.perturbation != "clean"]
    for r in noisy.head(12).itertuples():
        text = recs[r.item_id]["text"]
        p = perturb_measured(text, r.perturbation, r.severity, f"{cfg.seed}/{r.item_id}", r.lang)
        assert p.corruption == pytest.approx(r.corruption)
        assert corruption(text, p.text) == pytest.approx(r.corruption)


def test_one_pass_scorer_equals_the_training_path(runs):
    loaded = load_finetuned(runs["s0"], merge=True)
    task = loaded.classification_task
    recs = synthetic_classification_records(n_per_class=6)
    texts = [r["text"] for r in recs] + [recs[0]["text"], "", "ball " * 80]  # dupes, empty, long
    items = [{"text": t, "label": task.labels[0], "lang": "en", "id": str(i)}
             for i, t in enumerate(texts)]  # fmt: skip
    ref = np.log(np.clip(score_classification(loaded.model, loaded.tokenizer, items, task, 7, 40),
                         1e-12, None))  # fmt: skip
    for budget in (40, 256, 10_000):  # one item per batch .. everything in one batch
        got = class_log_probs(loaded.model, loaded.tokenizer, task, texts, 40, budget)
        np.testing.assert_allclose(got, ref, atol=2e-5)
    assert class_log_probs(loaded.model, loaded.tokenizer, task, [], 40).shape == (0, 4)


def test_batches_are_sorted_within_budget_and_cover_every_item():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 500).tolist()
    batches = _batches(lengths, 256)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(500))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1  # sorted: little padding
    assert _batches([300], 256) == [[0]]  # an item longer than the budget goes alone


def test_parallel_sample_is_stratified_seeded_and_falls_back():
    recs = parallel_records(n_per_class=60)  # 10 test messages per label
    test = [r for r in recs if r["split"] == "test"]
    one, parallel = parallel_sample(test, 4, seed=0)
    assert parallel and len(one) == 12
    assert [r["id"] for r in one] == [r["id"] for r in parallel_sample(test[::-1], 4, seed=0)[0]]
    assert {r["key"] for r in one} != {r["key"] for r in parallel_sample(test, 4, seed=1)[0]}
    by_lang = {lang: {r["key"] for r in one if r["lang"] == lang} for lang in ("en", "de", "fr")}
    assert by_lang["en"] == by_lang["de"] == by_lang["fr"]
    assert Counter(r["label"] for r in one if r["lang"] == "en") == {
        "food": 1, "music": 1, "science": 1, "sports": 1}  # fmt: skip
    # a key some language lacks is not sampled
    partial = [r for r in test if not (r["lang"] == "fr" and r["key"] == one[0]["key"])]
    got, _ = parallel_sample(partial, 40, seed=0)
    assert one[0]["key"] not in {r["key"] for r in got}
    # without shared keys: each language its own stratified sample
    plain = [dict(r, key=None) for r in test]
    own, parallel = parallel_sample(plain, 4, seed=0)
    assert not parallel and Counter(r["lang"] for r in own) == {"de": 4, "en": 4, "fr": 4}
    old = sample_per_language(test, 4, seed=0)
    assert len(old) == 12 and {r["lang"] for r in old} == {"en", "de", "fr"}


def test_non_parallel_data_still_scores(data, runs):
    cfg = _config(data, runs["s0"], "plain.parquet")
    cfg.data = str(data["plain"])
    rows = predict(cfg).to_pandas()
    clean = rows[(rows.split == "test") & (rows.perturbation == "clean")]
    assert clean.groupby("lang").size().to_dict() == {"de": 4, "en": 4, "fr": 4}
    assert (clean.key == clean.item_id).all()  # no key: the item is its own message


def test_lexical_baseline_writes_the_same_rows(data, runs):
    model = predict(_config(data, runs["s0"], "m.parquet")).to_pandas()
    cfg = _config(data, Path("unused"), "lexical.parquet", method="lexical",
                  train_data=str(data["classification"]), train_langs=["en"])  # fmt: skip
    lex = predict(cfg).to_pandas()
    key = ["split", "lang", "item_id", "key", "perturbation", "severity", "gold"]
    assert lex[key].equals(model[key])  # the report pairs it with every method
    train = pa.Table.from_pylist(parallel_records())
    nb = LexicalBaseline().fit(train, ["en"])
    labels = sorted({r["label"] for r in parallel_records()})
    recs = {r["id"]: r["text"] for r in parallel_records()}
    clean = lex[lex.perturbation == "clean"]
    pred = [labels[int(np.argmax(z))] for z in clean.logits]
    assert pred == nb.predict([recs[i] for i in clean.item_id])
    foot = json.loads((data["tmp"] / "lexical.footprint.json").read_text())
    assert foot["method"] == "lexical" and foot["trainable_params"] > 0
    # translate-train: fitted on every language, other scores
    tt = predict(_config(data, Path("unused"), "lexical_tt.parquet", method="lexical",
                         train_data=str(data["classification"]),
                         train_langs=["en", "de", "fr"])).to_pandas()  # fmt: skip
    assert not np.allclose(np.stack(tt.logits.to_numpy()), np.stack(lex.logits.to_numpy()))


def test_untuned_run_scores_the_base_model(data, runs):
    rows = predict(_config(data, runs["untuned"], "u.parquet")).to_pandas()
    trained = predict(_config(data, runs["s1"], "u1.parquet")).to_pandas()
    assert rows[["lang", "item_id", "perturbation"]].equals(
        trained[["lang", "item_id", "perturbation"]]
    )
    assert not np.allclose(np.stack(rows.logits.to_numpy()), np.stack(trained.logits.to_numpy()))


def test_footprint_step_times_come_from_the_metrics(runs):
    foot = footprint_with_steps(runs["s0"])
    metrics = [json.loads(x) for x in (runs["s0"] / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step_time_s"] for m in metrics if m.get("event") is None and "step_time_s" in m]
    assert len(steps) == 6 and foot["step_times"] == steps[2:] and foot["step_times_warmup"] == 2
    assert foot["method"] == "lora" and foot["steps_run"] == 6
    assert footprint_with_steps(runs["untuned"])["step_times"] == []


def test_translation_hypotheses_on_parallel_pairs(data, runs):
    cfg = _config(data, runs["mt"], "mt.parquet", task="translation", max_new_tokens=6)
    cfg.data = str(data["translation"])
    table = predict(cfg).to_pandas()
    assert set(table.tgt_lang) == {"de", "fr"} and len(table) == 2 * 4  # 4 per direction
    assert set(table[table.tgt_lang == "de"].key) == set(table[table.tgt_lang == "fr"].key)
    assert all(isinstance(h, str) for h in table.hypothesis)
    assert (table.reference.str.len() > 0).all()
    assert table.chrf.between(0, 100).all()
    from sacrebleu.metrics import CHRF

    r = table.iloc[0]
    expected = CHRF(word_order=2).sentence_score(r.hypothesis, [r.reference]).score
    assert r.chrf == pytest.approx(expected)


def test_bad_input_is_a_clear_error(data, runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation data not found"):
        cfg = _config(data, runs["s0"], "x.parquet")
        cfg.data = str(tmp_path / "missing.parquet")
        predict(cfg)
    with pytest.raises(ValueError, match="unknown perturbations"):
        PredictConfig.from_dict({"run_dir": "r", "data": "d", "out": "o",
                                 "robustness": {"perturbations": ["rot13"]}})  # fmt: skip
    with pytest.raises(ValueError, match="needs train_data"):
        PredictConfig.from_dict({"run_dir": "r", "data": "d", "out": "o", "method": "lexical"})
    with pytest.raises(ValueError, match="not trained on classification"):
        predict(_config(data, runs["mt"], "y.parquet"))
    with pytest.raises(FileNotFoundError, match="train data not found"):
        predict(_config(data, Path("r"), "z.parquet", method="lexical",
                        train_data=str(tmp_path / "none.parquet")))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", "--run-dir", str(runs["s0"]), "--data",
         str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o.parquet")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: evaluation data not found")
