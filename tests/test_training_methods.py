"""Every fine-tuning method behind ``apply_method``, on a tiny random Llama and synthetic data."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from training.data import (
    Collator,
    batch_loss,
    choose_verbalizers,
    encode_classification,
    encode_translation,
    read_records,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
    synthetic_translation_records,
    validate_records,
)
from training.loader import load_finetuned
from training.methods import METHODS, MethodConfig, apply_method, save_adapter
from training.models import build_word_tokenizer, count_parameters, load_causal_lm, tiny_llama

TOKENIZER = build_word_tokenizer(synthetic_texts())
TRAINED = tuple(m for m in METHODS if m != "untuned")


def tiny(seed: int = 0):
    return tiny_llama(tokenizer=TOKENIZER, seed=seed)


def cls_batch(n: int = 16):
    recs = split_records(synthetic_classification_records(), "train")
    task = choose_verbalizers(sorted({r["label"] for r in recs}), TOKENIZER)
    enc = encode_classification(recs, TOKENIZER, task, max_length=48)
    mixed = enc[::3][:n]  # spread over languages and labels
    return Collator("classification", TOKENIZER.pad_token_id, task.label_token_ids)(mixed), task


def mt_batch(n: int = 8):
    recs = split_records(synthetic_translation_records(), "train")
    enc = encode_translation(recs, TOKENIZER, max_length=48)
    return Collator("translation", TOKENIZER.pad_token_id)(enc[:n])


def loss_fn(model, batch):
    return batch_loss(model, batch)


def train_steps(model, batch, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = batch_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def build(method: str, batch, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model, _ = tiny(seed)
    return apply_method(
        model, MethodConfig(name=method, **kw), grad_batches=[batch], loss_fn=loss_fn
    )


@pytest.mark.parametrize("method", TRAINED)
def test_each_method_lowers_the_loss_on_a_fixed_batch(method):
    batch, _ = cls_batch()
    model = build(method, batch)
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    if method != "full":
        assert trainable < total / 2, "an adapter method must freeze the base model"
    losses = train_steps(model, batch, steps=12, lr=1e-3 if method == "full" else 1e-2)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("method", ["lora", "hybrid"])
def test_translation_sft_lowers_the_target_loss(method):
    batch = mt_batch()
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    model = build(method, batch)
    losses = train_steps(model, batch, steps=12, lr=1e-2)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_gives_the_same_logits(method, tmp_path):
    batch, task = cls_batch()
    base_dir = tmp_path / "base"
    base, tok = tiny()
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    torch.manual_seed(0)
    model, _ = load_causal_lm(base_dir)
    model = apply_method(model, MethodConfig(name=method), grad_batches=[batch], loss_fn=loss_fn)
    if method != "untuned":
        train_steps(model, batch, steps=3, lr=1e-3 if method == "full" else 1e-2)
    cfg = MethodConfig(name=method)
    save_adapter(model, cfg, tmp_path / "adapter", extra={"base_model": str(base_dir)})
    if method == "full":
        tok.save_pretrained(tmp_path / "adapter")
    model.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        expected = model(**inputs).logits
    loaded = load_finetuned(tmp_path / "adapter")
    assert loaded.method == method
    with torch.no_grad():
        got = loaded.model(**inputs).logits
    # LoRA-GA is saved as a rank-2r LoRA on the original base: equal up to rounding
    tol = 1e-5 if method == "lora_ga" else 1e-6
    assert torch.allclose(got, expected, atol=tol, rtol=0), (got - expected).abs().max()
    # the trained model really differs from the base (the comparison is not vacuous), and the
    # untuned one is the base
    with torch.no_grad():
        plain = load_causal_lm(base_dir)[0](**inputs).logits
    if method == "untuned":
        assert torch.equal(plain, expected) and not any(
            p.requires_grad for p in loaded.model.parameters()
        )
    else:
        assert (plain - expected).abs().max() > 1e-4


def test_untuned_is_the_base_model_with_nothing_to_train(tmp_path):
    batch, _ = cls_batch()
    model = build("untuned", batch)
    assert count_parameters(model)[0] == 0
    assert not any("lora" in n or "hybrid" in n or "oft" in n for n, _ in model.named_modules())
    out = save_adapter(model, MethodConfig(name="untuned"), tmp_path, extra={"base_model": "x"})
    assert sorted(p.name for p in out.iterdir()) == ["govtune_method.json"]
    info = json.loads((out / "govtune_method.json").read_text())
    assert info["method"]["name"] == "untuned" and info["method_info"]["trained"] is False


def test_boft_run_records_the_butterfly_factors_it_really_used(tmp_path):
    """peft forces one butterfly factor without its CUDA kernel: the run must say so."""
    batch, _ = cls_batch()
    model = build("boft", batch, boft_n_butterfly_factor=2)
    factors = {p.shape[0] for n, p in model.named_parameters() if "boft_R" in n and p.requires_grad}
    info = model._govtune_method_info
    assert info["butterfly_factors_requested"] == 2
    assert info["butterfly_factors"] == max(factors)
    if torch.cuda.is_available() and info["fbd_cuda_kernel"]:
        assert max(factors) == 2 and "label" not in info
    else:
        assert max(factors) == 1
        assert info["label"] == (
            "butterfly_factors=1 (vanilla OFT: peft's CUDA kernel unavailable)"
        )
    save_adapter(model, MethodConfig(name="boft", boft_n_butterfly_factor=2), tmp_path)
    saved = json.loads((tmp_path / "govtune_method.json").read_text())
    assert saved["method_info"] == info


def test_lora_ga_reload_does_not_need_the_rewritten_base(tmp_path):
    batch, _ = cls_batch()
    model = build("lora_ga", batch)
    save_adapter(model, MethodConfig(name="lora_ga"), tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["init_lora_weights"] is True and cfg["r"] == 16  # plain LoRA of rank 2r


def test_bad_configs_fail_with_clear_messages():
    batch, _ = cls_batch()
    model, _ = tiny()
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        apply_method(model, MethodConfig(name="dora"))
    with pytest.raises(ValueError, match="needs grad_batches"):
        apply_method(model, MethodConfig(name="lora_ga"))
    with pytest.raises(ValueError, match="match nothing.*linear layers"):
        apply_method(model, MethodConfig(name="lora", target_modules=["query"]))
    with pytest.raises(ValueError, match="rule='fancy'"):
        MethodConfig(name="hybrid", hybrid={"rule": "fancy"}).validate()
    with pytest.raises(ValueError, match="unknown hybrid options"):
        MethodConfig(name="hybrid", hybrid={"blocksize": 4}).validate()
    with pytest.raises(ValueError, match="block_size 5 does not divide"):
        apply_method(model, MethodConfig(name="hybrid", hybrid={"block_size": 5}), [batch], loss_fn)


def test_verbalisers_are_single_tokens_or_a_clear_error():
    _, task = cls_batch()
    for word, tid in zip(task.verbalizers.values(), task.label_token_ids, strict=True):
        assert TOKENIZER.encode(word, add_special_tokens=False) == [tid]
    with pytest.raises(ValueError, match="no single-token verbaliser for: 'not a word'"):
        choose_verbalizers(["sports", "not a word"], TOKENIZER)


def test_bad_task_records_name_the_rows(tmp_path):
    recs = synthetic_classification_records(n_per_class=3)
    recs[2] = {k: v for k, v in recs[2].items() if k != "label"}
    with pytest.raises(ValueError, match=r"row 2 .* lacks \['label'\]"):
        validate_records(recs, "classification")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_records(bad)
    with pytest.raises(ValueError, match="unsupported task data format"):
        read_records(tmp_path.joinpath("x.csv").write_text("a") and tmp_path / "x.csv")


def test_language_is_kept_per_example():
    batch, _ = cls_batch(n=24)
    assert len(batch["langs"]) == 24 and len(set(batch["langs"])) >= 2
    assert set(mt_batch()["langs"]) == {"en-de", "en-fr"}


@pytest.mark.skipif(
    importlib.util.find_spec("training.moo") is None,
    reason="training/moo.py (issue 7) is not in this checkout yet",
)
def test_moo_backward_fills_gradients():
    from training.data import example_losses, language_losses
    from training.moo import moo_backward
    from training.trainer import TrainConfig

    batch, _ = cls_batch(n=24)
    model = build("lora", batch)
    params = [p for p in model.parameters() if p.requires_grad]
    losses, counts = example_losses(model, batch)
    diag = moo_backward(
        params, language_losses(losses, counts, batch["langs"]), TrainConfig(moo="mgda")
    )
    assert isinstance(diag, dict)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
