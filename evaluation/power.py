"""How many test items and training seeds a comparison needs, and what a design can detect.

The model is the one the verdicts test with (:func:`evaluation.stats.contrast_test`): a run's
score on an item is ``y[s, i] = mu_m + a_i + (am)_i + b_s + e_si`` (method ``m``, training seed
``s``, item ``i``; items are shared by every method, seeds are each method's own). The
difference of two methods' means on ``n`` shared items with ``S`` seeds each has variance

    Var(D) = interaction / n  +  2 * (seed + residual / n) / S

* ``interaction``: the variance over items of the true per-item difference between two methods
  (low when the methods agree on which items are hard: a high per-item correlation);
* ``seed``: the variance of one method's run-level effect (a seed that trains better);
* ``residual``: what is left of one run's score on one item (for 0/1 scores, most of it).

With few seeds the seed term is estimated on ``2 (S - 1)`` degrees of freedom, so power comes
from the noncentral t with Welch-Satterthwaite df, capped like the test's. The pilot of the
previous report (400 items, 3 seeds, per-seed difference SD 0.061 against an item-level SE of
0.017) had power of about 0.17 for a 3-point difference; more items alone cannot fix that,
because the seed term does not shrink with ``n``: :func:`required_items` then says so (None).

:func:`estimate_components` reads the three components from scored runs (a pilot), so a plan's
``test_per_lang`` and ``seeds`` can be sized before an expensive experiment;
:func:`components_from_predictions` does it from the report's prediction rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.stats import seed_variance, t_mde, t_power

__all__ = [
    "Design",
    "VarianceComponents",
    "components_from_predictions",
    "design_table",
    "estimate_components",
    "minimal_detectable_effect",
    "power",
    "required_items",
    "required_seeds",
]


@dataclass(frozen=True)
class VarianceComponents:
    """Variance components of a paired two-method comparison (score scale, e.g. 0/1)."""

    interaction: float
    seed: float
    residual: float
    n_items: int = 0  # of the pilot they were estimated on (0: given by hand)
    n_seeds: int = 0
    agreement: float = math.nan  # share of items on which two runs of two methods agree

    def __post_init__(self) -> None:
        for name in ("interaction", "seed", "residual"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} variance must be finite and >= 0, got {v}")

    def design(self, n_items: int, n_seeds: int) -> Design:
        """Standard error and degrees of freedom of a difference of two methods' means."""
        if n_items < 2 or n_seeds < 1:
            raise ValueError(f"need >= 2 items and >= 1 seed, got {n_items} and {n_seeds}")
        item_v = self.interaction / n_items
        seed_v = 2 * (self.seed + self.residual / n_items) / n_seeds
        var = item_v + seed_v
        seed_df = 2 * (n_seeds - 1)
        if seed_df == 0:
            df = float(n_items - 1)  # the seed term is not estimable from one seed each
        else:
            denom = item_v**2 / (n_items - 1) + seed_v**2 / seed_df
            df = var**2 / denom if denom > 0 else math.inf
            if seed_v >= 0.5 * var:
                df = min(df, float(seed_df))
        return Design(n_items, n_seeds, math.sqrt(var), df)


@dataclass(frozen=True)
class Design:
    """A planned comparison: its standard error and degrees of freedom."""

    n_items: int
    n_seeds: int
    se: float
    df: float

    def power(self, effect: float, alpha: float = 0.05) -> float:
        return t_power(effect, self.se, self.df, alpha)

    def mde(self, alpha: float = 0.05, power: float = 0.8) -> float:
        return t_mde(self.se, self.df, alpha, power)


def power(
    effect: float, n_items: int, n_seeds: int, comps: VarianceComponents, alpha: float = 0.05
) -> float:
    """Probability that the two-sided test of level ``alpha`` finds a true difference
    ``effect`` between two methods with ``n_items`` shared items and ``n_seeds`` seeds each."""
    return comps.design(n_items, n_seeds).power(effect, alpha)


def minimal_detectable_effect(
    n_items: int,
    n_seeds: int,
    comps: VarianceComponents,
    alpha: float = 0.05,
    target_power: float = 0.8,
) -> float:
    """The smallest true difference found with probability ``target_power``."""
    return comps.design(n_items, n_seeds).mde(alpha, target_power)


def required_items(
    effect: float,
    n_seeds: int,
    comps: VarianceComponents,
    target_power: float = 0.8,
    alpha: float = 0.05,
    max_items: int = 1_000_000,
) -> int | None:
    """The fewest shared test items that reach ``target_power`` with ``n_seeds`` seeds per
    method; None when no number of items does (the seed term alone is too large)."""
    if power(effect, max_items, n_seeds, comps, alpha) < target_power:
        return None
    lo, hi = 2, max_items
    while lo < hi:
        mid = (lo + hi) // 2
        if power(effect, mid, n_seeds, comps, alpha) >= target_power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def required_seeds(
    effect: float,
    n_items: int,
    comps: VarianceComponents,
    target_power: float = 0.8,
    alpha: float = 0.05,
    max_seeds: int = 200,
) -> int | None:
    """The fewest seeds per method that reach ``target_power`` on ``n_items`` items; None
    when even ``max_seeds`` do not (the item term alone is too large)."""
    for s in range(1, max_seeds + 1):
        if power(effect, n_items, s, comps, alpha) >= target_power:
            return s
    return None


def design_table(
    effect: float,
    comps: VarianceComponents,
    items: Sequence[int] = (100, 200, 400, 1000, 2000, 5000),
    seeds: Sequence[int] = (1, 2, 3, 5, 8, 10),
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Power for ``effect`` and the 80%-power MDE of every (items, seeds) design."""
    rows = []
    for n, s in itertools.product(items, seeds):
        d = comps.design(n, s)
        rows.append(
            {
                "n_items": n,
                "n_seeds": s,
                "se": d.se,
                "df": d.df,
                "power": d.power(effect, alpha),
                "mde": d.mde(alpha),
            }
        )
    return pd.DataFrame(rows)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of (run of a, run of b, item) triples where the two runs score the item alike."""
    return float(np.mean(a[:, None, :] == b[None, :, :]))


def estimate_components(arms: Mapping[str, np.ndarray]) -> VarianceComponents:
    """The three components from scored runs: ``arms`` maps a method to its ``seeds x items``
    score matrix (the same items in the same column order for every method).

    ``seed`` and ``residual`` pool, over methods with >= 2 seeds, the two-way ANOVA moments of
    :func:`evaluation.stats.seed_variance` (run-mean variance minus ``MS_res / n``);
    ``interaction`` averages over method pairs the variance of the per-item difference of
    seed means minus its residual part. Each is truncated at 0."""
    mats = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in arms.items()}
    if not mats:
        raise ValueError("no arms to estimate variance components from")
    n = {m.shape[1] for m in mats.values()}
    if len(n) != 1 or min(n) < 2:
        shapes = [m.shape for m in mats.values()]
        raise ValueError(f"every arm needs the same >= 2 items, got {shapes}")
    n_items = n.pop()
    sv = {k: seed_variance(m) for k, m in mats.items()}
    multi = [k for k, m in mats.items() if m.shape[0] >= 2]
    if not multi:
        raise ValueError("the seed variance needs an arm with at least two seeds")
    dfs = np.array([sv[k].df for k in multi])
    res = float(np.average([sv[k].ms_res for k in multi], weights=dfs * (n_items - 1)))
    seed = float(
        np.average([max(0.0, sv[k].var - sv[k].ms_res / n_items) for k in multi], weights=dfs)
    )
    inter, agree = [], []
    for a, b in itertools.combinations(mats, 2):
        x, y = mats[a], mats[b]
        d = x.mean(axis=0) - y.mean(axis=0)
        r = sv[a].ms_res / x.shape[0] + sv[b].ms_res / y.shape[0]
        inter.append(max(0.0, float(d.var(ddof=1)) - r))
        agree.append(_agreement(x, y))
    return VarianceComponents(
        interaction=float(np.mean(inter)) if inter else 0.0,
        seed=seed,
        residual=res,
        n_items=n_items,
        n_seeds=int(max(m.shape[0] for m in mats.values())),
        agreement=float(np.mean(agree)) if agree else math.nan,
    )


def components_from_predictions(
    cls: pd.DataFrame,
    variant: str = "full",
    protocol: str | None = None,
    methods: Sequence[str] | None = None,
) -> VarianceComponents:
    """:func:`estimate_components` on the clean test correctness of every method (or
    ``methods``) of ``variant`` in prediction rows (the report's input frame), on the items
    every run scored."""
    from evaluation.frames import align_all, method_matrices, prepare, select

    test = select(prepare(cls), variant=variant, protocol=protocol)
    mats = method_matrices(test)
    if methods is not None:
        mats = {m: x for m, x in mats.items() if m in methods}
    mats = align_all({m: x for m, x in mats.items() if x.shape[1] > 1})
    return estimate_components({m: x.to_numpy() for m, x in mats.items()})
