"""torchjd as a second MOO backend: our solvers against torchjd's weightings on random Gramians,
where the definitions match, and the backend in the bucket pipeline against torchjd's own
``autojac.backward`` + ``jac_to_grad`` run group by group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchjd")

from torchjd.aggregation import (  # noqa: E402
    CAGradWeighting,
    MGDAWeighting,
    PCGradWeighting,
    UPGrad,
)
from torchjd.autojac import backward as jd_backward  # noqa: E402
from torchjd.autojac import jac_to_grad  # noqa: E402

from training.moo import (  # noqa: E402
    MooConfig,
    bucket_layout,
    cagrad_coefficients,
    mgda_weights,
    moo_backward,
    pcgrad_coefficients,
    solve_gram,
    torchjd_weighting,
)


def _grams(seed: int, count: int = 30):
    rng = np.random.default_rng(seed)
    for case in range(count):
        k = 2 + case % 4
        g = rng.normal(size=(k, 12))
        if case % 5 == 0:
            g[1] = -0.7 * g[0] + 0.05 * g[1]  # strong conflict
        yield g @ g.T


def _objective(m: np.ndarray, w: np.ndarray) -> float:
    return float(w @ m @ w)


def test_mgda_agrees_with_torchjd() -> None:
    """Same problem (the min-norm point of the convex hull). torchjd runs plain Frank-Wolfe
    (Sener and Koltun's Algorithm 2), which converges sublinearly; ours adds away steps and an
    exact solve on the support. With a tight tolerance torchjd comes within 1e-4 (of the mean
    squared gradient norm) of our objective; its default (stop once the step is below 1e-3)
    can stop early on strongly conflicting gradients (up to ~2.5x our objective here);
    neither goes below ours."""
    for m in _grams(0, 12):  # 12 cases: three of them strongly conflicting
        ours = mgda_weights(m)
        tight = MGDAWeighting(epsilon=1e-12, max_iters=20_000)(torch.from_numpy(m)).numpy()
        default = MGDAWeighting()(torch.from_numpy(m)).numpy()
        best = _objective(m, ours)
        scale = np.trace(m) / len(m)
        floor = best - 1e-9 * scale
        assert floor <= _objective(m, tight) <= best + 1e-4 * scale
        assert floor <= _objective(m, default)
        assert tight == pytest.approx(ours, abs=0.05)


def test_cagrad_agrees_with_torchjd_up_to_the_documented_rescaling() -> None:
    """torchjd returns 1/K + lambda w without the official code's 1/(1 + c^2) rescale, which
    ours applies (docs/moo.md): ours x (1 + c^2) = torchjd's."""
    for c in (0.25, 0.5, 0.9):
        for m in _grams(1, 12):
            ours = cagrad_coefficients(m, c) * (1 + c * c)
            theirs = CAGradWeighting(c=c)(torch.from_numpy(m)).numpy()
            d_ours, d_theirs = ours @ m @ ours, theirs @ m @ theirs
            assert d_theirs == pytest.approx(d_ours, rel=1e-3)
            assert theirs == pytest.approx(ours, abs=2e-3 * max(1.0, np.abs(ours).max()))


def test_pcgrad_agrees_with_torchjd_where_the_order_does_not_matter() -> None:
    """torchjd sums the projected gradients (ours averages them: the plain step size) and draws
    its projection order from torch's global RNG: with two languages, or without conflicts,
    the order is irrelevant and the two agree up to the factor K."""
    rng = np.random.default_rng(0)
    for m in _grams(2):
        k = len(m)
        if k == 2 or np.all(m >= 0):
            ours = pcgrad_coefficients(m, rng) * k
            theirs = PCGradWeighting()(torch.from_numpy(m)).numpy()
            assert theirs == pytest.approx(ours, abs=1e-9 * np.abs(ours).max())
    agree = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]])
    assert pcgrad_coefficients(agree, rng) * 3 == pytest.approx(
        PCGradWeighting()(torch.from_numpy(agree)).numpy()
    )


def test_solve_gram_with_the_torchjd_backend_is_torchjd() -> None:
    for m in _grams(3, 10):
        sol = solve_gram(m, "mgda", backend="torchjd", aggregator="upgrad")
        want = torchjd_weighting("upgrad")(torch.from_numpy(m)).numpy()
        assert sol.alpha == pytest.approx(want)
    # randomised weightings are seeded: every rank draws the same
    m = next(_grams(4, 1))
    a = solve_gram(m, "pcgrad", backend="torchjd", rng=np.random.default_rng([0, 5, 1]))
    b = solve_gram(m, "pcgrad", backend="torchjd", rng=np.random.default_rng([0, 5, 1]))
    assert np.array_equal(a.alpha, b.alpha)


def test_unknown_or_jacobian_only_torchjd_aggregators_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown torchjd aggregator 'adam'"):
        MooConfig(moo="mgda", backend="torchjd", aggregator="adam")
    with pytest.raises(ValueError, match="NashMTL.*full Jacobian|full Jacobian"):
        MooConfig(moo="mgda", backend="torchjd", aggregator="nash_mtl")
    with pytest.raises(ValueError, match="moo_backend must be one of"):
        MooConfig(moo="mgda", backend="jax")
    assert type(torchjd_weighting("Aligned_MTL")).__name__ == "AlignedMTLWeighting"


def test_bucket_pipeline_with_torchjd_matches_jac_to_grad_group_by_group() -> None:
    """Our bucket scope with backend torchjd (UPGrad) against torchjd's own route: per-language
    Jacobians with ``autojac.backward``, then ``jac_to_grad(bucket_params, UPGrad())`` for each
    bucket, which is the bucket-level idea done in torchjd."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    params = list(model.parameters())
    cap = 1100 / 2**20
    buckets = bucket_layout(params, cap)
    assert len(buckets) > 1
    x = torch.randn(3, 5, 6)
    targets = torch.randn(3, 5, 3) * torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1)

    def losses():
        return {f"l{k}": nn.functional.mse_loss(model(x[k]), targets[k]) for k in range(3)}

    cfg = MooConfig(moo="mgda", moo_scope="bucket", bucket_cap_mb=cap, backend="torchjd",
                    aggregator="upgrad")  # fmt: skip
    diag = moo_backward(params, losses(), cfg)
    ours = [p.grad.clone() for p in params]
    assert diag["backend"] == "torchjd" and diag["aggregator"] == "upgrad"
    for p in params:
        p.grad = None
    jd_backward(list(losses().values()), inputs=params)
    for members in buckets:
        jac_to_grad([params[i] for i in members], UPGrad())
    for a, p in zip(ours, params, strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-5)
