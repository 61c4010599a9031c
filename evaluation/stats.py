"""Honest statistics for small multilingual evaluations: mean and 95% bootstrap confidence
interval over training seeds and test examples, paired method-vs-baseline tests per language,
and multiple-comparison correction across languages.

Layout of scores: a 2-D array ``(n_seeds, n_examples)`` of per-example scores (1/0 correct,
sentence chrF, per-example NLL...) where every seed was scored on the **same** test examples
(the usual case); a 1-D array is one seed. Seeds with different example sets can be passed as a
list of 1-D arrays.

The bootstrap is hierarchical: each replicate resamples seeds with replacement, then examples
with replacement. When the examples are shared, one example resample is applied to all seeds
of the replicate (a two-way bootstrap of the seeds x examples design), which keeps the
correlation that a shared test set induces; drawing examples independently per seed would
treat a shared test set as fresh data and give intervals that are too narrow.

Known behaviour, measured by simulation (3 seeds x 100 examples, 1000 replications): coverage
of the 95% interval is 0.95-0.97 while seed-to-seed variation is small next to example
variation, and falls to about 0.85 when the seed effect dominates (3 seeds cannot pin it down;
10 seeds give 0.93). Resampling both levels counts the seed x example noise more than once, so
the paired test is conservative: under the null it flagged 0.2% of comparisons (nominal 5%),
at the cost of power (+5 points on 100 examples: found 33% of the time, against 67% for a
sign-flip test over examples alone, which ignores seed variation). ``significant`` errs towards
"not shown", never towards a false claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import binomtest, false_discovery_control, permutation_test

__all__ = [
    "Estimate",
    "PairedResult",
    "adjust_pvalues",
    "bootstrap_ci",
    "compare_per_language",
    "mcnemar",
    "paired_bootstrap",
    "sign_flip_test",
]

Scores = np.ndarray | Sequence[float] | Sequence[Sequence[float]]
_CHUNK = 4_000_000  # elements per vectorised block, bounds memory of large bootstraps


def _as_seeds(scores: Scores, name: str = "scores") -> list[np.ndarray]:
    """Normalise to a list of 1-D float arrays, one per seed."""
    if isinstance(scores, np.ndarray) and scores.ndim in (1, 2):
        rows = [scores] if scores.ndim == 1 else list(scores)
    elif isinstance(scores, np.ndarray):
        raise ValueError(
            f"{name} must be 1-D (examples) or 2-D (seeds x examples), got {scores.shape}"
        )
    else:
        seq = list(scores)
        if not seq:
            raise ValueError(f"{name} is empty")
        rows = [seq] if np.isscalar(seq[0]) else seq
    out = []
    for i, r in enumerate(rows):
        a = np.asarray(r, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}: seed {i} must be a non-empty 1-D array of scores")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: seed {i} contains NaN or infinity")
        out.append(a)
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _shared(seeds: list[np.ndarray]) -> bool:
    return len({a.size for a in seeds}) == 1


def _check_level(confidence: float, n_boot: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")


def _boot_means(
    seeds: list[np.ndarray],
    n_boot: int,
    rng: np.random.Generator,
    shared_examples: bool,
    example_idx: np.ndarray | None = None,
) -> np.ndarray:
    """``n_boot`` hierarchical bootstrap means (each seed weighs the same).

    With ``example_idx`` (``n_boot x n_examples``) the example resample is given, so that two
    arms of a paired comparison share it.
    """
    s = len(seeds)
    seed_idx = rng.integers(0, s, size=(n_boot, s))
    if shared_examples:
        x = np.stack(seeds)  # (S, N)
        n = x.shape[1]
        if example_idx is None:
            example_idx = rng.integers(0, n, size=(n_boot, n))
        out = np.empty(n_boot)
        step = max(1, _CHUNK // (s * n))
        for b0 in range(0, n_boot, step):
            si = seed_idx[b0 : b0 + step]  # (B, S)
            ei = example_idx[b0 : b0 + step]  # (B, N)
            out[b0 : b0 + step] = x[si[:, :, None], ei[:, None, :]].mean(axis=(1, 2))
        return out
    # different example sets: each (replicate, slot) resamples its seed's examples afresh
    slot_means = np.empty((n_boot, s))
    for k, a in enumerate(seeds):
        rows = np.nonzero(seed_idx == k)
        m = len(rows[0])
        if m == 0:
            continue
        means = np.empty(m)
        step = max(1, _CHUNK // a.size)
        for j in range(0, m, step):
            cnt = min(step, m - j)
            means[j : j + cnt] = a[rng.integers(0, a.size, size=(cnt, a.size))].mean(axis=1)
        slot_means[rows] = means
    return slot_means.mean(axis=1)


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    confidence: float
    n_seeds: int
    n_examples: int  # per seed (the largest, if they differ)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_ci(
    scores: Scores,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    shared_examples: bool | None = None,
) -> Estimate:
    """Mean of per-example scores over seeds and examples with a hierarchical bootstrap CI.

    ``shared_examples`` defaults to True when all seeds have the same number of examples
    (they were scored on one test set); pass False for seeds scored on different samples.
    """
    _check_level(confidence, n_boot)
    seeds = _as_seeds(scores)
    shared = _shared(seeds) if shared_examples is None else shared_examples
    if shared and not _shared(seeds):
        raise ValueError("shared_examples=True but the seeds have different numbers of examples")
    boots = _boot_means(seeds, n_boot, np.random.default_rng(seed), shared)
    alpha = 1 - confidence
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(
        mean=float(np.mean([a.mean() for a in seeds])),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_seeds=len(seeds),
        n_examples=max(a.size for a in seeds),
    )


@dataclass(frozen=True)
class PairedResult:
    """Method minus baseline on the same examples, with its CI, p-value and verdict."""

    diff: float  # mean(method) - mean(baseline)
    low: float
    high: float
    p_value: float  # two-sided, from the bootstrap distribution of the difference
    significant: bool  # p < alpha and the CI excludes 0
    method_mean: float
    baseline_mean: float
    n_examples: int
    n_seeds_method: int
    n_seeds_baseline: int
    test: str = "paired hierarchical bootstrap"
    p_adjusted: float | None = None  # after correction across languages, if applied


def paired_bootstrap(
    method: Scores,
    baseline: Scores,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float | None = None,
) -> PairedResult:
    """Is ``method`` better or worse than ``baseline`` on the same test examples?

    Each replicate resamples the examples once (shared by both arms: the pairing) and each
    arm's seeds independently (their training runs are independent), then takes the difference
    of means. The CI is the percentile interval of that difference; the p-value is twice the
    smaller tail mass beyond 0 (with the +1 correction, so it is never 0). ``significant``
    holds only when both the CI excludes 0 and ``p < alpha`` (``alpha = 1 - confidence``).
    """
    _check_level(confidence, n_boot)
    alpha = 1 - confidence if alpha is None else alpha
    m, b = _as_seeds(method, "method"), _as_seeds(baseline, "baseline")
    if not (_shared(m) and _shared(b)) or m[0].size != b[0].size:
        raise ValueError(
            "paired comparison needs every seed of both arms scored on the same examples;"
            f" got sizes {[a.size for a in m]} (method) and {[a.size for a in b]} (baseline)"
        )
    n = m[0].size
    rng = np.random.default_rng(seed)
    example_idx = rng.integers(0, n, size=(n_boot, n))
    boots = _boot_means(m, n_boot, rng, True, example_idx) - _boot_means(
        b, n_boot, rng, True, example_idx
    )
    diff = float(np.mean([a.mean() for a in m]) - np.mean([a.mean() for a in b]))
    low, high = np.quantile(boots, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    p = min(
        1.0,
        2 * (1 + min(np.sum(boots <= 0), np.sum(boots >= 0))) / (n_boot + 1),
    )
    return PairedResult(
        diff=diff,
        low=float(low),
        high=float(high),
        p_value=float(p),
        significant=bool((low > 0 or high < 0) and p < alpha),
        method_mean=float(np.mean([a.mean() for a in m])),
        baseline_mean=float(np.mean([a.mean() for a in b])),
        n_examples=n,
        n_seeds_method=len(m),
        n_seeds_baseline=len(b),
    )


def sign_flip_test(
    method: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    n_resamples: int = 9999,
    seed: int = 0,
) -> float:
    """Two-sided paired permutation p-value (random sign flips of per-example differences,
    ``scipy.stats.permutation_test``). Pass seed-averaged per-example scores: this tests the
    examples, not the seeds."""
    a = np.asarray(method, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length >= 2, got {a.shape} and {b.shape}")
    if np.all(a == b):
        return 1.0
    res = permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def mcnemar(
    method_correct: Sequence[bool] | np.ndarray, baseline_correct: Sequence[bool] | np.ndarray
) -> float:
    """Exact McNemar p-value for paired accuracy (binomial test on the discordant pairs,
    ``scipy.stats.binomtest``); 1.0 when the two never disagree."""
    a = np.asarray(method_correct)
    b = np.asarray(baseline_correct)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    for name, x in (("method_correct", a), ("baseline_correct", b)):
        if not np.all(np.isin(x, (0, 1))):
            raise ValueError(f"{name} must hold only 0/1 or booleans")
    a, b = a.astype(bool), b.astype(bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Correct p-values for testing several languages at once: ``holm`` (family-wise error,
    the default) or ``bh`` (false discovery rate, ``scipy.stats.false_discovery_control``)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("p-values must be a 1-D array of numbers in [0, 1]")
    if p.size == 0:
        return p
    if method == "bh":
        return false_discovery_control(p, method="bh")
    if method != "holm":
        raise ValueError(f"method must be 'holm' or 'bh', not {method!r}")
    order = np.argsort(p)
    m = p.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def compare_per_language(
    method: Mapping[str, Scores],
    baseline: Mapping[str, Scores],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    correction: str | None = "holm",
) -> dict[str, PairedResult]:
    """Paired bootstrap of method vs baseline in every language both arms have, with the
    p-values corrected across languages (``correction=None`` to skip). ``significant`` then
    uses the corrected p-value, so a table that marks nine languages does not find a
    difference by chance one time in twenty."""
    langs = sorted(set(method) & set(baseline))
    if not langs:
        raise ValueError(
            f"no language in common: method has {sorted(method)}, baseline has {sorted(baseline)}"
        )
    raw = {
        lang: paired_bootstrap(method[lang], baseline[lang], confidence, n_boot, seed + i)
        for i, lang in enumerate(langs)
    }
    if correction is None:
        return raw
    adj = adjust_pvalues([raw[lang].p_value for lang in langs], correction)
    alpha = 1 - confidence
    out = {}
    for lang, p in zip(langs, adj, strict=True):
        r = raw[lang]
        out[lang] = replace(
            r, p_adjusted=float(p), significant=bool((r.low > 0 or r.high < 0) and p < alpha)
        )
    return out
