"""Power analysis (evaluation/power.py) against the project's own test: simulate the
hierarchical seeds x items model, run ``contrast_test`` many times, and compare the rejection
rate with the predicted power; variance components recovered from simulated runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.power import (
    VarianceComponents,
    components_from_predictions,
    design_table,
    estimate_components,
    minimal_detectable_effect,
    power,
    required_items,
    required_seeds,
)
from evaluation.stats import contrast_test

TRUE = VarianceComponents(interaction=0.02, seed=0.0004, residual=0.16)


def _gaussian_arms(rng, comps, n, seeds, delta, reps):
    """``reps`` replications of two methods: shared items, per-item interaction, seeds, noise."""
    inter = rng.normal(0, np.sqrt(comps.interaction), (reps, 1, n))
    item = rng.normal(0, 0.3, (reps, 1, n))

    def arm(shift, half):
        b = rng.normal(0, np.sqrt(comps.seed), (reps, seeds, 1))
        e = rng.normal(0, np.sqrt(comps.residual), (reps, seeds, n))
        return 0.5 + shift + item + half * inter + b + e

    return arm(delta, 0.5), arm(0.0, -0.5)


@pytest.mark.parametrize(("n", "seeds", "delta"), [(400, 3, 0.03), (1000, 5, 0.03), (300, 8, 0.05)])
def test_predicted_power_matches_the_simulated_rejection_rate(n, seeds, delta):
    rng = np.random.default_rng(n + seeds)
    reps = 400
    a, b = _gaussian_arms(rng, TRUE, n, seeds, delta, reps)
    hits = np.mean([contrast_test([a[r], b[r]], [1, -1]).significant for r in range(reps)])
    predicted = power(delta, n, seeds, TRUE)
    assert abs(hits - predicted) < 0.07, (hits, predicted)


def test_size_is_alpha_and_mde_has_80_percent_power():
    assert power(0.0, 400, 3, TRUE) == pytest.approx(0.05, abs=1e-6)
    mde = minimal_detectable_effect(400, 3, TRUE)
    assert power(mde, 400, 3, TRUE) == pytest.approx(0.8, abs=1e-4)
    assert minimal_detectable_effect(4000, 10, TRUE) < mde


def test_required_items_and_seeds():
    n = required_items(0.03, 10, TRUE)
    assert n is not None and power(0.03, n, 10, TRUE) >= 0.8 > power(0.03, n - 1, 10, TRUE)
    # with 3 seeds the seed term alone (2 x 0.0004 / 3, on 4 df) leaves 0.03 out of reach
    assert required_items(0.03, 3, TRUE) is None
    s = required_seeds(0.03, 2000, TRUE)
    assert s is not None and power(0.03, 2000, s, TRUE) >= 0.8 > power(0.03, 2000, s - 1, TRUE)
    table = design_table(0.03, TRUE, items=(400, 2000), seeds=(3, 10))
    assert list(table.columns) == ["n_items", "n_seeds", "se", "df", "power", "mde"]
    assert len(table) == 4
    p = table.set_index(["n_items", "n_seeds"])["power"]
    assert p.loc[(2000, 10)] > p.loc[(400, 10)] > p.loc[(400, 3)]


def test_components_are_recovered_from_simulated_runs():
    rng = np.random.default_rng(7)
    comps = VarianceComponents(interaction=0.03, seed=0.002, residual=0.15)
    ests = []
    for _ in range(40):
        a, b = _gaussian_arms(rng, comps, 500, 6, 0.0, 1)
        ests.append(estimate_components({"a": a[0], "b": b[0]}))
    assert np.mean([e.residual for e in ests]) == pytest.approx(0.15, rel=0.05)
    assert np.mean([e.interaction for e in ests]) == pytest.approx(0.03, rel=0.3)
    assert np.mean([e.seed for e in ests]) == pytest.approx(0.002, rel=0.35)
    with pytest.raises(ValueError, match="at least two seeds"):
        estimate_components({"a": a[0][:1], "b": b[0][:1]})


def test_components_from_prediction_rows():
    rng = np.random.default_rng(8)
    rows = []
    for method, acc in (("lora", 0.5), ("hybrid", 0.6)):
        for seed in range(3):
            for i in range(60):
                gold = i % 3
                ok = rng.random() < acc
                z = [0.0, 0.0, 0.0]
                z[gold if ok else (gold + 1) % 3] = 2.0
                rows.append({"variant": "full", "run_key": f"{method}-s{seed}", "method": method,
                             "seed": seed, "split": "test", "lang": "fr", "item_id": f"q{i}",
                             "perturbation": "clean", "severity": 0.0, "gold": gold,
                             "logits": z})  # fmt: skip
    comps = components_from_predictions(pd.DataFrame(rows))
    assert comps.n_items == 60 and comps.n_seeds == 3
    assert 0.15 < comps.residual < 0.3  # Bernoulli(0.5-0.6) noise
    assert 0 <= comps.agreement <= 1
