"""The hybrid adapter: initialisation, mixing rules, orthogonality, constraints, persistence."""

from __future__ import annotations

import pytest
import torch

from training.constraints import grad_norm_stats, max_orthogonality_error, orthogonality_errors
from training.data import (
    Collator,
    batch_loss,
    choose_verbalizers,
    encode_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
)
from training.hybrid import HybridConfig, HybridLinear, HybridModel
from training.models import build_word_tokenizer, tiny_llama

TOKENIZER = build_word_tokenizer(synthetic_texts())
RECS = split_records(synthetic_classification_records(), "train")
TASK = choose_verbalizers(sorted({r["label"] for r in RECS}), TOKENIZER)
ENC = encode_classification(RECS, TOKENIZER, TASK, max_length=48)
COLLATE = Collator("classification", TOKENIZER.pad_token_id, TASK.label_token_ids)
BATCH = COLLATE(ENC[::3][:16])
INPUTS = {k: BATCH[k] for k in ("input_ids", "attention_mask", "position_ids")}


def loss_fn(model, batch):
    return batch_loss(model, batch)


def hybrid(seed: int = 0, **kw) -> HybridModel:
    torch.manual_seed(seed)
    model, _ = tiny_llama(tokenizer=TOKENIZER, seed=seed)
    wrapped = HybridModel(model, HybridConfig(block_size=16, **kw))
    wrapped.initialize([BATCH], loss_fn)
    return wrapped


def train(model: HybridModel, steps: int = 15, lr: float = 3e-2) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = batch_loss(model, BATCH)
        loss.backward()
        model.refresh_lambdas(step)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("rule", ["fixed", "grad_norm_ratio", "learned", "hard"])
def test_the_adapted_model_starts_equal_to_the_base(rule):
    base, _ = tiny_llama(tokenizer=TOKENIZER, seed=0)
    with torch.no_grad():
        expected = base(**INPUTS).logits
    model = hybrid(rule=rule)
    a0 = next(iter(model.hybrid_layers.values())).hybrid_A0
    assert a0.abs().sum() > 0, "LoRA-GA init must give non-zero A0"
    with torch.no_grad():
        got = model(**INPUTS).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize(
    "kw",
    [{}, {"structure": "butterfly", "butterfly_factors": 2}, {"unit_norm_lowrank": True}],
    ids=["block", "butterfly", "unit_norm"],
)
def test_initial_sensitivities_match_real_gradients(kw):
    """ρ from the gradient-estimation surrogate equals the unmixed autograd gradient norms."""
    model = hybrid(rule="fixed", lambda_init=0.3, **kw)
    init = {n: layer.last_grad_norms for n, layer in model.hybrid_layers.items()}
    loss_fn(model, BATCH).backward()
    for name, layer in model.hybrid_layers.items():
        live = layer.live_sensitivities("l2")
        assert live is not None
        assert live == pytest.approx(init[name], rel=1e-3), name


def test_grad_norm_ratio_refreshes_every_k_steps_with_ema_and_bounds():
    model = hybrid(rule="grad_norm_ratio", refresh_every=3, ema=0.5, lambda_min=0.2, lambda_max=0.8)
    start = model.lambdas()
    assert all(0.2 <= v <= 0.8 for v in start.values())
    history_len = len(model.lambda_history)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    seen = []
    for step in range(1, 7):
        loss_fn(model, BATCH).backward()
        before = model.lambdas()
        rec = model.refresh_lambdas(step)
        after = model.lambdas()
        if step % 3:
            assert rec is None and after == before
        else:
            assert rec is not None and rec["step"] == step
            assert set(rec["lambdas"]) == set(model.hybrid_layers)
            for n, layer in model.hybrid_layers.items():
                lr, orth = layer.last_grad_norms
                target = min(max(lr / (lr + orth), 0.2), 0.8)
                assert after[n] == pytest.approx(0.5 * before[n] + 0.5 * target, abs=1e-5)
            seen.append(step)
        opt.step()
        opt.zero_grad()
    assert seen == [3, 6]
    assert len(model.lambda_history) == history_len + 2


def test_learned_rule_trains_lambda_and_fixed_keeps_it():
    learned = hybrid(rule="learned", lambda_init=0.5)
    train(learned, steps=8)
    assert any(abs(v - 0.5) > 1e-3 for v in learned.lambdas().values())
    fixed = hybrid(rule="fixed", lambda_init=0.25)
    train(fixed, steps=4)
    assert set(fixed.lambdas().values()) == {0.25}


def test_hard_allocation_uses_one_branch_per_layer_and_freezes_the_other():
    model = hybrid(rule="hard", hard_lowrank_fraction=0.5)
    lams = model.lambdas()
    assert sorted(set(lams.values())) == [0.0, 1.0]
    assert sum(v == 1.0 for v in lams.values()) == len(lams) // 2
    for layer in model.hybrid_layers.values():
        if layer.lambda_value() == 1.0:
            assert not layer.hybrid_S.requires_grad and layer.hybrid_B.requires_grad
        else:
            assert layer.hybrid_S.requires_grad and not layer.hybrid_B.requires_grad
    losses = train(model, steps=10)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kw",
    [
        {"cayley": "exact"},
        {"cayley": "exact", "structure": "butterfly", "butterfly_factors": 2},
        {"exact_orthogonality": True, "unit_norm_lowrank": True, "cayley": "neumann"},
    ],
    ids=["block", "butterfly", "unitary"],
)
def test_orthogonality_holds_after_training(kw):
    model = hybrid(**kw)
    losses = train(model, steps=15, lr=5e-2)
    assert losses[-1] < losses[0]
    assert max_orthogonality_error(model, unitary_only=True) < 1e-4
    for layer in model.hybrid_layers.values():
        q = layer.orthogonal_matrix().double()
        eye = torch.eye(q.shape[0], dtype=torch.float64)
        assert torch.linalg.matrix_norm(q.T @ q - eye) < 1e-4
        assert (q - eye).abs().max() > 1e-3, "training must have moved the rotation"


def test_neumann_series_is_only_approximately_orthogonal():
    model = hybrid(cayley="neumann", neumann_terms=3)
    layer = next(iter(model.hybrid_layers.values()))
    with torch.no_grad():
        layer.hybrid_S.normal_(0, 0.3)
    assert orthogonality_errors(model)[layer.name] > 1e-3
    layer.cayley = "exact"
    assert orthogonality_errors(model)[layer.name] < 1e-4


def test_butterfly_mixes_across_blocks_and_block_does_not():
    block = hybrid(structure="block")
    fly = hybrid(structure="butterfly", butterfly_factors=2)
    for model in (block, fly):
        for layer in model.hybrid_layers.values():
            with torch.no_grad():
                layer.hybrid_S.normal_(0, 0.2)
    qb = next(iter(block.hybrid_layers.values())).orthogonal_matrix()
    qf = next(iter(fly.hybrid_layers.values())).orthogonal_matrix()
    b = 16
    off_block = torch.ones_like(qb, dtype=torch.bool)
    for k in range(qb.shape[0] // b):
        off_block[k * b : (k + 1) * b, k * b : (k + 1) * b] = False
    assert qb[off_block].abs().max() == 0
    assert qf[off_block].abs().max() > 1e-3


def test_unit_norm_rows_and_dense_orthogonal_square_projection():
    model = hybrid(
        unit_norm_lowrank=True, exact_orthogonality=True, dense_orthogonal_modules=["o_proj"]
    )
    train(model, steps=10, lr=5e-2)
    for name, layer in model.hybrid_layers.items():
        norms = layer.hybrid_A.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        if name.endswith("o_proj"):
            q = layer.dense_rotation.weight.double()
            assert (
                torch.linalg.matrix_norm(q.T @ q - torch.eye(q.shape[0], dtype=torch.float64))
                < 1e-4
            )
            assert (q - torch.eye(q.shape[0])).abs().max() > 1e-4
        else:
            assert layer.dense_rotation is None


def test_dense_orthogonal_needs_a_square_projection():
    model, _ = tiny_llama(tokenizer=TOKENIZER, seed=0, num_heads=4)
    # a non-square projection: make v_proj 64 -> 32 by using grouped KV heads
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**model.config.to_dict(), "num_key_value_heads": 2})
    gqa = LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match="needs a square projection, this one is 32x64"):
        HybridModel(gqa, HybridConfig(block_size=16, dense_orthogonal_modules=["v_proj"]))


def test_save_load_and_merge_reproduce_the_trained_model(tmp_path):
    model = hybrid(rule="learned", unit_norm_lowrank=True, exact_orthogonality=True)
    train(model, steps=6)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**INPUTS).logits
    base, _ = tiny_llama(tokenizer=TOKENIZER, seed=0)
    loaded = HybridModel.from_pretrained(base, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**INPUTS).logits, expected)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, HybridLinear) for m in merged.modules())
    with torch.no_grad():
        assert torch.allclose(merged(**INPUTS).logits, expected, atol=1e-5)


def test_input_and_weight_application_agree():
    model = hybrid()
    train(model, steps=4)
    outs = []
    for mode in ("input", "weight"):
        for layer in model.hybrid_layers.values():
            layer.apply_to = mode
        with torch.no_grad():
            outs.append(model(**INPUTS).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_grad_norm_stats_are_per_layer():
    model = hybrid()
    loss_fn(model, BATCH).backward()
    stats = grad_norm_stats(model)
    assert set(stats["per_layer"]) == {"0", "1"}
    assert stats["min"] <= stats["mean"] <= stats["max"] and stats["cv"] >= 0


def test_bad_hybrid_configs_fail_clearly():
    with pytest.raises(ValueError, match="rule='ratio' is not one of"):
        HybridConfig(rule="ratio").validate()
    with pytest.raises(ValueError, match="lambda_min < lambda_max"):
        HybridConfig(lambda_min=0.9, lambda_max=0.1).validate()
    with pytest.raises(ValueError, match="unknown hybrid config keys"):
        HybridConfig.from_dict({"rank": 4})
    model, _ = tiny_llama(tokenizer=TOKENIZER, seed=0)
    with pytest.raises(ValueError, match="needs grad_batches"):
        HybridModel(model, HybridConfig(block_size=16)).initialize(None)


def test_batched_rotations_equal_per_layer_rotations():
    model = hybrid(rule="learned", exact_orthogonality=True, unitary_layers=[0], cayley="neumann")
    train(model, steps=3)
    results = []
    for batched in (True, False):
        model.batch_rotations = batched
        model.zero_grad()
        loss = loss_fn(model, BATCH)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((float(loss.detach()), grads))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(layer.cached_rotations is None for layer in model.hybrid_layers.values())
