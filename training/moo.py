"""Multilingual conflict resolution: multi-objective gradient combination per parameter bucket.

Each language is one objective. Instead of following the gradient of the averaged loss, the
step follows a combination of the per-language gradients chosen by a multi-objective solver
(MGDA min-norm, PCGrad or CAGrad). Bucket-Level MOO (Hoang, Zhao, Lu, Zhang, 2026) solves that
combination locally in each *parameter bucket*, the same groups that DistributedDataParallel
all-reduces, so no full gradient vector is ever rebuilt; ``global`` (one solve over all
parameters) and ``layer`` (one solve per transformer block) are the other scopes.

Every solver here works on the K x K Gram matrix of the K language gradients of a group, and
returns coefficients ``alpha`` such that the combined gradient is ``sum_k alpha_k g_k``. A bucket
therefore costs one Gram matrix (K^2 dot products), one tiny solve and one weighted sum; the
same code runs in one process (:func:`moo_backward`) and inside the DDP communication hook
(:mod:`training.moo_ddp`). See docs/moo.md for the cost and the bytes all-reduced.

Cost of the per-language gradients, three ways (K languages; all keep K copies of the
trainable gradients):

* :func:`language_gradients`, losses from *one* forward over the mixed batch: one
  ``torch.autograd.grad`` per language, each walking the whole batch: K backward passes.
* the same, losses from :func:`per_language_losses` (each language's rows forwarded on their
  own): each backward walks only its own rows, so all K cost about one plain backward, plus
  K smaller matrix products instead of one big one per layer.
* :class:`LanguageGradientCapture`, losses from one mixed forward: one backward to the outputs
  of the layers that hold trainable weights, then each weight-gradient product split by the
  rows' language: about one plain backward. Needs every trainable parameter to be the weight
  of an ``nn.Linear`` or ``nn.Embedding`` (LoRA adapters are) and rows that do not interact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MOO_METHODS = ("none", "mgda", "pcgrad", "cagrad")
MOO_SCOPES = ("global", "bucket", "layer")
NORMALIZATIONS = ("none", "l2", "loss")
MGDA_SOLVERS = ("pgd", "frank_wolfe")
BACKENDS = ("govtune", "torchjd")

_EPS = 1e-12


@dataclass(frozen=True)
class MooConfig:
    """Settings of the gradient combination (the trainer's config may carry the same names).

    ``moo``: none (plain average of the language losses) | mgda | pcgrad | cagrad.
    ``moo_scope``: global | bucket | layer. ``moo_normalization``: none | l2 | loss, applied to
    the language gradients before solving (the step size is restored afterwards, see
    :func:`solve_gram`). ``bucket_cap_mb`` mirrors DDP's ``bucket_cap_mb`` (25 by default);
    ``first_bucket_cap_mb`` mirrors DDP's smaller first bucket (None: same cap).
    ``cagrad_c`` is CAGrad's radius. ``seed`` fixes PCGrad's random projection order.
    ``backend``: ``govtune`` (this module's solvers) or ``torchjd`` (a torchjd Gramian
    weighting, :func:`torchjd_weighting`); ``aggregator`` names the torchjd weighting
    (``upgrad``, ``mgda``, ``cagrad``, ``pcgrad``, ``dualproj``, ``imtlg``, ``alignedmtl``, ...;
    default: ``moo``).
    """

    moo: str = "mgda"
    moo_scope: str = "bucket"
    moo_normalization: str = "none"
    bucket_cap_mb: float = 25.0
    first_bucket_cap_mb: float | None = None
    cagrad_c: float = 0.5
    mgda_solver: str = "pgd"
    seed: int = 0
    backend: str = "govtune"
    aggregator: str | None = None

    def __post_init__(self) -> None:
        _check_choice("moo", self.moo, MOO_METHODS)
        _check_choice("moo_scope", self.moo_scope, MOO_SCOPES)
        _check_choice("moo_normalization", self.moo_normalization, NORMALIZATIONS)
        _check_choice("mgda_solver", self.mgda_solver, MGDA_SOLVERS)
        _check_choice("moo_backend", self.backend, BACKENDS)
        if self.backend == "torchjd" and self.moo != "none":
            torchjd_weighting(self.aggregator or self.moo, self.cagrad_c)  # fails early if unknown
        if not (isinstance(self.bucket_cap_mb, int | float) and self.bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb must be a positive number, got {self.bucket_cap_mb!r}")
        if self.first_bucket_cap_mb is not None and not self.first_bucket_cap_mb > 0:
            raise ValueError(
                f"first_bucket_cap_mb must be positive or None, got {self.first_bucket_cap_mb!r}"
            )
        if not (isinstance(self.cagrad_c, int | float) and self.cagrad_c >= 0):
            raise ValueError(f"cagrad_c must be a number >= 0, got {self.cagrad_c!r}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def resolve_config(config: Any) -> MooConfig:
    """Read the MOO settings from any object with the attribute names of :class:`MooConfig`.

    The trainer's own config (a dataclass, a Dagster ``Config``, a namespace) works as is;
    missing optional attributes take the defaults, and a bad value fails here with its name.
    """
    if isinstance(config, MooConfig):
        return config
    if isinstance(config, Mapping):
        get = config.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(config, key, default)

    defaults = MooConfig()
    seed = get("moo_seed", None)
    if seed is None:
        seed = get("seed", defaults.seed)
    return MooConfig(
        moo=get("moo", defaults.moo),
        moo_scope=get("moo_scope", defaults.moo_scope),
        moo_normalization=get("moo_normalization", defaults.moo_normalization),
        bucket_cap_mb=get("bucket_cap_mb", defaults.bucket_cap_mb),
        first_bucket_cap_mb=get("first_bucket_cap_mb", defaults.first_bucket_cap_mb),
        cagrad_c=get("cagrad_c", defaults.cagrad_c),
        mgda_solver=get("mgda_solver", defaults.mgda_solver),
        seed=int(seed),
        backend=get("moo_backend", defaults.backend),
        aggregator=get("moo_aggregator", defaults.aggregator),
    )


# --------------------------------------------------------------------------------------------
# Solvers on the Gram matrix
# --------------------------------------------------------------------------------------------


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, exact)."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    ind = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / ind > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def min_norm_two(g11: float, g12: float, g22: float) -> float:
    """Closed-form MGDA for two objectives: the weight ``w`` on the first gradient.

    ``argmin_{w in [0, 1]} |w g1 + (1 - w) g2|^2 = clip((g22 - g12) / (g11 - 2 g12 + g22), 0, 1)``.
    """
    denom = g11 - 2.0 * g12 + g22
    if denom <= _EPS * max(g11 + g22, _EPS):
        return 0.5  # identical gradients: every convex combination is the same vector
    return float(np.clip((g22 - g12) / denom, 0.0, 1.0))


def _validate_gram(gram: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(gram, torch.Tensor):
        gram = gram.detach().to("cpu", torch.float64).numpy()
    m = np.asarray(gram, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"a Gram matrix must be square and non-empty, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("the Gram matrix has NaN or inf entries (a gradient is not finite)")
    return 0.5 * (m + m.T)


def mgda_weights(
    gram: np.ndarray | torch.Tensor,
    solver: str = "pgd",
    max_iter: int = 2000,
    tol: float = 1e-10,
) -> np.ndarray:
    """MGDA: the simplex weights of the min-norm point of the convex hull of the gradients.

    Solves ``min_{w in simplex} w^T M w`` for the Gram matrix ``M``. ``solver="pgd"`` is
    accelerated projected gradient (FISTA with adaptive restart, exact simplex projection);
    ``"frank_wolfe"`` is Frank-Wolfe with exact line search as in Sener and Koltun (2018), plus
    away steps for linear convergence. Both stop when the Frank-Wolfe duality gap, an upper
    bound on the objective error, falls below ``tol`` times the mean squared gradient norm, and
    finish by solving the optimality system on the support found. Two objectives use the
    closed form.
    """
    _check_choice("mgda_solver", solver, MGDA_SOLVERS)
    m = _validate_gram(gram)
    k = m.shape[0]
    if k == 1:
        return np.ones(1)
    scale = float(np.trace(m)) / k
    if scale <= 0.0:
        return np.full(k, 1.0 / k)  # all gradients are zero
    m = m / scale
    if k == 2:
        w = min_norm_two(m[0, 0], m[0, 1], m[1, 1])
        return np.array([w, 1.0 - w])
    # start from the best pair (closed form), as Sener and Koltun do
    best, w = math.inf, np.full(k, 1.0 / k)
    for i in range(k):
        for j in range(i + 1, k):
            a = min_norm_two(m[i, i], m[i, j], m[j, j])
            cost = a * a * m[i, i] + 2 * a * (1 - a) * m[i, j] + (1 - a) ** 2 * m[j, j]
            if cost < best:
                best, w = cost, np.zeros(k)
                w[i], w[j] = a, 1.0 - a
    if solver == "frank_wolfe":
        return _mgda_frank_wolfe(m, w, max_iter, tol)
    return _mgda_pgd(m, w, max_iter, tol)


def _fw_gap(m: np.ndarray, w: np.ndarray) -> float:
    mw = m @ w
    return float(w @ mw - mw.min())


def _mgda_pgd(m: np.ndarray, w: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    lip = float(np.linalg.eigvalsh(m)[-1])
    if lip <= 0.0:
        return w
    step = 1.0 / lip
    y, t = w.copy(), 1.0
    for it in range(max_iter):
        w_next = project_simplex(y - step * (m @ y))
        if float((y - w_next) @ (w_next - w)) > 0.0:  # gradient restart (O'Donoghue, Candes)
            y, t = w.copy(), 1.0
            w_next = project_simplex(y - step * (m @ y))
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = w_next + ((t - 1.0) / t_next) * (w_next - w)
        w, t = w_next, t_next
        if it % 8 == 7:
            w = _polish(m, w)
            y = w.copy() if _fw_gap(m, w) <= tol else y
        if _fw_gap(m, w) <= tol:
            break
    return _polish(m, w)


def _polish(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Solve the KKT system on the current support exactly; keep it only if it is better."""
    support = w > 1e-9
    ones = np.ones(int(support.sum()))
    try:
        sol = np.linalg.solve(m[np.ix_(support, support)], ones)
    except np.linalg.LinAlgError:
        return w
    total = float(sol.sum())
    if not np.isfinite(total) or total <= 0.0 or np.any(sol < 0.0):
        return w
    cand = np.zeros_like(w)
    cand[support] = sol / total
    return cand if _fw_gap(m, cand) < _fw_gap(m, w) else w


def _mgda_frank_wolfe(m: np.ndarray, w: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Frank-Wolfe with away steps (linear convergence on the simplex) and exact line search."""
    for _ in range(max_iter):
        mw = m @ w
        t = int(np.argmin(mw))
        gap = float(w @ mw - mw[t])
        if gap <= tol:
            break
        support = np.nonzero(w > 0.0)[0]
        a = int(support[np.argmax(mw[support])])
        if gap >= float(mw[a] - w @ mw):  # toward step: move to vertex t
            d = -w.copy()
            d[t] += 1.0
            gamma_max = 1.0
        else:  # away step: move mass off vertex a
            d = w.copy()
            d[a] -= 1.0
            gamma_max = w[a] / (1.0 - w[a]) if w[a] < 1.0 else math.inf
        curv = float(d @ m @ d)
        if curv <= 0.0:
            break
        gamma = min(max(-float(mw @ d) / curv, 0.0), gamma_max)
        w = np.maximum(w + gamma * d, 0.0)
        w /= w.sum()
    return _polish(m, w)


def pcgrad_coefficients(gram: np.ndarray | torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """PCGrad (Yu et al., 2020) in Gram space: coefficients of the mean of projected gradients.

    Each language's gradient is projected, in a random order of the others, onto the normal
    plane of every gradient it conflicts with (negative dot product). Each projected gradient
    stays a linear combination of the originals, so the whole procedure runs on the K x K Gram
    matrix; the returned coefficients give ``mean_i g_i'`` (the mean keeps the plain step size).
    """
    m = _validate_gram(gram)
    k = m.shape[0]
    coef = np.eye(k)
    for i in range(k):
        for j in rng.permutation(k):
            if j == i or m[j, j] <= 0.0:
                continue
            dot = float(coef[i] @ m[:, j])
            if dot < 0.0:
                coef[i, j] -= dot / m[j, j]
    return coef.mean(axis=0)


def cagrad_coefficients(gram: np.ndarray | torch.Tensor, c: float = 0.5) -> np.ndarray:
    """CAGrad (Liu et al., 2021): coefficients of the conflict-averse update, rescaled by 1/(1+c^2).

    Solves the dual ``min_{w in simplex} w^T M 1/K + c |g_0| |g_w|`` with scipy's SLSQP (as the
    authors do) and returns ``(1/K + c |g_0| w / |g_w|) / (1 + c^2)``; the update then maximises
    the worst language's improvement within a ball of radius ``c |g_0|`` around the mean
    gradient ``g_0``. ``c = 0`` is the plain mean.
    """
    from scipy.optimize import minimize

    m = _validate_gram(gram)
    k = m.shape[0]
    mean = np.full(k, 1.0 / k)
    g0_sq = float(mean @ m @ mean)
    if c == 0.0 or k == 1 or g0_sq <= 0.0:
        return mean
    scale = float(np.trace(m)) / k
    ms = m / scale
    b = ms @ mean
    r = c * math.sqrt(g0_sq / scale)

    def objective(w: np.ndarray) -> float:
        return float(w @ b + r * math.sqrt(max(float(w @ ms @ w), 0.0) + 1e-16))

    def jac(w: np.ndarray) -> np.ndarray:
        return b + r * (ms @ w) / math.sqrt(max(float(w @ ms @ w), 0.0) + 1e-16)

    res = minimize(
        objective,
        mean,
        jac=jac,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=({"type": "eq", "fun": lambda w: float(w.sum() - 1.0)},),
        options={"ftol": 1e-13, "maxiter": 500},
    )
    w = project_simplex(res.x)
    gw_norm = math.sqrt(max(float(w @ m @ w), 0.0))
    if gw_norm <= _EPS:
        return mean / (1.0 + c * c)
    lam = c * math.sqrt(g0_sq) / gw_norm
    return (mean + lam * w) / (1.0 + c * c)


# torchjd aggregators that only exist as Jacobian aggregators (no Gramian weighting): they
# need the full K x n matrix and, for NashMTL, state across steps, so they do not fit a solve
# that sees one group's Gram matrix
_TORCHJD_JACOBIAN_ONLY = ("nashmtl", "config", "graddrop", "trimmedmean")


def _torchjd_key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def torchjd_weighting(name: str, cagrad_c: float = 0.5) -> Any:
    """A torchjd ``Weighting`` on the Gram matrix (``torchjd.aggregation.<Name>Weighting``),
    by case- and underscore-insensitive name: ``upgrad``, ``mgda``, ``cagrad`` (radius
    ``cagrad_c``), ``pcgrad``, ``dualproj``, ``imtlg``, ``alignedmtl``, ``mean``, ``sum``, ..."""
    try:
        import torchjd.aggregation as tja
    except ImportError as exc:  # pragma: no cover - torchjd is a dependency
        raise ImportError("moo_backend='torchjd' needs the torchjd package") from exc
    available = {
        _torchjd_key(attr[: -len("Weighting")]): getattr(tja, attr)
        for attr in dir(tja)
        if attr.endswith("Weighting") and attr != "Weighting"
    }
    key = _torchjd_key(name)
    if key in _TORCHJD_JACOBIAN_ONLY:
        raise ValueError(
            f"torchjd's {name!r} aggregates the full Jacobian (no Gramian weighting), so it cannot "
            f"run per bucket on Gram matrices; choose one of {sorted(available)}"
        )
    if key not in available:
        raise ValueError(f"unknown torchjd aggregator {name!r}; choose one of {sorted(available)}")
    cls = available[key]
    if key == "cagrad":
        return cls(c=cagrad_c)
    try:
        return cls()
    except TypeError as exc:
        raise ValueError(
            f"torchjd's {cls.__name__} needs parameters govtune does not pass ({exc}); "
            "choose another aggregator"
        ) from None


def torchjd_weights(
    gram: np.ndarray, name: str, cagrad_c: float = 0.5, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The weights a torchjd Gramian weighting gives this Gram matrix (float64, on the CPU).

    Randomised weightings (PCGrad's order, Random) draw from a torch generator seeded from
    ``rng``, so every rank of a run draws the same weights."""
    weighting = torchjd_weighting(name, cagrad_c)
    seed = int((rng if rng is not None else np.random.default_rng(0)).integers(2**62))
    g = torch.as_tensor(np.ascontiguousarray(gram), dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            w = weighting(g)
    out = w.detach().to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(out)):
        raise ValueError(f"torchjd's {name!r} returned non-finite weights {out.tolist()}")
    return out


@dataclass(frozen=True)
class Solution:
    """The outcome of one solve: ``weights`` as the solver reports them (simplex weights for
    MGDA and CAGrad, mean coefficients for PCGrad and none, all in the normalised space) and
    ``alpha``, the coefficients that multiply the raw language gradients."""

    weights: np.ndarray
    alpha: np.ndarray


def normalizers(
    gram: np.ndarray, normalization: str, losses: Sequence[float] | None = None
) -> np.ndarray:
    """The per-language divisors of a normalisation: 1, the gradient norm, or the loss."""
    _check_choice("moo_normalization", normalization, NORMALIZATIONS)
    k = gram.shape[0]
    if normalization == "none":
        return np.ones(k)
    if normalization == "l2":
        return np.sqrt(np.maximum(np.diag(gram), 0.0))
    if losses is None or len(losses) != k:
        raise ValueError("moo_normalization='loss' needs one loss value per language")
    values = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"moo_normalization='loss' needs positive finite losses, got {values.tolist()}"
        )
    return values


def solve_gram(
    gram: np.ndarray | torch.Tensor,
    method: str,
    normalization: str = "none",
    losses: Sequence[float] | None = None,
    cagrad_c: float = 0.5,
    rng: np.random.Generator | None = None,
    mgda_solver: str = "pgd",
    backend: str = "govtune",
    aggregator: str | None = None,
) -> Solution:
    """Combine K gradients known only through their Gram matrix.

    The solver sees the normalised gradients ``g_k / n_k`` and picks ``weights``; the combined
    gradient is ``sum_k alpha_k g_k`` with ``alpha`` proportional to ``weights / n`` and scaled to
    the same total as ``weights``. Normalisation thus changes which direction is taken, while
    MGDA's result stays a convex combination of the raw language gradients, like the plain
    average: when all languages agree it equals their common gradient.
    """
    _check_choice("moo", method, MOO_METHODS)
    m = _validate_gram(gram)
    k = m.shape[0]
    n = normalizers(m, normalization, losses)
    n_safe = np.where(n > _EPS, n, 1.0)
    mn = m / np.outer(n_safe, n_safe)
    if method == "none":
        beta = np.full(k, 1.0 / k)
    elif backend == "torchjd":
        beta = torchjd_weights(mn, aggregator or method, cagrad_c, rng)
    elif method == "mgda":
        beta = mgda_weights(mn, solver=mgda_solver)
    elif method == "pcgrad":
        beta = pcgrad_coefficients(mn, rng if rng is not None else np.random.default_rng(0))
    else:
        beta = cagrad_coefficients(mn, cagrad_c)
    alpha = beta / n_safe
    if normalization != "none":
        total = float(alpha.sum())
        alpha = alpha * (float(beta.sum()) / total if total > _EPS else float(n_safe.mean()))
    return Solution(weights=beta, alpha=alpha)


def combine_gradients(
    grads: torch.Tensor,
    method: str,
    normalization: str = "none",
    losses: Sequence[float] | None = None,
    cagrad_c: float = 0.5,
    seed: int = 0,
) -> tuple[torch.Tensor, Solution]:
    """Combine a stack of K flattened gradients (shape K x D) into one direction of shape D."""
    if grads.ndim != 2:
        raise ValueError(f"expected a K x D stack of gradients, got shape {tuple(grads.shape)}")
    g64 = grads.detach().to(torch.float64)
    sol = solve_gram(
        g64 @ g64.T, method, normalization, losses, cagrad_c, np.random.default_rng(seed)
    )
    alpha = torch.as_tensor(sol.alpha, dtype=grads.dtype, device=grads.device)
    return alpha @ grads.detach(), sol


# --------------------------------------------------------------------------------------------
# Scopes: buckets (as DDP groups them), layers, global
# --------------------------------------------------------------------------------------------


def bucket_layout(
    params: Sequence[torch.Tensor],
    bucket_cap_mb: float = 25.0,
    first_bucket_cap_mb: float | None = None,
) -> list[list[int]]:
    """Group parameter indices into buckets the way DistributedDataParallel does.

    DDP walks the parameters in reverse order (gradients of the last layers are ready first),
    keeps one open bucket per (dtype, device), and closes it once its size reaches the cap;
    a bucket can therefore exceed the cap by its last parameter. The layout depends only on
    the parameters' order, shapes and dtypes, so it is the same at every step.
    """
    caps = [int(bucket_cap_mb * 1024 * 1024)]
    if first_bucket_cap_mb is not None:
        caps = [int(first_bucket_cap_mb * 1024 * 1024), caps[0]]
    open_buckets: dict[tuple[torch.dtype, torch.device], tuple[list[int], int, int]] = {}
    done: list[list[int]] = []
    for idx in reversed(range(len(params))):
        p = params[idx]
        key = (p.dtype, p.device)
        members, size, cap_i = open_buckets.get(key, ([], 0, 0))
        members = [*members, idx]
        size += p.numel() * p.element_size()
        if size >= caps[min(cap_i, len(caps) - 1)]:
            done.append(members)
            open_buckets[key] = ([], 0, cap_i + 1)
        else:
            open_buckets[key] = (members, size, cap_i)
    done.extend(members for members, _, _ in open_buckets.values() if members)
    # DDP orders buckets by the earliest-walked parameter, i.e. by when they become ready
    order = {idx: pos for pos, idx in enumerate(reversed(range(len(params))))}
    return sorted(done, key=lambda b: min(order[i] for i in b))


_BLOCK_RE = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)(?:\.|$)")


def layer_key(name: str) -> str:
    """The layer a parameter belongs to: its transformer block (``...layers.3``) when the name
    has one, otherwise its module path (the name without ``.weight``/``.bias``)."""
    m = _BLOCK_RE.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_groups(num_params: int, names: Sequence[str] | None) -> list[list[int]]:
    """One group per layer (first-appearance order); without names, one per parameter."""
    if names is None:
        return [[i] for i in range(num_params)]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(layer_key(name), []).append(i)
    return list(groups.values())


def _short_labels(keys: Sequence[str]) -> list[str]:
    """Drop the dotted prefix all keys share (``base_model.model.model.``) for readable labels."""
    parts = [k.split(".") for k in keys]
    if len(parts) <= 1:
        return list(keys)
    common = 0
    while (
        all(len(p) > common + 1 for p in parts)
        and len({p[common] for p in parts}) == 1
        and not any(p[common + 1].isdigit() for p in parts)  # keep "layers" in "layers.3"
    ):
        common += 1
    return [".".join(p[common:]) for p in parts]


def short_layer_keys(names: Sequence[str]) -> list[str]:
    """Each parameter's :func:`layer_key` without the prefix all of them share."""
    keys = [layer_key(n) for n in names]
    unique = list(dict.fromkeys(keys))
    short = dict(zip(unique, _short_labels(unique), strict=True))
    return [short[k] for k in keys]


def span_label(keys: Sequence[str]) -> str:
    """``first..last`` of the (ordered, de-duplicated) layer keys of a group."""
    keys = list(dict.fromkeys(keys))
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"


def group_labels(
    groups: Sequence[Sequence[int]], scope: str, names: Sequence[str] | None
) -> list[str]:
    """Readable labels for the heat-map rows: the layers each group spans."""
    if scope == "global":
        return ["all"]
    if names is None:
        prefix = "b" if scope == "bucket" else "p"
        return [f"{prefix}{i}" for i in range(len(groups))]
    short = short_layer_keys(names)
    labels = []
    for i, members in enumerate(groups):
        span = span_label([short[j] for j in sorted(members)])
        labels.append(f"b{i} {span}" if scope == "bucket" else span)
    return labels


def scope_groups(
    params: Sequence[torch.Tensor], config: MooConfig, names: Sequence[str] | None = None
) -> list[list[int]]:
    """The parameter groups solved independently under ``config.moo_scope``."""
    if config.moo_scope == "global":
        return [list(range(len(params)))]
    if config.moo_scope == "bucket":
        return bucket_layout(params, config.bucket_cap_mb, config.first_bucket_cap_mb)
    return layer_groups(len(params), names)


# --------------------------------------------------------------------------------------------
# Per-language gradients and the backward step
# --------------------------------------------------------------------------------------------


def _check_losses(losses: Mapping[str, torch.Tensor]) -> list[str]:
    if not isinstance(losses, Mapping) or len(losses) == 0:
        raise ValueError("losses must be a non-empty mapping language -> scalar loss tensor")
    for lang, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"the loss of language {lang!r} must be a scalar tensor")
        if not loss.requires_grad:
            raise ValueError(
                f"the loss of language {lang!r} does not require grad (computed under no_grad, "
                "detached, or from frozen parameters only)"
            )
        if not torch.isfinite(loss.detach()).all():
            raise ValueError(f"the loss of language {lang!r} is not finite: {loss.item()}")
    return list(losses.keys())


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("moo_backward needs at least one trainable parameter")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(f"parameter {i} does not require grad; pass only trainable ones")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("the same parameter appears twice in params")
    return params


def language_gradients(
    params: Sequence[torch.Tensor], losses: Mapping[str, torch.Tensor]
) -> list[list[torch.Tensor]]:
    """One ``torch.autograd.grad`` per language: ``grads[k][i]`` is d loss_k / d params[i].

    The graph is retained until the last language, so losses may share one forward; unused
    parameters get zeros. Costs K backward passes over whatever graph each loss depends on
    (see the module docstring) and K copies of the trainable gradients.
    """
    params = _check_params(params)
    langs = _check_losses(losses)
    out: list[list[torch.Tensor]] = []
    for k, lang in enumerate(langs):
        grads = torch.autograd.grad(
            losses[lang], params, retain_graph=k < len(langs) - 1, allow_unused=True
        )
        out.append(
            [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        )
    return out


class LanguageGradientCapture:
    """Per-language gradients from ONE backward over a mixed batch (Linear/Embedding params).

    While :meth:`recording` is active, forward hooks keep the input and output of every
    ``nn.Linear`` / ``nn.Embedding`` that owns a trainable parameter. :meth:`language_gradients`
    then runs one ``torch.autograd.grad`` of the summed language losses with respect to those
    outputs only: autograd skips every parameter-gradient product, and the per-language
    parameter gradients are rebuilt from the output gradients of each language's rows,
    ``sum_{rows of k} delta^T x``. That splits the usual weight-gradient product by language
    (same FLOPs), so the whole step costs about one plain backward, however many languages.

    Valid when rows do not interact (causal LMs, no BatchNorm, no batch-level auxiliary loss),
    the batch dimension comes first, and each language loss depends only on its own rows.
    Parameters of other module types (norm weights, ...) are refused: use
    :func:`per_language_losses` there.
    """

    def __init__(self, model: torch.nn.Module, params: Sequence[torch.Tensor]) -> None:
        self.params = _check_params(params)
        index = {id(p): i for i, p in enumerate(self.params)}
        self._owners: dict[torch.nn.Module, dict[str, int]] = {}
        found: set[int] = set()
        for module in model.modules():
            own = {
                name: index[id(p)]
                for name, p in module.named_parameters(recurse=False)
                if id(p) in index
            }
            if not own:
                continue
            if type(module).forward not in (torch.nn.Linear.forward, torch.nn.Embedding.forward):
                continue
            if isinstance(module, torch.nn.Embedding) and (
                module.sparse or module.max_norm is not None
            ):
                continue
            self._owners[module] = own
            found.update(own.values())
        missing = [i for i in range(len(self.params)) if i not in found]
        if missing:
            names = {id(p): n for n, p in model.named_parameters()}
            bad = [names.get(id(self.params[i]), f"#{i}") for i in missing[:5]]
            raise ValueError(
                f"{len(missing)} trainable parameters are not weights of a plain nn.Linear or "
                f"nn.Embedding (e.g. {bad}); one-backward capture cannot split them by language, "
                "use per_language_losses() (one forward per language) instead"
            )
        self._records: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        self._handles: list[Any] = []

    def _hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            if not args:
                raise ValueError(
                    f"{type(module).__name__} was called with a keyword input; the capture "
                    "needs it positional"
                )
            self._records.append((module, args[0], output))

    def recording(self) -> _Recording:
        """Context manager around the forward pass whose per-language gradients are wanted."""
        return _Recording(self)

    def language_gradients(
        self, losses: Mapping[str, torch.Tensor], example_languages: Sequence[str]
    ) -> list[list[torch.Tensor]]:
        """``grads[k][i]``: gradient of the k-th loss (in ``losses`` order) for ``params[i]``;
        ``example_languages`` names the language of every row of the recorded batch."""
        langs = _check_losses(losses)
        if not self._records:
            raise ValueError("nothing was recorded: run the forward inside capture.recording()")
        known = {lang: k for k, lang in enumerate(langs)}
        unknown = sorted(set(example_languages) - set(known))
        if unknown:
            raise ValueError(f"rows of languages {unknown} have no entry in losses")
        records, self._records = self._records, []
        total = torch.stack([losses[lang].reshape(()) for lang in langs]).sum()
        deltas = torch.autograd.grad(total, [out for _, _, out in records], allow_unused=True)
        n_rows = len(example_languages)
        row_lang = torch.tensor([known[lang] for lang in example_languages])
        grads = [[torch.zeros_like(p, requires_grad=False) for p in self.params] for _ in langs]
        with torch.no_grad():
            for (module, x, out), delta in zip(records, deltas, strict=True):
                if delta is None:
                    continue
                if out.shape[0] != n_rows:
                    raise ValueError(
                        f"a recorded {type(module).__name__} saw {out.shape[0]} rows but "
                        f"example_languages names {n_rows}; the batch dimension must come first"
                    )
                x = x.detach()
                for k in range(len(langs)):
                    rows = torch.nonzero(row_lang == k).flatten().to(delta.device)
                    if rows.numel() == 0:
                        continue
                    xk, dk = x.index_select(0, rows), delta.index_select(0, rows)
                    self._add(grads[k], module, xk, dk)
        return grads

    def _add(
        self, grads: list[torch.Tensor], module: torch.nn.Module, x: torch.Tensor, d: torch.Tensor
    ) -> None:
        own = self._owners[module]
        if isinstance(module, torch.nn.Embedding):
            ids = x.reshape(-1)
            d2 = d.reshape(-1, d.shape[-1])
            if module.padding_idx is not None:
                keep = ids != module.padding_idx
                ids, d2 = ids[keep], d2[keep]
            g = grads[own["weight"]]
            g.index_add_(0, ids, d2.to(g.dtype))
            return
        d2 = d.reshape(-1, d.shape[-1])
        if "weight" in own:
            g = grads[own["weight"]]
            g.add_((d2.T @ x.reshape(-1, x.shape[-1]).to(d2.dtype)).to(g.dtype))
        if "bias" in own:
            g = grads[own["bias"]]
            g.add_(d2.sum(0).to(g.dtype))


class _Recording:
    def __init__(self, capture: LanguageGradientCapture) -> None:
        self.capture = capture

    def __enter__(self) -> LanguageGradientCapture:
        cap = self.capture
        cap._records = []
        cap._handles = [m.register_forward_hook(cap._hook) for m in cap._owners]
        return cap

    def __exit__(self, *exc: object) -> None:
        for h in self.capture._handles:
            h.remove()
        self.capture._handles = []


def group_gram(grads: Sequence[Sequence[torch.Tensor]], members: Sequence[int]) -> np.ndarray:
    """K x K Gram matrix of the language gradients restricted to the parameters ``members``,
    accumulated parameter by parameter (no flattened copy of the group)."""
    k = len(grads)
    gram = np.zeros((k, k))
    for i in members:
        stacked = torch.stack([grads[lang][i].reshape(-1) for lang in range(k)])
        gram += param_gram(stacked)
    return gram


def param_gram(stacked: torch.Tensor) -> np.ndarray:
    """K x K Gram matrix of one parameter's K x n gradient rows: a float32 matrix product (BLAS
    accumulates blockwise, so the error stays near float32 rounding of the result), returned in
    float64 for summing over parameters."""
    if stacked.dtype not in (torch.float32, torch.float64):
        stacked = stacked.float()
    return (stacked @ stacked.T).to("cpu", torch.float64).numpy()


def _pairs(langs: Sequence[str]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(langs)) for j in range(i + 1, len(langs))]


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities from a Gram matrix (0 where a gradient is zero)."""
    d = np.sqrt(np.maximum(np.diag(gram), 0.0))
    denom = np.outer(d, d)
    return np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), 0.0)


def group_diagnostics(
    gram: np.ndarray,
    sol: Solution,
    langs: Sequence[str],
    label: str,
    numel: int,
    params: Sequence[int] | None = None,
) -> dict[str, Any]:
    """JSON-ready record of one group: pairwise cosines (in ``pairs`` order), share of
    conflicting pairs (cosine < 0), gradient norms, solver weights and raw-gradient alphas;
    ``params``: the positions (in the trainable-parameter order) of the group's parameters."""
    cos = cosine_from_gram(gram)
    pair_cos = [float(cos[i, j]) for i, j in _pairs(langs)]
    extra = {"params": sorted(int(i) for i in params)} if params is not None else {}
    return {
        **extra,
        "label": label,
        "numel": int(numel),
        "cosine": [round(c, 6) for c in pair_cos],
        "conflict_share": (sum(c < 0 for c in pair_cos) / len(pair_cos)) if pair_cos else 0.0,
        "grad_norm": [float(math.sqrt(max(gram[i, i], 0.0))) for i in range(len(langs))],
        "weights": [float(w) for w in sol.weights],
        "alpha": [float(a) for a in sol.alpha],
    }


def summarize_groups(
    groups: Sequence[Mapping[str, Any]], total_gram: np.ndarray, langs: Sequence[str]
) -> dict[str, Any]:
    """Step-level summary: numel-weighted conflict share, the worst pair, the global cosines."""
    numel = sum(g["numel"] for g in groups) or 1
    share = sum(g["conflict_share"] * g["numel"] for g in groups) / numel
    cos = cosine_from_gram(total_gram)
    pair_names = [f"{langs[i]}/{langs[j]}" for i, j in _pairs(langs)]
    all_cos = [c for g in groups for c in g["cosine"]]
    return {
        "conflict_share": float(share),
        "min_cosine": float(min(all_cos)) if all_cos else 1.0,
        "global_cosine": [round(float(cos[i, j]), 6) for i, j in _pairs(langs)],
        "pairs": pair_names,
    }


def solve_group(
    gram: np.ndarray, cfg: MooConfig, losses: Sequence[float], step: int, group_key: int
) -> Solution:
    """:func:`solve_gram` with the config's settings; PCGrad's order is seeded by
    (seed, step, the group's first parameter index), so every process draws the same order."""
    return solve_gram(
        gram,
        cfg.moo,
        cfg.moo_normalization,
        losses,
        cfg.cagrad_c,
        np.random.default_rng([cfg.seed, step, group_key]),
        cfg.mgda_solver,
        cfg.backend,
        cfg.aggregator,
    )


def moo_backward(
    params: Sequence[torch.nn.Parameter],
    losses: Mapping[str, torch.Tensor],
    config: Any,
    *,
    names: Sequence[str] | None = None,
    step: int = 0,
    capture: LanguageGradientCapture | None = None,
    example_languages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Backward step that combines the per-language gradients per scope and adds the result
    to ``p.grad`` (like ``loss.backward()``, so gradient accumulation still works).

    ``config`` is anything :func:`resolve_config` reads. ``names`` (same order as ``params``)
    gives the ``layer`` scope its transformer blocks and the diagnostics readable labels;
    ``step`` seeds PCGrad's projection order. ``moo="none"`` is one backward of the mean
    language loss. The per-language gradients come from one ``autograd.grad`` per language,
    or, given a :class:`LanguageGradientCapture` that recorded the forward and the language
    of every row (``example_languages``), from one backward in all. Returns JSON-serialisable
    diagnostics: languages, losses, and per group the pairwise cosines, share of conflicting
    pairs, weights and alphas.
    """
    cfg = resolve_config(config)
    params = _check_params(params)
    langs = _check_losses(losses)
    if names is not None and len(names) != len(params):
        raise ValueError(f"names has {len(names)} entries but params has {len(params)}")
    loss_values = [float(losses[lang].detach()) for lang in langs]
    base = {
        "method": cfg.moo,
        "scope": cfg.moo_scope,
        "normalization": cfg.moo_normalization,
        "languages": langs,
        "losses": loss_values,
        "step": int(step),
    }
    if cfg.moo == "none":
        total = torch.stack([losses[lang].reshape(()) for lang in langs]).mean()
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                _accumulate(p, g)
        return {**base, "groups": []}

    if capture is not None:
        if example_languages is None:
            raise ValueError("capture needs example_languages, the language of every row")
        if [id(p) for p in capture.params] != [id(p) for p in params]:
            raise ValueError("capture was built for different params")
        grads = capture.language_gradients(losses, example_languages)
    else:
        grads = language_gradients(params, dict(losses))
    return apply_language_gradients(
        params, grads, cfg, languages=langs, losses=loss_values, names=names, step=step
    )


def apply_language_gradients(
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[Sequence[torch.Tensor]],
    config: Any,
    *,
    languages: Sequence[str],
    losses: Sequence[float],
    names: Sequence[str] | None = None,
    step: int = 0,
) -> dict[str, Any]:
    """Solve every scope group on the given language gradients and add the combination to
    ``p.grad``; returns :func:`moo_backward`'s diagnostics.

    ``grads[k][i]`` is language ``k``'s gradient of ``params[i]`` (e.g. accumulated over the
    micro-batches of a step, so that the solve runs once per optimiser step); ``losses`` are
    the K loss values (diagnostics, ``loss`` normalisation).
    """
    cfg = resolve_config(config)
    params = list(params)
    langs = list(languages)
    k = len(langs)
    if len(grads) != k or any(len(g) != len(params) for g in grads):
        raise ValueError(f"grads must be {k} lists of {len(params)} tensors")
    loss_values = [float(v) for v in losses]
    base = {
        "method": cfg.moo,
        "scope": cfg.moo_scope,
        "normalization": cfg.moo_normalization,
        "languages": langs,
        "losses": loss_values,
        "step": int(step),
    }
    if cfg.backend != "govtune":
        base["backend"] = cfg.backend
        base["aggregator"] = cfg.aggregator or cfg.moo
    groups = scope_groups(params, cfg, names)
    labels = group_labels(groups, cfg.moo_scope, names)
    grams = group_grams(grads, groups)
    total_gram = np.zeros((k, k))
    records = []
    for gi, members in enumerate(groups):
        gram = grams[gi]
        check_finite_gram(gram, langs)
        total_gram += gram
        sol = solve_group(gram, cfg, loss_values, step, min(members))
        alpha = [float(a) for a in sol.alpha]
        for i in members:
            combined = grads[0][i].mul(alpha[0])
            for lang in range(1, k):
                combined.add_(grads[lang][i], alpha=alpha[lang])
            _accumulate(params[i], combined)
        numel = sum(params[i].numel() for i in members)
        records.append(group_diagnostics(gram, sol, langs, labels[gi], numel, members))
    return {**base, **summarize_groups(records, total_gram, langs), "groups": records}


def group_grams(
    grads: Sequence[Sequence[torch.Tensor]], groups: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """The K x K Gram matrix of every group, with one device-to-host copy for all of them:
    each parameter's K x K block is computed where the gradients live, the blocks are summed
    per group on the device, and the stack of group matrices comes back at once (no host
    synchronisation per parameter)."""
    k = len(grads)
    if not groups:
        return []
    blocks = []
    for members in groups:
        acc = None
        for i in members:
            stacked = torch.stack([grads[lang][i].reshape(-1) for lang in range(k)])
            if stacked.dtype not in (torch.float32, torch.float64):
                stacked = stacked.float()
            g = (stacked @ stacked.T).to(torch.float64)
            acc = g if acc is None else acc + g
        blocks.append(acc)
    return list(torch.stack(blocks).cpu().numpy())


def check_finite_gram(gram: np.ndarray, langs: Sequence[str]) -> None:
    """A NaN or inf anywhere in a gradient reaches the diagonal of its Gram matrix."""
    bad = [lang for lang, v in zip(langs, np.diag(gram), strict=True) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"the gradient of language(s) {bad} has NaN or inf entries")


def _accumulate(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach()
    else:
        p.grad.add_(g.detach())


def per_language_losses(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    languages: Sequence[str],
    loss_fn: Any = None,
) -> dict[str, torch.Tensor]:
    """Forward each language's rows of a mixed batch on their own and return their losses.

    This is the cheap way to get per-language gradients: each loss's graph covers only its
    own examples, so the K backward passes of :func:`moo_backward` cost about one plain
    backward. ``languages`` names the language of every row; ``loss_fn(model, sub_batch)``
    defaults to ``model(**sub_batch).loss`` (Hugging Face models with ``labels``).
    """
    langs = list(languages)
    sizes = {key: v.shape[0] for key, v in batch.items() if isinstance(v, torch.Tensor)}
    if not sizes:
        raise ValueError("the batch has no tensors")
    bad = {key: n for key, n in sizes.items() if n != len(langs)}
    if bad:
        raise ValueError(f"languages names {len(langs)} rows but these batch tensors differ: {bad}")
    out: dict[str, torch.Tensor] = {}
    for lang in dict.fromkeys(langs):
        rows = torch.tensor([i for i, x in enumerate(langs) if x == lang], dtype=torch.long)
        sub = {
            key: v.index_select(0, rows.to(v.device)) if isinstance(v, torch.Tensor) else v
            for key, v in batch.items()
        }
        loss = loss_fn(model, sub) if loss_fn is not None else model(**sub).loss
        out[lang] = loss
    return out


# --------------------------------------------------------------------------------------------
# Diagnostics over steps: summary and heat-map
# --------------------------------------------------------------------------------------------


def _load_records(records: Iterable[Mapping[str, Any]] | str | Path) -> list[Mapping[str, Any]]:
    if isinstance(records, str | Path):
        path = Path(records)
        if not path.exists():
            raise ValueError(f"no diagnostics file at {path}")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n} is not JSON: {exc.msg}") from None
        records = rows
    out = []
    for r in records:
        if not isinstance(r, Mapping):
            continue
        d = r.get("moo", r)  # a metrics line may nest the diagnostics under "moo"
        if isinstance(d, Mapping) and d.get("groups"):
            out.append(d)
    return out


def summarize_diagnostics(records: Iterable[Mapping[str, Any]] | str | Path) -> dict[str, Any]:
    """Aggregate per-step diagnostics (dicts, metrics lines with a ``moo`` key, or a JSONL path)
    into per-(group, pair) mean cosine and conflict frequency, for Dagster metadata."""
    recs = _load_records(records)
    if not recs:
        raise ValueError("no MOO diagnostics with groups found (was moo='none'?)")
    pairs = list(recs[0]["pairs"])
    langs = list(recs[0]["languages"])
    labels: list[str] = []
    sums: dict[tuple[str, int], list[float]] = {}
    weights: dict[str, list[float]] = {lang: [] for lang in langs}
    for r in recs:
        if list(r["pairs"]) != pairs:
            raise ValueError("diagnostics mix different language sets; summarise them separately")
        for g in r["groups"]:
            if g["label"] not in labels:
                labels.append(g["label"])
            for p, c in enumerate(g["cosine"]):
                sums.setdefault((g["label"], p), []).append(float(c))
            for lang, w in zip(langs, g["weights"], strict=True):
                weights[lang].append(float(w))
    mean_cos = np.full((len(labels), len(pairs)), np.nan)
    conflict = np.full((len(labels), len(pairs)), np.nan)
    for (label, p), vals in sums.items():
        row = labels.index(label)
        mean_cos[row, p] = float(np.mean(vals))
        conflict[row, p] = float(np.mean(np.asarray(vals) < 0))
    worst = np.unravel_index(np.nanargmin(mean_cos), mean_cos.shape)
    return {
        "steps": len(recs),
        "method": recs[0].get("method"),
        "scope": recs[0].get("scope"),
        "labels": labels,
        "pairs": pairs,
        "mean_cosine": mean_cos.tolist(),
        "conflict_rate": conflict.tolist(),
        "mean_conflict_share": float(np.mean([r["conflict_share"] for r in recs])),
        "pair_mean_cosine": dict(zip(pairs, np.nanmean(mean_cos, axis=0).tolist(), strict=True)),
        "mean_weight": {lang: float(np.mean(v)) for lang, v in weights.items()},
        "most_conflicting": {
            "group": labels[worst[0]],
            "pair": pairs[worst[1]],
            "mean_cosine": float(mean_cos[worst]),
        },
    }


def conflict_heatmap(
    diagnostics_records: Iterable[Mapping[str, Any]] | str | Path, out_png: str | Path
) -> dict[str, Any]:
    """Draw the conflict heat-map (groups x language pairs) to ``out_png`` and return the summary.

    Left: mean cosine between language gradients (red = conflict); right: share of steps in
    which the pair conflicted. Uses matplotlib's Agg backend, so it works headless.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_diagnostics(diagnostics_records)
    labels, pairs = summary["labels"], summary["pairs"]
    mean_cos = np.asarray(summary["mean_cosine"], dtype=float)
    rate = np.asarray(summary["conflict_rate"], dtype=float)
    height = max(3.0, 0.28 * len(labels) + 1.6)
    width = max(6.0, 1.1 * len(pairs) * 2 + 3.0)
    fig, axes = plt.subplots(1, 2, figsize=(width, height), constrained_layout=True)
    # a symmetric colour range around 0 that fits the data: LoRA gradients of different
    # languages are often nearly orthogonal, and a fixed -1..1 range would show them all white
    lim = float(np.nanmax(np.abs(mean_cos))) if np.isfinite(mean_cos).any() else 1.0
    lim = min(1.0, max(0.05, lim))
    panels = (
        (mean_cos, "RdBu", -lim, lim, "mean cosine (red: conflict)", "{:+.2f}"),
        (rate, "Reds", 0.0, 1.0, "share of steps in conflict", "{:.2f}"),
    )
    annotate = len(labels) * len(pairs) <= 240
    for ax, (data, cmap, vmin, vmax, title, fmt) in zip(axes, panels, strict=True):
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(pairs)), pairs, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
        if annotate:
            for (r, c), v in np.ndenumerate(data):
                if np.isfinite(v):
                    dark = abs(v) / max(abs(vmin), vmax) > 0.6
                    color = "white" if dark else "black"
                    ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=6, color=color)
    fig.suptitle(
        f"{summary['method']} / {summary['scope']}: gradient conflicts over "
        f"{summary['steps']} steps",
        fontsize=10,
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {**summary, "png": str(out)}
