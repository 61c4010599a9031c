"""MOO solvers against closed forms and scipy, the scopes, moo_backward and the diagnostics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy.optimize import minimize, minimize_scalar
from torch import nn

from training.moo import (
    LanguageGradientCapture,
    MooConfig,
    bucket_layout,
    cagrad_coefficients,
    combine_gradients,
    conflict_heatmap,
    language_gradients,
    layer_key,
    mgda_weights,
    min_norm_two,
    moo_backward,
    pcgrad_coefficients,
    per_language_losses,
    resolve_config,
    solve_gram,
    summarize_diagnostics,
)

SOLVERS = ["pgd", "frank_wolfe"]


def _qp_reference(m: np.ndarray) -> float:
    """min w^T M w over the simplex with scipy's SLSQP (a generic QP solver)."""
    k = m.shape[0]
    scale = np.trace(m) / k
    m = m / scale  # SLSQP's tolerances are absolute
    res = minimize(
        lambda w: w @ m @ w,
        np.full(k, 1.0 / k),
        jac=lambda w: 2 * m @ w,
        bounds=[(0.0, 1.0)] * k,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
        method="SLSQP",
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    assert res.success, res.message
    return float(res.fun) * scale


# ---------------------------------------------------------------------------- MGDA


def test_two_objectives_closed_form_is_the_minimiser() -> None:
    rng = np.random.default_rng(0)
    for case in range(40):
        g1, g2 = rng.normal(size=(2, 7))
        if case % 4 == 0:
            g2 = 0.3 * g1 + 0.01 * g2  # nearly parallel: one endpoint is optimal
        w = min_norm_two(g1 @ g1, g1 @ g2, g2 @ g2)
        res = minimize_scalar(
            lambda a, g1=g1, g2=g2: np.sum((a * g1 + (1 - a) * g2) ** 2),
            bounds=(0, 1),
            method="bounded",
            options={"xatol": 1e-12},
        )
        assert w == pytest.approx(res.x, abs=1e-5)
        gram = np.array([[g1 @ g1, g1 @ g2], [g1 @ g2, g2 @ g2]])
        assert mgda_weights(gram)[0] == pytest.approx(w, abs=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_iterative_solvers_reach_the_two_objective_closed_form(solver: str) -> None:
    """Three objectives where the third duplicates the first: the min-norm point is the
    two-objective closed form, reached by the iterative solvers (not the K = 2 shortcut)."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        g1, g2 = rng.normal(size=(2, 5))
        w = min_norm_two(g1 @ g1, g1 @ g2, g2 @ g2)
        expected = w * g1 + (1 - w) * g2
        stack = np.stack([g1, g2, g1])
        got = mgda_weights(stack @ stack.T, solver=solver) @ stack
        np.testing.assert_allclose(got, expected, atol=1e-7)


@pytest.mark.parametrize("solver", SOLVERS)
def test_mgda_matches_a_generic_qp_solver(solver: str) -> None:
    rng = np.random.default_rng(2)
    for _ in range(60):
        k, d = int(rng.integers(3, 9)), int(rng.integers(2, 40))  # includes k > d (singular)
        g = rng.normal(size=(k, d)) + rng.uniform(0, 2) * rng.normal(size=d)
        m = g @ g.T
        w = mgda_weights(m, solver=solver)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
        scale = np.trace(m) / k
        assert (w @ m @ w - _qp_reference(m)) / scale <= 1e-8
        # optimality: the min-norm direction is a common descent direction, d.g_i >= |d|^2
        direction = w @ g
        assert np.all(g @ direction >= direction @ direction - 1e-8 * scale)


def test_mgda_weights_reject_bad_gram() -> None:
    with pytest.raises(ValueError, match="square"):
        mgda_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        mgda_weights(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="mgda_solver"):
        mgda_weights(np.eye(3), solver="simplex")


# ---------------------------------------------------------------------------- normalisations


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "cagrad"])
@pytest.mark.parametrize("norm", ["none", "l2", "loss"])
def test_agreeing_languages_keep_the_plain_step(method: str, norm: str) -> None:
    g = torch.randn(1, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    combined, _ = combine_gradients(g.repeat(3, 1), method, norm, losses=[1.0, 2.0, 3.0])
    # CAGrad moves c |g0| further along g and rescales by 1 / (1 + c^2), as its authors do
    if method == "cagrad" and norm == "loss":  # g/1, g/2, g/3 differ in length: same direction
        cos = torch.nn.functional.cosine_similarity(combined, g[0], dim=0)
        assert cos.item() == pytest.approx(1.0)
        return
    factor = (1 + 0.5) / (1 + 0.5**2) if method == "cagrad" else 1.0
    torch.testing.assert_close(combined, factor * g[0])


def test_l2_normalisation_ignores_gradient_scale() -> None:
    g = torch.randn(3, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scaled = g.clone()
    scaled[0] *= 50.0
    a, _ = combine_gradients(g, "mgda", "l2")
    b, _ = combine_gradients(scaled, "mgda", "l2")
    assert torch.nn.functional.cosine_similarity(a, b, dim=0).item() == pytest.approx(1.0)
    c, _ = combine_gradients(g, "mgda", "none")
    d, _ = combine_gradients(scaled, "mgda", "none")
    assert torch.nn.functional.cosine_similarity(c, d, dim=0).item() < 0.999


def test_loss_normalisation_divides_by_the_losses() -> None:
    g = np.random.default_rng(5).normal(size=(3, 6))
    losses = [0.5, 2.0, 4.0]
    sol = solve_gram(g @ g.T, "mgda", "loss", losses)
    scaled = g / np.asarray(losses)[:, None]
    w = mgda_weights(scaled @ scaled.T)
    np.testing.assert_allclose(sol.weights, w, atol=1e-9)
    alpha = w / np.asarray(losses)
    np.testing.assert_allclose(sol.alpha, alpha / alpha.sum(), atol=1e-9)
    with pytest.raises(ValueError, match="positive finite losses"):
        solve_gram(g @ g.T, "mgda", "loss", [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="one loss value per language"):
        solve_gram(g @ g.T, "mgda", "loss", None)
    with pytest.raises(ValueError, match="moo_normalization"):
        solve_gram(g @ g.T, "mgda", "l3")


# ---------------------------------------------------------------------------- PCGrad, CAGrad


def _pcgrad_vectors(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PCGrad written directly on the vectors (Yu et al., 2020, Algorithm 1)."""
    out = []
    for i in range(len(g)):
        gi = g[i].copy()
        for j in rng.permutation(len(g)):
            if j != i and gi @ g[j] < 0:
                gi -= (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return np.mean(out, axis=0)


def test_pcgrad_in_gram_space_equals_the_vector_algorithm() -> None:
    rng = np.random.default_rng(6)
    for seed in range(25):
        k, d = int(rng.integers(2, 7)), int(rng.integers(3, 20))
        g = rng.normal(size=(k, d))
        coef = pcgrad_coefficients(g @ g.T, np.random.default_rng(seed))
        np.testing.assert_allclose(coef @ g, _pcgrad_vectors(g, np.random.default_rng(seed)))


def test_pcgrad_removes_conflicts_and_leaves_agreement_alone() -> None:
    g = np.array([[1.0, 0.2], [-0.8, 1.0]])  # conflicting pair
    d = pcgrad_coefficients(g @ g.T, np.random.default_rng(0)) @ g
    assert np.all(g @ d >= -1e-12)
    agree = np.array([[1.0, 0.2], [0.5, 1.0], [0.3, 0.3]])
    coef = pcgrad_coefficients(agree @ agree.T, np.random.default_rng(0))
    np.testing.assert_allclose(coef, np.full(3, 1 / 3))


def _cagrad_primal(g: np.ndarray, c: float) -> float:
    """max_d min_i g_i.d subject to |d - g0| <= c |g0|, directly in parameter space."""
    unit = np.linalg.norm(g.mean(axis=0))
    g = g / unit  # SLSQP's tolerances are absolute
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    x0 = np.append(g0, (g @ g0).min())
    res = minimize(
        lambda x: -x[-1],
        x0,
        jac=lambda x: np.append(np.zeros(len(g0)), -1.0),
        constraints=(
            {"type": "ineq", "fun": lambda x: g @ x[:-1] - x[-1]},
            {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:-1] - g0) ** 2)},
        ),
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 2000},
    )
    assert res.success, res.message
    return float(res.x[-1]) * unit**2  # g and d both scaled by 1 / unit


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_solves_its_primal_problem(c: float) -> None:
    rng = np.random.default_rng(7)
    for _ in range(12):
        k, d = int(rng.integers(2, 6)), int(rng.integers(3, 12))
        g = rng.normal(size=(k, d)) + 0.5 * rng.normal(size=d)
        update = cagrad_coefficients(g @ g.T, c) @ g * (1 + c * c)  # undo the rescaling
        g0 = g.mean(axis=0)
        assert np.linalg.norm(update - g0) <= c * np.linalg.norm(g0) * (1 + 1e-6)
        worst = (g @ update).min()
        assert worst == pytest.approx(_cagrad_primal(g, c), rel=1e-4, abs=1e-6)


def test_cagrad_with_zero_radius_is_the_mean() -> None:
    g = np.random.default_rng(8).normal(size=(4, 5))
    np.testing.assert_allclose(cagrad_coefficients(g @ g.T, 0.0), np.full(4, 0.25))


# ---------------------------------------------------------------------------- scopes


def test_bucket_layout_is_ddps_assignment() -> None:
    rng = np.random.default_rng(9)
    for trial in range(20):
        params = [
            torch.zeros(
                int(rng.integers(1, 5000)),
                dtype=torch.float32 if rng.random() < 0.8 else torch.float64,
            )
            for _ in range(int(rng.integers(1, 30)))
        ]
        cap = float(rng.uniform(0.002, 0.05))
        caps = [cap] if trial % 2 else [cap / 4, cap]
        ours = bucket_layout(params, caps[-1], caps[0] if len(caps) == 2 else None)
        rev = list(reversed(params))
        theirs, _ = dist._compute_bucket_assignment_by_size(
            rev, [int(c * 2**20) for c in caps], [False] * len(rev)
        )
        n = len(params)
        assert ours == [[n - 1 - i for i in b] for b in theirs]


def test_layer_key_finds_transformer_blocks() -> None:
    name = "base_model.model.model.layers.11.self_attn.q_proj.lora_A.default.weight"
    assert layer_key(name) == "base_model.model.model.layers.11"
    assert layer_key("transformer.h.3.attn.c_attn.weight") == "transformer.h.3"
    assert layer_key("model.embed_tokens.weight") == "model.embed_tokens"


# ---------------------------------------------------------------------------- moo_backward

LANGS = ["de", "en", "sw"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.tanh(layer(x))
        return x


def _losses(net: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    out = {}
    for k, lang in enumerate(LANGS):
        gen = torch.Generator().manual_seed(100 * seed + k)
        x = torch.randn(5, 6, generator=gen)
        target = x @ torch.randn(6, 3, generator=gen)
        out[lang] = nn.functional.mse_loss(net(x), target)
    return out


def _flat_lang_grads(net: nn.Module, members: list[int], seed: int = 0) -> torch.Tensor:
    params = list(net.parameters())
    rows = []
    for loss in _losses(net, seed).values():
        grads = torch.autograd.grad(loss, [params[i] for i in members])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _flat_grad(net: nn.Module, members: list[int]) -> torch.Tensor:
    params = list(net.parameters())
    return torch.cat([params[i].grad.reshape(-1) for i in members])


def test_moo_none_is_the_mean_language_loss() -> None:
    net = _Net()
    moo_backward(list(net.parameters()), _losses(net), MooConfig(moo="none"))
    got = [p.grad.clone() for p in net.parameters()]
    ref = _Net()
    torch.stack(list(_losses(ref).values())).mean().backward()
    for g, r in zip(got, ref.parameters(), strict=True):
        torch.testing.assert_close(g, r.grad)


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "cagrad"])
@pytest.mark.parametrize("scope", ["global", "bucket", "layer"])
def test_scopes_combine_each_group_independently(method: str, scope: str) -> None:
    net = _Net()
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    cfg = MooConfig(moo=method, moo_scope=scope, bucket_cap_mb=700 / 2**20)
    diag = moo_backward(params, _losses(net), cfg, names=names, step=3)
    if scope == "global":
        groups = [list(range(len(params)))]
    elif scope == "bucket":
        groups = bucket_layout(params, cfg.bucket_cap_mb)
    else:
        groups = [[0, 1], [2, 3], [4, 5]]
    assert len(diag["groups"]) == len(groups) and len(groups) >= (1 if scope == "global" else 2)
    for gi, members in enumerate(groups):
        stack = _flat_lang_grads(_Net(), members)
        expected, _ = combine_gradients(stack, method, seed=0)
        if method == "pcgrad":  # the projection order is seeded per step and group
            gram = (stack.double() @ stack.double().T).numpy()
            rng = np.random.default_rng([0, 3, min(members)])
            expected = torch.as_tensor(pcgrad_coefficients(gram, rng)).float() @ stack
        torch.testing.assert_close(_flat_grad(net, members), expected, atol=1e-6, rtol=1e-5)
        rec = diag["groups"][gi]
        cos = torch.nn.functional.cosine_similarity(stack[:, None], stack[None], dim=-1)
        pairs = [(0, 1), (0, 2), (1, 2)]
        np.testing.assert_allclose(rec["cosine"], [cos[i, j].item() for i, j in pairs], atol=1e-5)
        assert rec["conflict_share"] == pytest.approx(np.mean([c < 0 for c in rec["cosine"]]))
    json.dumps(diag)  # JSON-serialisable for the metrics file


@pytest.mark.parametrize("norm", ["none", "l2"])
def test_bucket_mgda_is_a_common_descent_direction_for_the_whole_model(norm: str) -> None:
    """Each bucket's min-norm d_b satisfies d_b.g_kb >= |d_b|^2 (>= 0 once normalised), and the
    buckets partition the parameters, so summing over buckets makes the full update a descent
    direction for every language: no language's loss rises to first order."""
    net = _Net()
    params = list(net.parameters())
    cfg = MooConfig(moo="mgda", moo_scope="bucket", moo_normalization=norm, bucket_cap_mb=1e-4)
    diag = moo_backward(params, _losses(net, 2), cfg)
    assert len(diag["groups"]) >= 3
    d = torch.cat([p.grad.reshape(-1) for p in params])
    full = _flat_lang_grads(_Net(), list(range(len(params))), seed=2)
    margin = (full @ d) - (d @ d if norm == "none" else 0.0)
    assert margin.min().item() >= -1e-6
    assert any(c < 0 for g in diag["groups"] for c in g["cosine"])  # there were conflicts


def test_moo_backward_accumulates_and_buckets_are_stable() -> None:
    net = _Net()
    params = list(net.parameters())
    cfg = {"moo": "mgda", "moo_scope": "bucket", "moo_normalization": "l2", "bucket_cap_mb": 0.0007}
    first = moo_backward(params, _losses(net, 0), cfg)
    once = [p.grad.clone() for p in params]
    second = moo_backward(params, _losses(net, 1), cfg)
    assert [g["label"] for g in first["groups"]] == [g["label"] for g in second["groups"]]
    assert [g["numel"] for g in first["groups"]] == [g["numel"] for g in second["groups"]]
    fresh = _Net()
    moo_backward(list(fresh.parameters()), _losses(fresh, 1), cfg)
    for p, a, b in zip(params, once, fresh.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a + b.grad)


def test_moo_backward_rejects_bad_input() -> None:
    net = _Net()
    params = list(net.parameters())
    cfg = MooConfig()
    with pytest.raises(ValueError, match="non-empty mapping"):
        moo_backward(params, {}, cfg)
    with pytest.raises(ValueError, match="scalar"):
        moo_backward(params, {"de": torch.ones(2, requires_grad=True)}, cfg)
    with pytest.raises(ValueError, match="does not require grad"):
        moo_backward(params, {"de": torch.tensor(1.0)}, cfg)
    with pytest.raises(ValueError, match="not finite"):
        moo_backward(params, {"de": net(torch.full((1, 6), math.nan)).sum()}, cfg)
    with pytest.raises(ValueError, match="moo must be one of"):
        moo_backward(params, _losses(net), {"moo": "sgd"})
    with pytest.raises(ValueError, match="moo_scope must be one of"):
        resolve_config({"moo_scope": "tensor"})
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        resolve_config({"bucket_cap_mb": 0})
    with pytest.raises(ValueError, match="names has 2 entries"):
        moo_backward(params, _losses(net), cfg, names=["a", "b"])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad; pass only trainable"):
        moo_backward([*params, frozen.weight], _losses(net), cfg)


# ---------------------------------------------------------------------------- tiny causal LM


def test_tiny_causal_lm_per_language_losses_and_layer_labels() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (6, 10), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    langs = ["de", "en", "de", "sw", "en", "sw"]
    losses = per_language_losses(model, batch, langs)
    assert list(losses) == ["de", "en", "sw"]
    rows = torch.tensor([0, 2])
    ref = model(input_ids=ids[rows], attention_mask=torch.ones_like(ids[rows]), labels=ids[rows])
    torch.testing.assert_close(losses["de"], ref.loss)

    named = list(model.named_parameters())
    diag = moo_backward(
        [p for _, p in named],
        losses,
        {"moo": "mgda", "moo_scope": "layer"},
        names=[n for n, _ in named],
    )
    labels = [g["label"] for g in diag["groups"]]
    assert labels == [
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.norm",
        "lm_head",
    ]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in named)
    with pytest.raises(ValueError, match="languages names 5 rows"):
        per_language_losses(model, batch, langs[:5])


def _tiny_lora_lm() -> tuple[nn.Module, dict, list[str]]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], lora_dropout=0.0)
    model = get_peft_model(LlamaForCausalLM(cfg), lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the A gradients some signal
            nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 96, (6, 10), generator=torch.Generator().manual_seed(1))
    langs = ["de", "en", "de", "sw", "en", "sw"]
    return model, {"input_ids": ids}, langs


def _mixed_losses(model: nn.Module, batch: dict, langs: list[str]) -> dict[str, torch.Tensor]:
    """Per-language mean token losses from one forward over the mixed batch."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits
    tok = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).view(ids.shape[0], -1)
    return {
        lang: tok[[i for i, x in enumerate(langs) if x == lang]].mean()
        for lang in dict.fromkeys(langs)
    }


def test_one_backward_capture_equals_one_backward_per_language() -> None:
    model, batch, langs = _tiny_lora_lm()
    params = [p for p in model.parameters() if p.requires_grad]
    reference = language_gradients(params, _mixed_losses(model, batch, langs))
    capture = LanguageGradientCapture(model, params)
    with capture.recording():
        losses = _mixed_losses(model, batch, langs)
    got = capture.language_gradients(losses, langs)
    assert any(g.abs().max() > 0 for row in got for g in row)
    for row_ref, row_got in zip(reference, got, strict=True):
        for r, g in zip(row_ref, row_got, strict=True):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
            assert not g.requires_grad

    # and through moo_backward: same combined gradient as the K-backward path
    cfg = MooConfig(moo="mgda", moo_scope="bucket", bucket_cap_mb=0.002)
    with capture.recording():
        losses = _mixed_losses(model, batch, langs)
    moo_backward(params, losses, cfg, capture=capture, example_languages=langs)
    fast = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    moo_backward(params, _mixed_losses(model, batch, langs), cfg)
    for f, p in zip(fast, params, strict=True):
        torch.testing.assert_close(f, p.grad, atol=1e-6, rtol=1e-5)


def test_capture_refuses_what_it_cannot_split() -> None:
    model, batch, langs = _tiny_lora_lm()
    norm = next(p for n, p in model.named_parameters() if n.endswith("norm.weight"))
    norm.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(ValueError, match="use per_language_losses"):
        LanguageGradientCapture(model, params)
    norm.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    capture = LanguageGradientCapture(model, params)
    with pytest.raises(ValueError, match="nothing was recorded"):
        capture.language_gradients(_mixed_losses(model, batch, langs), langs)
    with capture.recording():
        losses = _mixed_losses(model, batch, langs)
    with pytest.raises(ValueError, match="no entry in losses"):
        capture.language_gradients(losses, ["de", "en", "de", "fi", "en", "sw"])
    with capture.recording():
        losses = _mixed_losses(model, batch, langs)
    with pytest.raises(ValueError, match="batch dimension must come first"):
        capture.language_gradients(losses, langs[:4])
    with pytest.raises(ValueError, match="needs example_languages"):
        moo_backward(params, losses, MooConfig(), capture=capture)


# ---------------------------------------------------------------------------- diagnostics


def _records(steps: int = 4) -> list[dict]:
    out = []
    for step in range(steps):
        net = _Net()
        names = [n for n, _ in net.named_parameters()]
        cfg = MooConfig(moo_scope="layer")
        out.append(moo_backward(list(net.parameters()), _losses(net, step), cfg, names=names))
    return out


def test_conflict_heatmap_writes_png_and_summarises(tmp_path) -> None:
    records = _records()
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps({"step": i, "moo": r}) for i, r in enumerate(records)))
    summary = conflict_heatmap(jsonl, tmp_path / "plots" / "conflicts.png")
    png = (tmp_path / "plots" / "conflicts.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert summary["steps"] == 4 and summary["labels"] == ["layers.0", "layers.1", "layers.2"]
    assert summary["pairs"] == ["de/en", "de/sw", "en/sw"]
    for row, label in enumerate(summary["labels"]):
        for p in range(3):
            vals = [g["cosine"][p] for r in records for g in r["groups"] if g["label"] == label]
            assert summary["mean_cosine"][row][p] == pytest.approx(np.mean(vals))
            assert summary["conflict_rate"][row][p] == pytest.approx(np.mean(np.less(vals, 0)))
    assert summary == {**summarize_diagnostics(records), "png": summary["png"]}
    json.dumps(summary)


def test_diagnostics_summary_rejects_unusable_input(tmp_path) -> None:
    net = _Net()
    plain = moo_backward(list(net.parameters()), _losses(net), MooConfig(moo="none"))
    with pytest.raises(ValueError, match="no MOO diagnostics"):
        summarize_diagnostics([plain])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not JSON"):
        conflict_heatmap(bad, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no diagnostics file"):
        summarize_diagnostics(tmp_path / "missing.jsonl")
