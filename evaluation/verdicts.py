"""Verdict rules: one small function per seed claim, each on plain arrays, each with its test
and its simulated false-positive rate (tests/test_verdicts.py, docs/evaluation.md).

Every rule returns a :class:`Verdict` with the estimate, its interval, the p-value, the
smallest effect the data could have detected (``mde``, 80% power) and the power at the
report's target effect, so an "inconclusive" says how small a difference would have been
seen. The candidate is compared with the **strongest** baseline for each claim (the best
point value of that claim's statistic among the baselines that were run); the comparisons
table lists every baseline.

Arrays: ``seeds x items`` matrices on shared items (column ``i`` is the same item in every
arm). Bootstrap rules resample items (shared by every arm: the pairing) and each arm's seeds,
never perturbation cells or languages (:func:`evaluation.stats.crossed_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from evaluation.calibration import N_BINS, _debiased_ce, equal_mass_bins
from evaluation.stats import Contrast, SeedVariance, contrast_test, crossed_weights, paired_test

__all__ = [
    "HOLDS",
    "INCONCLUSIVE",
    "NOT_HOLDS",
    "BootResult",
    "Verdict",
    "accuracy_rule",
    "additivity_rule",
    "calibration_rule",
    "flip_rates",
    "not_measured",
    "overhead_rule",
    "parity_rule",
    "robustness_rule",
    "strongest",
]

HOLDS, NOT_HOLDS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """One seed claim about ``candidate``, its verdict and the numbers behind it."""

    claim: str  # accuracy, calibration, parity, robustness, governance, overhead
    statement: str
    verdict: str  # "holds", "does not hold" or "inconclusive"
    evidence: str
    candidate: str
    measured: bool = True
    baseline: str = ""  # the strongest baseline the verdict compared against
    estimate: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    mde: float = math.nan  # smallest effect detectable with 80% power by this design
    power: float = math.nan  # power at the report's target effect
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The verdict as printed: "inconclusive (not measured: ...)" when data is missing."""
        return self.verdict if self.measured else f"{self.verdict} ({self.evidence})"


def not_measured(claim: str, statement: str, cand: str, what: str) -> Verdict:
    return Verdict(claim, statement, INCONCLUSIVE, f"not measured: {what}", cand, measured=False)


def strongest(values: Mapping[str, float], higher_is_better: bool = True) -> str | None:
    """The baseline with the best finite value (None if there is none)."""
    ok = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not ok:
        return None
    return (max if higher_is_better else min)(ok, key=ok.__getitem__)


def _power_text(mde: float, power: float, target: float) -> str:
    return f"MDE {mde:.3f} (80% power); power {power:.2f} at {target:.2f}"


def _three_way(low: float, high: float, better_is_negative: bool) -> str:
    """Superiority reading of a CI of candidate - baseline."""
    if better_is_negative:
        low, high = -high, -low
    if low > 0:
        return HOLDS
    if high <= 0:
        return NOT_HOLDS
    return INCONCLUSIVE


# --------------------------------------------------------------------------- accuracy


def accuracy_rule(
    cand: np.ndarray,
    base: np.ndarray,
    *,
    candidate: str,
    baseline: str,
    confidence: float = 0.95,
    target: float = 0.03,
) -> Verdict:
    """Candidate - strongest baseline accuracy on shared items (crossed t test,
    :func:`evaluation.stats.paired_test`): holds when the CI lies above 0, does not hold
    when its upper bound is <= 0 (no gain), else inconclusive."""
    r = paired_test(cand, base, confidence)
    verdict = _three_way(r.low, r.high, better_is_negative=False)
    evidence = (
        f"vs the strongest baseline {baseline}: {_contrast_text(r)};"
        f" {_power_text(r.mde, r.power_at(target), target)}."
    )
    return _from_contrast(
        "accuracy",
        f"{candidate} beats the baselines on accuracy",
        verdict,
        evidence,
        candidate,
        baseline,
        r,
        target,
    )


def _contrast_text(r: Contrast) -> str:
    mark = ", significant" if r.significant else ""
    return f"{r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}], p={r.p_value:.3f}{mark}"


def _from_contrast(claim, statement, verdict, evidence, cand, base, r: Contrast, target):
    return Verdict(
        claim,
        statement,
        verdict,
        evidence,
        cand,
        baseline=base,
        estimate=r.estimate,
        low=r.low,
        high=r.high,
        p_value=r.p_value,
        mde=r.mde,
        power=r.power_at(target),
    )


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootResult:
    """A bootstrap difference (candidate - baseline) with its percentile CI."""

    estimate: float
    low: float
    high: float
    p_value: float
    se: float
    cand: float
    base: float

    def mde(self, confidence: float = 0.95) -> float:
        return float((norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(0.8)) * self.se)

    def power_at(self, effect: float, confidence: float = 0.95) -> float:
        if not self.se > 0:
            return 1.0
        z = norm.ppf(1 - (1 - confidence) / 2)
        d = abs(effect) / self.se
        return float(norm.sf(z - d) + norm.cdf(-z - d))


def _boot_result(point_c, point_b, reps_c, reps_b, confidence, df=None) -> BootResult:
    """Percentile CI and p-value of the replicate differences; with ``df`` (few items) a
    bootstrap-t interval instead, ``estimate +- t_df * SE_boot``: the percentile interval of a
    ratio over a dozen clean-correct items is too narrow (9.5% false positives at 5%)."""
    d = reps_c - reps_b
    d = d[np.isfinite(d)]
    est = float(point_c - point_b)
    se = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
    a = 1 - confidence
    if df is not None and se > 0:
        q = float(student_t.ppf(1 - a / 2, max(df, 1)))
        low, high = est - q * se, est + q * se
        p = float(2 * student_t.sf(abs(est) / se, max(df, 1)))
    else:
        low, high = np.quantile(d, [a / 2, 1 - a / 2]) if d.size else (math.nan, math.nan)
        p = min(1.0, 2 * (1 + min(np.sum(d <= 0), np.sum(d >= 0))) / (d.size + 1))
    return BootResult(est, float(low), float(high), float(p), se, float(point_c), float(point_b))


def _from_boot(claim, statement, verdict, evidence, cand, base, r: BootResult, conf, target):
    return Verdict(
        claim,
        statement,
        verdict,
        evidence,
        cand,
        baseline=base,
        estimate=r.estimate,
        low=r.low,
        high=r.high,
        p_value=r.p_value,
        mde=r.mde(conf),
        power=r.power_at(target, conf),
    )


# --------------------------------------------------------------------------- calibration


def _ce_replicates(conf: np.ndarray, hit: np.ndarray, w: np.ndarray, v: np.ndarray, n_bins):
    """Debiased CE of one arm (``seeds x items`` confidences and hits) and its replicates
    under item weights ``w`` (B x n) and seed weights ``v`` (B x S); bins are equal-mass on
    the arm's own confidences and fixed across replicates."""
    s, n = conf.shape
    bins = equal_mass_bins(conf.ravel(), n_bins).reshape(s, n)
    k = int(bins.max()) + 1
    onehot = np.eye(k)[bins]  # S x n x K
    point = _debiased_ce(
        onehot.sum((0, 1)),
        np.einsum("sik,si->k", onehot, conf),
        np.einsum("sik,si->k", onehot, hit),
    )
    count = np.einsum("bs,sik,bi->bk", v, onehot, w)
    csum = np.einsum("bs,sik,si,bi->bk", v, onehot, conf, w)
    hsum = np.einsum("bs,sik,si,bi->bk", v, onehot, hit, w)
    return float(point), _debiased_ce(count, csum, hsum)


def calibration_rule(
    cand: tuple[np.ndarray, np.ndarray],
    base: tuple[np.ndarray, np.ndarray],
    *,
    candidate: str,
    baseline: str,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = N_BINS,
    target: float = 0.02,
) -> Verdict:
    """Debiased calibration error (equal-mass bins, before temperature scaling) of candidate
    minus strongest baseline; each arm is ``(confidence, hit)`` as ``seeds x items`` arrays.
    Bootstrap over items (shared) and seeds: holds when the CI of the difference lies below
    0, does not hold when it lies above 0, else inconclusive."""
    (cc, ch), (bc, bh) = cand, base
    rng = np.random.default_rng(seed)
    w, (vc, vb) = crossed_weights(n_boot, cc.shape[1], [cc.shape[0], bc.shape[0]], rng)
    pc, rc = _ce_replicates(cc, ch, w, vc, n_bins)
    pb, rb = _ce_replicates(bc, bh, w, vb, n_bins)
    r = _boot_result(pc, pb, rc, rb, confidence)
    verdict = _three_way(r.low, r.high, better_is_negative=True)
    evidence = (
        f"debiased calibration error {pc:.3f} ({candidate}) vs {pb:.3f} (strongest baseline"
        f" {baseline}), difference {r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}],"
        f" p={r.p_value:.3f}; {_power_text(r.mde(confidence), r.power_at(target), target)}."
    )
    return _from_boot(
        "calibration",
        f"{candidate} improves calibration",
        verdict,
        evidence,
        candidate,
        baseline,
        r,
        confidence,
        target,
    )


# --------------------------------------------------------------------------- parity


def _parity_replicates(arm: np.ndarray, w: np.ndarray, v: np.ndarray):
    """Per-language means of ``langs x seeds x keys`` and their replicates (B x L)."""
    point = arm.mean(axis=(1, 2))
    tot = np.einsum("bs,bk->b", v, w)[:, None]
    return point, np.einsum("bs,lsk,bk->bl", v, arm, w) / tot


def _stratified_weights(n_boot: int, strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item multiplicities of a bootstrap that resamples items within each stratum (label)."""
    w = np.zeros((n_boot, strata.size))
    rows = np.arange(n_boot)[:, None]
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        np.add.at(w, (rows, idx[rng.integers(0, idx.size, size=(n_boot, idx.size))]), 1.0)
    return w


def parity_rule(
    cand: np.ndarray,
    base: np.ndarray,
    labels: np.ndarray,
    langs: Sequence[str],
    *,
    candidate: str,
    baseline: str,
    margin: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """Parity on parallel items: ``cand`` and ``base`` are ``langs x seeds x keys`` (the same
    messages, key ``k``, in every language), ``labels`` the class of each key. Bootstrap keys
    within label and each arm's seeds; the worst-language accuracy difference and the
    max-min gap difference (candidate - baseline) get percentile CIs. Holds (non-inferior)
    when the worst-language CI lies above ``-margin`` and the gap CI below ``+margin``; does
    not hold when either lies entirely beyond its margin (inferior); else inconclusive."""
    rng = np.random.default_rng(seed)
    w = _stratified_weights(n_boot, np.asarray(labels), rng)
    vc = crossed_weights(n_boot, 2, [cand.shape[1]], rng)[1][0]
    vb = crossed_weights(n_boot, 2, [base.shape[1]], rng)[1][0]
    pc, rc = _parity_replicates(cand, w, vc)
    pb, rb = _parity_replicates(base, w, vb)
    worst = _boot_result(pc.min(), pb.min(), rc.min(axis=1), rb.min(axis=1), confidence)
    gap = _boot_result(np.ptp(pc), np.ptp(pb), np.ptp(rc, axis=1), np.ptp(rb, axis=1), confidence)
    if worst.low > -margin and gap.high < margin:
        verdict = HOLDS
    elif worst.high < -margin or gap.low > margin:
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    wl = lambda p: langs[int(np.argmin(p))]  # noqa: E731
    evidence = (
        f"on {cand.shape[2]} parallel items per language: worst language {wl(pc)} {pc.min():.3f}"
        f" vs {wl(pb)} {pb.min():.3f} ({baseline}), difference {worst.estimate:+.3f}"
        f" [{worst.low:+.3f}, {worst.high:+.3f}]; gap {np.ptp(pc):.3f} vs {np.ptp(pb):.3f},"
        f" difference {gap.estimate:+.3f} [{gap.low:+.3f}, {gap.high:+.3f}];"
        f" non-inferiority margin {margin:.2f}; MDE of the worst-language difference"
        f" {worst.mde(confidence):.3f}."
    )
    v = _from_boot(
        "parity",
        f"{candidate} keeps cross-language parity",
        verdict,
        evidence,
        candidate,
        baseline,
        worst,
        confidence,
        margin,
    )
    v.extra.update(gap=gap.estimate, gap_low=gap.low, gap_high=gap.high)
    return v


# --------------------------------------------------------------------------- robustness


def flip_rates(clean: np.ndarray, perturbed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip numerator and denominator per (seed, base item): ``clean`` is ``seeds x items``
    (1 = correct on the clean text), ``perturbed`` ``seeds x items x cells`` (NaN where a cell
    left the item unchanged or was not scored). A flip is a clean-correct item that a
    perturbation makes wrong; items wrong when clean do not count (the floor effect)."""
    valid = np.isfinite(perturbed)
    wrong = np.where(valid, 1.0 - np.nan_to_num(perturbed), 0.0)
    num = clean * wrong.sum(axis=2)
    den = clean * valid.sum(axis=2)
    return num, den


def _ratio_replicates(num, den, w, v):
    point = num.sum() / den.sum() if den.sum() > 0 else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.einsum("bs,si,bi->b", v, num, w) / np.einsum("bs,si,bi->b", v, den, w)
    return point, reps


def robustness_rule(
    cand: tuple[np.ndarray, np.ndarray, np.ndarray],
    base: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    candidate: str,
    baseline: str,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    target: float = 0.03,
) -> Verdict:
    """Flip rate (:func:`flip_rates`) of candidate minus strongest baseline on the same base
    items; each arm is ``(clean correct, perturbed correct, gold log-prob drop)`` with the
    drop ``seeds x items`` (mean over changed cells of clean minus perturbed gold-class
    log-probability). Bootstrap over base items (shared) and seeds, never cells: holds when
    the flip-rate CI lies below 0, does not hold when above 0, else inconclusive. The drop
    in gold log-probability (crossed t test) is reported beside it."""
    (cc, cp, cd), (bc, bp, bd) = cand, base
    rng = np.random.default_rng(seed)
    w, (vc, vb) = crossed_weights(n_boot, cc.shape[1], [cc.shape[0], bc.shape[0]], rng)
    fc, fb = flip_rates(cc, cp), flip_rates(bc, bp)
    pc, rc = _ratio_replicates(*fc, w, vc)
    pb, rb = _ratio_replicates(*fb, w, vb)
    counted = min(int(np.sum(fc[1].sum(axis=0) > 0)), int(np.sum(fb[1].sum(axis=0) > 0)))
    r = _boot_result(pc, pb, rc, rb, confidence, df=counted - 1)
    verdict = _three_way(r.low, r.high, better_is_negative=True)
    logp = paired_test(cd, bd, confidence)
    evidence = (
        f"flip rate on clean-correct items {pc:.3f} ({candidate}) vs {pb:.3f} (strongest"
        f" baseline {baseline}), difference {r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}],"
        f" p={r.p_value:.3f}; gold log-probability drop difference {_contrast_text(logp)};"
        f" {cc.shape[1]} base items; {_power_text(r.mde(confidence), r.power_at(target), target)}."
    )
    v = _from_boot(
        "robustness",
        f"{candidate} is more robust to orthographic variants",
        verdict,
        evidence,
        candidate,
        baseline,
        r,
        confidence,
        target,
    )
    v.extra.update(logp_drop=logp.estimate, logp_low=logp.low, logp_high=logp.high)
    return v


# --------------------------------------------------------------------------- governance

# interaction = (full - none) - sum_X (full - no_X) = -2 full - none + sum_X no_X (3 stages)
ADDITIVITY_ARMS = ("full", "none", "no_lid", "no_dedup", "no_quality")


def additivity_rule(
    arms: Mapping[str, np.ndarray],
    *,
    method: str,
    margin: float = 0.03,
    confidence: float = 0.95,
    seed_matched: bool = True,
    seed_vars: Mapping[str, SeedVariance] | None = None,
) -> Verdict:
    """Interaction contrast ``(full - none) - sum of single-stage gains (full - no_X)`` on
    seed-matched arms (``seeds x items`` each, row ``s`` the same training seed). TOST with
    ``margin``: holds (the gains add up) when the ``1 - 2 alpha`` CI lies inside
    ``(-margin, margin)``; does not hold when the ``1 - alpha`` CI excludes 0; else
    inconclusive. ``seed_vars`` gives arms of one seed a borrowed seed variance (then the arms
    are treated as independent)."""
    stages = [a for a in ADDITIVITY_ARMS[2:] if a in arms]
    names = ["full", "none", *stages]
    weights = [-(len(stages) - 1), -1.0, *([1.0] * len(stages))]
    sv = [None if seed_vars is None else seed_vars.get(a) for a in names]
    r = contrast_test(
        [arms[a] for a in names], weights, confidence, seed_matched, None if seed_matched else sv
    )
    lo90, hi90 = r.interval(1 - 2 * (1 - confidence))
    total = contrast_test(
        [arms["full"], arms["none"]],
        [1, -1],
        confidence,
        seed_matched,
        None if seed_matched else [sv[0], sv[1]],
    )
    if -margin < lo90 and hi90 < margin:
        verdict = HOLDS
    elif r.significant:
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    gains = {a: float(arms["full"].mean() - arms[a].mean()) for a in stages}
    evidence = (
        f"total gain acc(full) - acc(none) = {_contrast_text(total)}; single-stage gains "
        + ", ".join(f"{a.removeprefix('no_')} {g:+.3f}" for a, g in gains.items())
        + f" (sum {sum(gains.values()):+.3f}); interaction (total - sum) {r.estimate:+.3f},"
        f" {1 - 2 * (1 - confidence):.0%} CI [{lo90:+.3f}, {hi90:+.3f}] against the"
        f" equivalence margin +-{margin:.2f}, p={r.p_value:.3f}"
        f" ({'seed-matched' if seed_matched else 'independent arms'}, seeds {r.n_seeds[0]});"
        f" MDE {r.mde:.3f}."
    )
    v = Verdict(
        "governance",
        f"the governance gains add up ({method})",
        verdict,
        evidence,
        method,
        baseline="none",
        estimate=r.estimate,
        low=lo90,
        high=hi90,
        p_value=r.p_value,
        mde=r.mde,
        power=r.power_at(margin),
    )
    v.extra.update(total=total.estimate, total_low=total.low, total_high=total.high, **gains)
    return v


# --------------------------------------------------------------------------- overhead


def _ratio_ci(cand: Sequence[np.ndarray], base: Sequence[np.ndarray], n_boot, confidence, rng):
    """Ratio of mean step times with a CI from resampling runs, then steps within each run."""

    def reps(runs: Sequence[np.ndarray]) -> np.ndarray:
        k = len(runs)
        pick = rng.integers(0, k, size=(n_boot, k))
        means = np.stack(
            [r[rng.integers(0, r.size, size=(n_boot, r.size))].mean(axis=1) for r in runs], 1
        )  # B x k
        return np.take_along_axis(means, pick, axis=1).mean(axis=1)

    point = np.mean([r.mean() for r in cand]) / np.mean([r.mean() for r in base])
    ratio = reps(cand) / reps(base)
    a = 1 - confidence
    lo, hi = np.quantile(ratio, [a / 2, 1 - a / 2])
    return float(point), float(lo), float(hi)


def overhead_rule(
    cand_steps: Sequence[np.ndarray],
    base_steps: Sequence[np.ndarray],
    cand_rss: Sequence[float],
    base_rss: Sequence[float],
    *,
    candidate: str,
    baseline: str,
    max_step_ratio: float = 1.15,
    max_memory_ratio: float = 1.10,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """Step-time ratio (runs, then steps within runs, resampled) and peak-memory ratio (runs
    resampled) of candidate over baseline with CIs: holds when both upper bounds are within
    their limits, does not hold when either lower bound is above its limit, else
    inconclusive."""
    rng = np.random.default_rng(seed)
    cs = [np.asarray(x, dtype=float) for x in cand_steps]
    bs = [np.asarray(x, dtype=float) for x in base_steps]
    step = _ratio_ci(cs, bs, n_boot, confidence, rng)
    mem = _ratio_ci(
        [np.array([x]) for x in cand_rss],
        [np.array([x]) for x in base_rss],
        n_boot,
        confidence,
        rng,
    )
    if step[2] <= max_step_ratio and mem[2] <= max_memory_ratio:
        verdict = HOLDS
    elif step[1] > max_step_ratio or mem[1] > max_memory_ratio:
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    evidence = (
        f"step time {step[0]:.2f}x [{step[1]:.2f}, {step[2]:.2f}] and peak RSS {mem[0]:.2f}x"
        f" [{mem[1]:.2f}, {mem[2]:.2f}] of {baseline} ({len(cs)} and {len(bs)} runs,"
        f" {sum(x.size for x in cs)} and {sum(x.size for x in bs)} steps)."
    )
    statement = (
        f"{candidate}'s overhead is modest (step time <= {max_step_ratio:.2f}x and peak"
        f" memory <= {max_memory_ratio:.2f}x of {baseline})"
    )
    return Verdict(
        "overhead",
        statement,
        verdict,
        evidence,
        candidate,
        baseline=baseline,
        estimate=step[0],
        low=step[1],
        high=step[2],
    )
