"""The committed results rebuild from what is committed: docs/results/predictions holds every
run that docs/results/report.json names, scored on the same parallel items, under the config
that docs/results/config.yaml records (the copy of configs/reproduce.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.report import scored_runs
from evaluation.store import load_bundle

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_committed_predictions_hold_every_reported_run_on_the_same_items():
    cls, mt, footprints, meta = load_bundle(RESULTS / "predictions")
    report = json.loads((RESULTS / "report.json").read_text())
    assert scored_runs(cls, mt) == report["runs"]
    assert meta["header"]["experiment"] == report["experiment"] == "reproduce"
    clean = cls[(cls.split == "test") & (cls.perturbation == "clean")]
    items = clean.groupby("run_key").apply(lambda g: frozenset(zip(g.lang, g.key, strict=True)))
    assert items.nunique() == 1, "every run scores the same parallel items"
    per_lang = clean[clean.run_key == clean.run_key.iloc[0]].groupby("lang").size()
    assert per_lang.nunique() == 1 and per_lang.iloc[0] >= 80
    assert {v["claim"] for v in report["verdicts"]} >= {"accuracy", "robustness", "overhead"}
    root = RESULTS.parents[1]
    assert (RESULTS / "config.yaml").read_text() == (root / "configs/reproduce.yaml").read_text()
