"""The hybrid's gradient-aligned init (peft's LoRA-GA, shared with the ``lora_ga`` baseline) and
its λ signal: invariant to the LoRA alpha, different where gradients differ, the hard rule
choosing per layer."""

from __future__ import annotations

import pytest
import torch

from training.data import (
    Collator,
    batch_loss,
    choose_verbalizers,
    encode_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
)
from training.hybrid import HybridConfig, HybridModel
from training.methods import MethodConfig, apply_method
from training.models import build_word_tokenizer, tiny_llama

TOKENIZER = build_word_tokenizer(synthetic_texts())
RECS = split_records(synthetic_classification_records(), "train")
TASK = choose_verbalizers(sorted({r["label"] for r in RECS}), TOKENIZER)
ENC = encode_classification(RECS, TOKENIZER, TASK, max_length=48)
BATCH = Collator("classification", TOKENIZER.pad_token_id, TASK.label_token_ids)(ENC[::3][:16])


def loss_fn(model, batch):
    return batch_loss(model, batch)


def build(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model, _ = tiny_llama(tokenizer=TOKENIZER, seed=seed)
    hybrid = {"block_size": 16, **kw.pop("hybrid", {})}
    return apply_method(model, MethodConfig(name=name, hybrid=hybrid, **kw), [BATCH], loss_fn)


@pytest.mark.parametrize("direction", ["ArB2r", "random"])
def test_hybrid_lowrank_factors_are_the_lora_ga_baselines(direction):
    """Same layer, same batch: the hybrid starts from exactly peft's LoRA-GA factors."""
    peft_model = build("lora_ga", loraga_direction=direction)
    hybrid = build("hybrid", loraga_direction=direction)
    init = peft_model._govtune_lora_ga_init
    assert len(hybrid.hybrid_layers) == 8
    for name, layer in hybrid.hybrid_layers.items():
        a = init[f"base_model.model.{name}.lora_A.weight"]
        b = init[f"base_model.model.{name}.lora_B.weight"]
        assert torch.equal(layer.hybrid_A0, a) and torch.equal(layer.hybrid_B0, b), name
        assert torch.equal(layer.hybrid_A, a) and torch.equal(layer.hybrid_B, b), name
        peft_layer = peft_model.base_model.model.get_submodule(name)
        assert layer.scaling == peft_layer.scaling["default"]
    if direction == "ArB2r":  # peft's B0 = U_[r:2r] Σ_[r:2r] ς: small (the old own init's was ~1.4)
        assert max(float(layer.hybrid_B0.norm()) for layer in hybrid.hybrid_layers.values()) < 0.1


def test_the_hybrid_init_does_not_touch_the_base_weights_or_the_global_rng():
    base, _ = tiny_llama(tokenizer=TOKENIZER, seed=0)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    hybrid = apply_method(
        tiny_llama(tokenizer=TOKENIZER, seed=0)[0],
        MethodConfig(name="hybrid", hybrid={"block_size": 16, "init": "lora_ga"}),
        [BATCH],
        loss_fn,
    )
    for name, layer in hybrid.hybrid_layers.items():
        assert torch.equal(layer.base_layer.weight, base.get_submodule(name).weight)
    assert not torch.equal(torch.rand(3), expected_next)  # the wrapper itself draws (kaiming)


def test_lambda_is_invariant_to_the_lora_alpha():
    lams, live = {}, {}
    for alpha in (16.0, 4.0):
        model = build("hybrid", alpha=alpha)
        lams[alpha] = model.lambdas()
        loss_fn(model, BATCH).backward()  # the same point: the model equals the base
        live[alpha] = {n: layer.live_sensitivities() for n, layer in model.hybrid_layers.items()}
    for name in lams[16.0]:
        assert lams[4.0][name] == pytest.approx(lams[16.0][name], abs=1e-5), name
        assert live[4.0][name] == pytest.approx(live[16.0][name], rel=1e-4), name
    # the earlier signal (raw gradient norms) moved with alpha: the comparison can fail
    old = {a: build("hybrid", alpha=a, hybrid={"signal": "grad_norm"}).lambdas() for a in (16, 4)}
    assert max(abs(old[16][n] - old[4][n]) for n in old[16]) > 0.05


def _engineered_loss(targets: dict[str, torch.Tensor]):
    """A loss whose gradient with respect to each targeted weight W is exactly T: the layer
    applied to the identity gives Wᵀ, and ⟨Tᵀ, Wᵀ⟩ = ⟨T, W⟩."""

    def fn(model, batch):
        total = 0.0
        for name, t in targets.items():
            y = model.get_submodule(name)(torch.eye(t.shape[1]))
            total = total + (t.T * y).sum()
        return total

    return fn


def _engineered_targets(model) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Layer 0: rank-1 gradients (a low-rank update follows them exactly); layer 1: gradients
    W Ω with Ω block-diagonal skew (exactly the directions a block rotation moves W in)."""
    g = torch.Generator().manual_seed(3)
    targets, rotation_layers = {}, set()
    for name, module in model.named_modules():
        if not name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")):
            continue
        w = module.weight.detach()
        if ".layers.0." in name:
            u = torch.randn(w.shape[0], 1, generator=g)
            v = torch.randn(1, w.shape[1], generator=g)
            targets[name] = u @ v
        else:
            blocks = torch.randn(w.shape[1] // 16, 16, 16, generator=g)
            omega = torch.block_diag(*(blocks - blocks.transpose(-1, -2)))
            targets[name] = w @ omega
            rotation_layers.add(name)
    return targets, rotation_layers


@pytest.mark.parametrize("rule", ["grad_norm_ratio", "hard"])
def test_lambda_follows_the_gradient_and_hard_picks_each_branch_where_it_fits(rule):
    torch.manual_seed(0)
    model, _ = tiny_llama(tokenizer=TOKENIZER, seed=0)
    targets, rotation_layers = _engineered_targets(model)
    hybrid = HybridModel(model, HybridConfig(block_size=16, rule=rule))
    hybrid.initialize([None], _engineered_loss(targets))
    lams = hybrid.lambdas()
    for name, lam in lams.items():
        lr, orth = hybrid.hybrid_layers[name].last_grad_norms
        if name in rotation_layers:
            assert orth > lr, name
            assert lam == (0.0 if rule == "hard" else pytest.approx(lr / (lr + orth), abs=1e-6))
        else:
            assert lr > orth, name
            assert lam == (1.0 if rule == "hard" else pytest.approx(lr / (lr + orth), abs=1e-6))
    if rule == "hard":
        assert set(lams.values()) == {0.0, 1.0}
    else:
        assert max(lams[n] for n in rotation_layers) < 0.5
        assert min(v for n, v in lams.items() if n not in rotation_layers) > 0.7


def test_lambda_differs_across_layers_on_a_real_batch():
    lams = build("hybrid").lambdas()
    assert len(set(lams.values())) == len(lams)
    assert max(lams.values()) - min(lams.values()) > 0.01


def _weight_gradients(model) -> dict[str, torch.Tensor]:
    """G = ∂L/∂W_eff of every hybrid layer, from its input and output gradient (y = W_eff x)."""
    inputs, grads, handles = {}, {}, []
    for name, layer in model.hybrid_layers.items():
        handles.append(
            layer.register_forward_hook(
                lambda m, i, o, n=name: inputs.__setitem__(n, i[0].detach())
            )
        )
        handles.append(
            layer.register_full_backward_hook(
                lambda m, gi, go, n=name: grads.__setitem__(n, go[0].detach())
            )
        )
    loss_fn(model, BATCH).backward()
    for h in handles:
        h.remove()
    return {n: torch.einsum("...o,...i->oi", grads[n].double(), inputs[n].double()) for n in grads}


def _projection_norm(jac: torch.Tensor, g: torch.Tensor) -> float:
    """‖P G‖ with P the orthogonal projector on the column span of ``jac`` (numel(W) x p)."""
    u, s, _ = torch.linalg.svd(jac, full_matrices=False)
    u = u[:, s > s.max() * 1e-9]
    return float((u.T @ g.reshape(-1)).norm())


def _lowrank_jac(layer) -> torch.Tensor:
    """d vec(λ s B A) / d (stored low-rank tensors), by forward-mode autodiff."""
    lam, s = layer.lambda_value(), layer.scaling
    raws = [p.detach().double() for p in layer.lowrank_parameters()]

    def lowrank(*t):
        a, b = layer.lowrank_from_raw([x.float() for x in t])
        return (lam * s * b.double() @ a.double()).reshape(-1)

    jacs = torch.func.jacfwd(lowrank, tuple(range(len(raws))))(*raws)
    return torch.cat([j.reshape(j.shape[0], -1) for j in jacs], dim=1)


def _orth_jac(layer) -> torch.Tensor:
    """d vec(W Q((1-λ) S)) / d S."""
    lam = layer.lambda_value()
    w = layer.base_layer.weight.detach().double()
    eye = torch.eye(layer.in_features, dtype=torch.float64)

    def orth(p):
        return (w @ layer.rotate_input(eye, layer.rotations(1.0 - lam, p)).T).reshape(-1)

    return torch.func.jacfwd(orth)(layer.hybrid_S.detach().double()).reshape(w.numel(), -1)


@pytest.mark.parametrize(
    "kw",
    [{}, {"stiefel_lowrank": True}, {"unit_norm_lowrank": True}],
    ids=["plain", "stiefel", "unit_norm"],
)
def test_signal_is_the_gradient_projected_on_each_branchs_reachable_directions(kw):
    """ρ = ‖P_T G‖: against the span of each branch's Jacobian built by brute force (jacfwd of
    the effective weight in the stored parameters), after a few steps away from the start."""
    model = build("hybrid", hybrid={"rule": "fixed", "lambda_init": 0.4, **kw})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    for step in range(1, 4):
        loss_fn(model, BATCH).backward()
        model.refresh_lambdas(step)  # as the trainer does after every backward
        opt.step()
        opt.zero_grad()
    g_eff = _weight_gradients(model)
    for name, layer in list(model.hybrid_layers.items())[:4]:
        rho_lr, rho_orth = layer.live_sensitivities()
        assert rho_lr == pytest.approx(_projection_norm(_lowrank_jac(layer), g_eff[name]), rel=1e-3)
        assert rho_orth == pytest.approx(_projection_norm(_orth_jac(layer), g_eff[name]), rel=1e-3)
    if kw:  # a reparametrised low-rank branch scores like the plain one at the same point
        plain = build("hybrid", hybrid={"rule": "fixed", "lambda_init": 0.4}).hybrid_layers
        again = build("hybrid", hybrid={"rule": "fixed", "lambda_init": 0.4, **kw}).hybrid_layers
        for name, layer in again.items():
            assert layer.last_grad_norms == pytest.approx(plain[name].last_grad_norms, rel=1e-4)


def _merged(layer) -> torch.Tensor:
    return layer.merged_weight().double()


@pytest.mark.parametrize(
    "kw",
    [{"structure": "butterfly", "butterfly_factors": 2}, {"cayley": "neumann"}],
    ids=["butterfly", "neumann"],
)
def test_fallback_signal_is_first_order_decrease_per_unit_weight_change(kw):
    """Butterfly and Neumann rotations score ‖g‖² / ‖ΔW‖ for the step -g, checked against a
    finite difference of the merged effective weight."""
    model = build("hybrid", hybrid={"rule": "fixed", "lambda_init": 0.4, **kw})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):  # move away from the initial point
        loss_fn(model, BATCH).backward()
        opt.step()
        opt.zero_grad()
    loss_fn(model, BATCH).backward()
    for name, layer in list(model.hybrid_layers.items())[:3]:
        _, rho = layer.live_sensitivities()
        grad = layer.hybrid_S.grad.detach().clone()
        eps = 1e-2 / float(grad.norm())  # a step that moves W_eff well above fp32 rounding
        with torch.no_grad():
            layer.hybrid_S.sub_(eps * grad)
            after = _merged(layer)
            layer.hybrid_S.add_(2 * eps * grad)
            before = _merged(layer)
            layer.hybrid_S.sub_(eps * grad)
        step = float((after - before).norm()) / (2 * eps)  # central difference
        expected = float(grad.double().pow(2).sum()) / step
        assert rho == pytest.approx(expected, rel=2e-2), (name, kw)


def test_batched_refresh_scores_equal_the_per_layer_ones():
    model = build("hybrid", hybrid={"rule": "fixed", "lambda_init": 0.3})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    for step in range(1, 4):
        loss_fn(model, BATCH).backward()
        model.refresh_lambdas(step)
        opt.step()
        opt.zero_grad()
    loss_fn(model, BATCH).backward()
    batched = model._batched_orth_scores()
    assert set(batched) == set(model.hybrid_layers)
    for name, layer in model.hybrid_layers.items():
        single = layer._orth_reach(layer.hybrid_S.grad, layer.lambda_value())
        assert batched[name] == pytest.approx(single, rel=1e-9), name
        assert single > 0
