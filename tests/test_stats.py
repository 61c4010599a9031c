"""Statistics: bootstrap CIs cover the true mean at about the nominal rate in simulation, the
shared-test-set bootstrap does not shrink with correlated seeds, paired tests find real
differences and not null ones, McNemar and Holm by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap

from evaluation.stats import (
    adjust_pvalues,
    bootstrap_ci,
    compare_per_language,
    contrast_test,
    mcnemar,
    mean_ci,
    paired_bootstrap,
    paired_test,
    seed_variance,
    sign_flip_test,
    t_mde,
    t_power,
)


def test_ci_covers_true_mean_of_iid_examples_at_nominal_rate():
    rng = np.random.default_rng(0)
    p_true, reps = 0.7, 300
    hits = 0
    for r in range(reps):
        x = (rng.random(120) < p_true).astype(float)
        est = bootstrap_ci(x, n_boot=500, seed=r)
        hits += est.low <= p_true <= est.high
    coverage = hits / reps
    # nominal 0.95; the binomial spread of 300 replications is about +-0.025
    assert 0.90 <= coverage <= 0.985, coverage


def test_hierarchical_ci_covers_true_mean_over_seeds_and_examples():
    """Crossed design: score[s, i] = mu + seed effect + example difficulty + noise; the test
    set and the seeds are both samples, so the interval must account for both."""
    rng = np.random.default_rng(1)
    mu, reps, hits, widths = 0.6, 300, 0, []
    for r in range(reps):
        seed_eff = rng.normal(0, 0.01, size=(3, 1))
        example_eff = rng.normal(0, 0.15, size=(1, 100))
        x = mu + seed_eff + example_eff + rng.normal(0, 0.1, size=(3, 100))
        est = bootstrap_ci(x, n_boot=400, seed=r)
        hits += est.low <= mu <= est.high
        widths.append(est.high - est.low)
    assert 0.90 <= hits / reps <= 0.99, hits / reps
    # the example effect is shared by the seeds: width ~ 2 * 1.96 * 0.15 / sqrt(100) or more
    assert np.mean(widths) > 0.055


def test_shared_examples_do_not_count_as_fresh_data():
    """Three seeds that agree on every example carry the information of one seed."""
    rng = np.random.default_rng(2)
    one = (rng.random(200) < 0.6).astype(float)
    three = np.stack([one, one, one])
    w1 = bootstrap_ci(one, seed=0).half_width
    shared = bootstrap_ci(three, seed=0).half_width
    independent = bootstrap_ci(three, seed=0, shared_examples=False).half_width
    assert 0.9 < shared / w1 < 1.1
    assert independent / w1 < 0.7  # what treating the copies as new examples would claim


def test_one_seed_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.exponential(1.0, size=150)
    ours = bootstrap_ci(x, n_boot=4000, seed=0)
    ref = scipy_bootstrap((x,), np.mean, n_resamples=4000, method="percentile", rng=1)
    assert ours.mean == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03)


def test_ragged_seeds_are_weighted_equally():
    est = bootstrap_ci([np.ones(10), np.zeros(40)], seed=0)
    assert est.mean == pytest.approx(0.5) and est.n_seeds == 2 and est.n_examples == 40


def test_paired_bootstrap_finds_a_real_difference():
    rng = np.random.default_rng(4)
    difficulty = rng.random(300)
    base = np.stack([(difficulty > 0.45 + rng.normal(0, 0.03, 300)) for _ in range(3)])
    better = np.stack([(difficulty > 0.35 + rng.normal(0, 0.03, 300)) for _ in range(3)])
    res = paired_bootstrap(better.astype(float), base.astype(float), seed=0)
    assert res.diff == pytest.approx(better.mean() - base.mean())
    assert res.significant and res.low > 0 and res.p_value < 0.01
    flipped = paired_bootstrap(base.astype(float), better.astype(float), seed=0)
    assert flipped.significant and flipped.high < 0


def test_paired_bootstrap_false_positive_rate_under_the_null():
    rng = np.random.default_rng(5)
    reps, positives = 200, 0
    for r in range(reps):
        difficulty = rng.random(100)
        a = (difficulty[None, :] > 0.4 + rng.normal(0, 0.1, (3, 100))).astype(float)
        b = (difficulty[None, :] > 0.4 + rng.normal(0, 0.1, (3, 100))).astype(float)
        positives += paired_bootstrap(a, b, n_boot=400, seed=r).significant
    assert positives / reps <= 0.09, positives / reps
    same = paired_bootstrap(a, a, n_boot=400)
    assert same.diff == 0 and not same.significant and same.p_value == 1.0


def test_mcnemar_by_hand():
    a = np.array([1] * 10 + [0] * 5 + [1] * 5)
    b = np.array([0] * 10 + [0] * 5 + [1] * 5)
    assert mcnemar(a, b) == pytest.approx(2 * 0.5**10)  # 10 discordant pairs, all one way
    assert mcnemar(a, a) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0, 2], [0, 1])


def test_sign_flip_test():
    rng = np.random.default_rng(6)
    base = rng.normal(0, 1, 80)
    assert sign_flip_test(base + 1.0, base + rng.normal(0, 0.5, 80)) < 0.001
    assert sign_flip_test(base, base) == 1.0
    assert sign_flip_test(base + rng.normal(0, 1, 80), base + rng.normal(0, 1, 80)) > 0.01


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03]
    # Holm: sorted .01,.03,.04 times 3,2,1 = .03,.06,.04; running max .03,.06,.06
    assert adjust_pvalues(p).tolist() == pytest.approx([0.03, 0.06, 0.06])
    # BH: .01*3/1, .03*3/2, .04*3/3 = .03,.045,.04; running min from the top .03,.04,.04
    assert adjust_pvalues(p, "bh").tolist() == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="holm"):
        adjust_pvalues(p, "bonferroni")


def test_compare_per_language_corrects_across_languages():
    rng = np.random.default_rng(7)
    langs = ["de", "en", "fr", "ru", "zh"]
    base = {lg: (rng.random((3, 60)) < 0.6).astype(float) for lg in langs}
    method = {lg: base[lg].copy() for lg in langs}
    # a small gain in one language: 5 more correct examples of 60 on every seed
    wrong = np.nonzero(base["ru"][0] == 0)[0][:5]
    method["ru"][:, wrong] = 1.0
    raw = compare_per_language(method, base, correction=None, seed=1)
    adj = compare_per_language(method, base, seed=1)
    assert set(adj) == set(langs)
    assert adj["ru"].p_adjusted >= raw["ru"].p_value
    assert adj["ru"].diff > 0 and not adj["de"].significant
    assert all(adj[lg].significant <= raw[lg].significant for lg in langs)
    with pytest.raises(ValueError, match="no language in common"):
        compare_per_language({"de": base["de"]}, {"en": base["en"]})


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.5, 1.0], confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([0.5, 1.0], n_boot=10)
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(np.ones((3, 10)), np.ones((3, 11)))
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="shared_examples=True"):
        bootstrap_ci([np.ones(3), np.ones(4)], shared_examples=True)


# --------------------------------------------------------------------------- crossed design


def _binary_arms(rng, n=400, seeds=3, seed_sd=0.04, delta=0.0, shared_seed=0.0):
    """Two methods on the same items: logistic item difficulty, a per-item interaction, a
    run-level (seed) shift; ``shared_seed`` adds the same seed effect to both arms."""
    a = rng.normal(0, 1.5, n)
    inter = rng.normal(0, 0.5, n)
    common = rng.normal(0, shared_seed, (seeds, 1))

    def arm(shift, it):
        b = rng.normal(0, seed_sd, (seeds, 1)) + common
        p = np.clip(1 / (1 + np.exp(-(a + it))) + shift + b, 0, 1)
        return (rng.random((seeds, n)) < p).astype(float)

    return arm(delta, inter / 2), arm(0.0, -inter / 2)


@pytest.mark.parametrize("seed_sd", [0.0, 0.04, 0.08])
def test_contrast_test_false_positive_rate_under_the_null(seed_sd):
    rng = np.random.default_rng(10)
    reps = 600
    indep = matched = 0
    for _ in range(reps):
        a, b = _binary_arms(rng, seed_sd=seed_sd)
        indep += contrast_test([a, b], [1, -1]).significant
        matched += contrast_test([a, b], [1, -1], seed_matched=True).significant
    # nominal 0.05; 600 replications give a binomial SD of about 0.009
    assert indep / reps <= 0.07 and matched / reps <= 0.07, (indep / reps, matched / reps)
    assert indep / reps >= 0.015  # not the 0.2% of the two-way bootstrap


def test_contrast_test_is_more_powerful_than_the_two_way_bootstrap():
    rng = np.random.default_rng(11)
    reps, ours, boot = 120, 0, 0
    for r in range(reps):
        a, b = _binary_arms(rng, seed_sd=0.0, delta=0.05)
        ours += contrast_test([a, b], [1, -1]).significant
        boot += paired_bootstrap(a, b, n_boot=300, seed=r).significant
    assert ours >= boot + 8, (ours, boot)  # same data: the gap is the tests', not noise


def test_contrast_by_hand_and_seed_matching_cancels_shared_seed_effects():
    x = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    c = mean_ci(x)
    assert c.estimate == pytest.approx(x.mean())
    sv = seed_variance(x)
    assert sv.var == pytest.approx(np.var(x.mean(axis=1), ddof=1))
    rng = np.random.default_rng(12)
    a, b = _binary_arms(rng, seeds=4, seed_sd=0.0, shared_seed=0.1)
    indep = contrast_test([a, b], [1, -1])
    matched = contrast_test([a, b], [1, -1], seed_matched=True)
    assert matched.estimate == pytest.approx(indep.estimate)
    assert matched.se < indep.se  # the shared seed effect cancels within each seed
    same = paired_test(a, a)
    assert same.estimate == 0 and not same.significant and same.p_value == 1.0
    one_seed = contrast_test([a[:1], b], [1, -1], seed_vars=[seed_variance(b), None])
    assert one_seed.borrowed_seed_var and one_seed.se > 0
    with pytest.raises(ValueError, match="same >= 2 items"):
        contrast_test([a, b[:, :5]], [1, -1])


def test_t_power_and_mde_are_inverse():
    assert t_power(0.0, 0.01, 50) == pytest.approx(0.05, abs=1e-9)
    mde = t_mde(0.01, 30)
    assert t_power(mde, 0.01, 30) == pytest.approx(0.8, abs=1e-6)
    assert t_mde(0.01, 3) > t_mde(0.01, 300)  # few df: a larger effect is needed
