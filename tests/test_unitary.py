"""Unitary constraints on selected, non-square sub-layers (gemma's projections are all
non-square): Stiefel low-rank factors and float32 rotations, checked on the tensors the forward
pass applies, in the dtype it applies them."""

from __future__ import annotations

import pytest
import torch

from training.constraints import (
    applied_orthogonality_error,
    applied_orthogonality_report,
    max_orthogonality_error,
)
from training.data import (
    Collator,
    batch_loss,
    choose_verbalizers,
    encode_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
)
from training.hybrid import HybridModel
from training.methods import MethodConfig, apply_method
from training.models import build_word_tokenizer

TOKENIZER = build_word_tokenizer(synthetic_texts())
RECS = split_records(synthetic_classification_records(), "train")
TASK = choose_verbalizers(sorted({r["label"] for r in RECS}), TOKENIZER)
ENC = encode_classification(RECS, TOKENIZER, TASK, max_length=48)
BATCH = Collator("classification", TOKENIZER.pad_token_id, TASK.label_token_ids)(ENC[::3][:16])
INPUTS = {k: BATCH[k] for k in ("input_ids", "attention_mask", "position_ids")}


def nonsquare_llama(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny Llama whose attention projections are all non-square, like gemma's: q 64→96,
    k/v 64→48 (grouped KV heads), o 96→64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=max(len(TOKENIZER), 1024),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        max_position_embeddings=512,
        pad_token_id=TOKENIZER.pad_token_id,
        bos_token_id=TOKENIZER.bos_token_id,
        eos_token_id=TOKENIZER.eos_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    return model


def loss_fn(model, batch):
    return batch_loss(model, batch)


def unitary_hybrid(dtype: torch.dtype = torch.float32, **hybrid) -> HybridModel:
    """hybrid_unitary with its defaults: o_proj and v_proj are the unitary sub-layers."""
    torch.manual_seed(0)
    cfg = MethodConfig(name="hybrid_unitary", hybrid={"block_size": 16, **hybrid})
    return apply_method(nonsquare_llama(dtype=dtype), cfg, [BATCH], loss_fn)


def train(model, steps: int, lr: float = 3e-2) -> list[float]:
    # AdamW's default weight decay (0.01) also decays torch's Householder sign diagonal
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = loss_fn(model, BATCH)
        loss.backward()
        model.refresh_lambdas(step)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("stiefel_map", ["qr", "householder"])
def test_selected_nonsquare_sublayers_stay_semi_orthogonal_on_what_the_forward_applies(
    stiefel_map,
):
    base = nonsquare_llama()
    with torch.no_grad():
        expected = base(**INPUTS).logits
    model = unitary_hybrid(stiefel_map=stiefel_map)
    layers = model.hybrid_layers
    unitary = {n for n, layer in layers.items() if layer.unitary}
    assert unitary == {n for n in layers if n.endswith(("o_proj", "v_proj"))}
    shapes = {tuple(layers[n].base_layer.weight.shape) for n in unitary}
    assert shapes == {(48, 64), (64, 96)}  # v_proj, o_proj: both non-square
    with torch.no_grad():  # the constraints do not change the starting model
        assert torch.allclose(model(**INPUTS).logits, expected, atol=1e-5)
    start = {n: (layers[n].hybrid_A.detach().clone(), layers[n].hybrid_S.detach().clone())
             for n in unitary}  # fmt: skip
    losses = train(model, steps=12)
    assert losses[-1] < losses[0]
    with torch.no_grad():  # the checks read what this forward pass applies
        model(**INPUTS)
    report = applied_orthogonality_report(model)
    for name in layers:
        rec = report[name]
        assert rec["rotation"]["error"] < 1e-4 and rec["rotation"]["dtype"] == "float32"
        if name in unitary:
            d_out, d_in = layers[name].base_layer.weight.shape
            assert rec["A"]["shape"] == [8, d_in] and rec["U"]["shape"] == [d_out, 8]
            assert rec["A"]["error"] < 1e-4 and rec["U"]["error"] < 1e-4, (name, rec)
            a0, s0 = start[name]
            assert (layers[name].hybrid_A - a0).abs().max() > 1e-3, "A must have trained"
            assert (layers[name].hybrid_S - s0).abs().max() > 1e-3, "R must have trained"
            # the applied tensor is the one the forward used, not a recomputation
            assert torch.equal(layers[name].applied["A"], layers[name].hybrid_A.detach())
        else:
            assert "A" not in rec and not layers[name].stiefel
    errs = applied_orthogonality_error(model)
    assert set(errs) == set(layers) and max(errs.values()) < 1e-4
    assert max_orthogonality_error(model, unitary_only=True) == max(errs[n] for n in unitary)
    # the check is not vacuous: a factor pushed off the manifold shows up
    layer = layers[next(iter(sorted(unitary)))]
    layer.applied["A"] = layer.applied["A"] * 1.01
    assert applied_orthogonality_error(model)[layer.name] > 1e-2


def test_bf16_model_rotates_unitary_sublayers_in_fp32_and_reports_the_bf16_error_elsewhere():
    model = unitary_hybrid(dtype=torch.bfloat16)
    for layer in model.hybrid_layers.values():
        with torch.no_grad():  # a trained-looking rotation (at S = 0 the bf16 identity is exact)
            layer.hybrid_S.normal_(0, 0.2)
    with torch.no_grad():
        model(**INPUTS)
    report = applied_orthogonality_report(model)
    measured = []
    for name, rec in report.items():
        if rec["unitary"]:
            assert rec["rotation"]["dtype"] == "float32" and rec["rotation"]["error"] < 1e-4
        else:
            assert rec["rotation"]["dtype"] == "bfloat16"
            assert rec["rotation"]["error"] > 1e-4, name  # bf16 rounding of an exact rotation
            measured.append(rec["rotation"]["error"])
    assert measured and max(measured) < 0.1  # about 1e-2: stated in docs/method.md §4


def test_stiefel_adapter_saves_loads_and_merges(tmp_path):
    model = unitary_hybrid()
    train(model, steps=4)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**INPUTS).logits
    loaded = HybridModel.from_pretrained(nonsquare_llama(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**INPUTS).logits, expected)
    merged = loaded.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(**INPUTS).logits, expected, atol=1e-5)


def test_hybrid_unitary_that_selects_nothing_is_an_error():
    cfg = MethodConfig(name="hybrid_unitary", hybrid={"block_size": 16, "unitary_modules": ["x"]})
    with pytest.raises(ValueError, match="select none of the targeted modules"):
        apply_method(nonsquare_llama(), cfg, [BATCH], loss_fn)


def test_data_parallel_lambda_uses_the_global_gradient_of_the_stiefel_factors(tmp_path):
    """Under DDP the captured gradients of the applied (Stiefel) factors are averaged over the
    ranks: two ranks of 4 examples give the λ of one process accumulating the same two batches
    of 4 (the same gradient-estimation batches, the same examples per step)."""
    import json
    from pathlib import Path

    from launch import train_under_torchrun

    from training.trainer import TrainConfig, train

    def cfg(run_dir: Path, accum: int) -> TrainConfig:
        return TrainConfig.from_dict(
            {
                "run_dir": str(run_dir),
                "model": "tiny",
                "data": "synthetic",
                "steps": 2,
                "batch_size": 4,
                "grad_accum": accum,
                "lr": 1e-2,
                "threads": 1,
                "progress": False,
                "method": {
                    "name": "hybrid_unitary",
                    "hybrid": {"block_size": 16, "refresh_every": 2},
                },
            }
        )

    single = train(cfg(tmp_path / "one", 2))
    one = json.loads((single.run_dir / "summary.json").read_text())["lambdas"]
    train_under_torchrun(cfg(tmp_path / "ddp", 1).to_dict(), tmp_path / "ddp.yaml", timeout=300)
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())["lambdas"]
    init = json.loads((tmp_path / "ddp" / "adapter" / "lambda_history.json").read_text())[0]
    moved = [n for n in one if abs(one[n] - init["lambdas"][n]) > 1e-4]
    assert any(n.endswith(("o_proj", "v_proj")) for n in moved), "the refresh must move λ"
    for name in one:
        assert two[name] == pytest.approx(one[name], abs=1e-5), name
