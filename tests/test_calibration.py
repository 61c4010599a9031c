"""Calibration: ECE/MCE from torchmetrics against a direct computation, Brier and NLL by
hand, temperature scaling on miscalibrated synthetic logits, reliability diagram PNG."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy.special import softmax

from evaluation.calibration import (
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    max_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    softmax_probs,
    temperature_scaling,
    temperature_scaling_per_language,
)
from evaluation.plots import plot_reliability


def _direct_ece_mce(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """ECE and MCE written out from the definition, one bin at a time (no vectorisation)."""
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf >= lo) & (conf < hi) if b < n_bins - 1 else (conf >= lo) & (conf <= hi)
        if not inside.any():
            continue
        gap = abs(np.mean(pred[inside] == labels[inside]) - np.mean(conf[inside]))
        ece += inside.mean() * gap
        mce = max(mce, gap)
    return ece, mce


def _synthetic(n: int, k: int, scale: float, seed: int):
    """Labels drawn from softmax(z): calibrated logits z; ``scale * z`` is miscalibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z, axis=1)])
    return scale * z, y


def test_ece_and_mce_match_direct_computation():
    rng = np.random.default_rng(0)
    for k in (2, 5):
        probs = rng.dirichlet(np.full(k, 0.3), size=3000)
        labels = rng.integers(0, k, size=3000)
        ece, mce = _direct_ece_mce(probs, labels)
        assert expected_calibration_error(probs, labels) == pytest.approx(ece, abs=1e-6)
        assert max_calibration_error(probs, labels) == pytest.approx(mce, abs=1e-6)
        bins = reliability_bins(probs, labels)
        assert bins.count.sum() == 3000 and len(bins.count) == 15
        assert bins.ece == pytest.approx(ece, abs=1e-9) and bins.mce == pytest.approx(mce)


def test_ece_by_hand_and_saturated_confidence_stays_in_15_bins():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    # bin of 0.9: accuracy 1/2, gap 0.4; bin of 0.6: accuracy 1/2, gap 0.1
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert max_calibration_error(probs, labels) == pytest.approx(0.4)
    # confidence exactly 1.0 shares the last bin [14/15, 1] with 0.95: gap |1/2 - 0.975|
    sat = np.array([[1.0, 0.0], [0.95, 0.05]])
    assert expected_calibration_error(sat, np.array([1, 0])) == pytest.approx(0.475, abs=1e-6)


def test_brier_and_nll_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    labels = np.array([0, 2])
    assert brier_score(probs, labels) == pytest.approx(
        ((0.3**2 + 0.2**2 + 0.1**2) + (0.5**2 + 0.25**2 + 0.75**2)) / 2
    )
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        -(math.log(0.7) + math.log(0.25)) / 2
    )
    # a confident mistake is large but finite
    assert math.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))


@pytest.mark.parametrize("scale", [3.0, 1 / 3])
def test_temperature_scaling_fixes_over_and_underconfidence(scale):
    dev_z, dev_y = _synthetic(2000, 4, scale, seed=1)
    test_z, test_y = _synthetic(2000, 4, scale, seed=2)
    res = temperature_scaling(dev_z, dev_y, test_z, test_y)
    assert res.temperature == pytest.approx(scale, rel=0.2)  # undoes the scaling
    assert res.dev_nll_after < res.dev_nll_before
    assert res.after.nll < res.before.nll
    assert res.after.ece < res.before.ece
    assert res.after.accuracy == res.before.accuracy  # argmax is unchanged


def test_temperature_of_a_calibrated_model_stays_near_one():
    z, y = _synthetic(3000, 3, 1.0, seed=3)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.15)


def test_one_temperature_per_language():
    dev = {"en": _synthetic(800, 3, 1.0, 4), "ru": _synthetic(800, 3, 4.0, 5)}
    test = {"en": _synthetic(800, 3, 1.0, 6), "ru": _synthetic(800, 3, 4.0, 7)}
    res = temperature_scaling_per_language(dev, test)
    assert res["ru"].temperature > 2.5 > 1.5 > res["en"].temperature
    assert res["ru"].after.ece < res["ru"].before.ece
    with pytest.raises(KeyError, match="no dev split.*'de'"):
        temperature_scaling_per_language(dev, {**test, "de": test["en"]})


def test_calibration_bad_input_is_explained():
    with pytest.raises(ValueError, match="softmax_probs"):
        expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="sums to"):
        brier_score(np.array([[0.5, 0.4]]), np.array([0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        negative_log_likelihood(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(ValueError, match="1-D with 2 entries"):
        calibration_metrics(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0]))
    with pytest.raises(TypeError, match="integer class indices"):
        calibration_metrics(np.array([[0.5, 0.5]]), np.array([0.0]))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="temperature must be positive"):
        softmax_probs(np.zeros((1, 2)), temperature=0.0)


def test_reliability_diagram_png(tmp_path):
    z, y = _synthetic(1000, 4, 3.0, seed=8)
    before = reliability_bins(softmax_probs(z), y)
    after = reliability_bins(softmax_probs(z, fit_temperature(z, y)), y)
    path = plot_reliability({"before": before, "after": after}, tmp_path / "rel.png", "de")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100 and float(np.std(img)) > 0.01
