"""Export: a merged model that plain transformers loads, for every method, and the peft
adapters (the hybrid as OFT then LoRA) that plain peft applies, both with the adapter's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.data import (
    Collator,
    batch_loss,
    choose_verbalizers,
    encode_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
)
from training.export import export_run, load_peft_export
from training.loader import load_finetuned
from training.methods import METHODS, MethodConfig, apply_method, save_adapter
from training.models import build_word_tokenizer, load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = build_word_tokenizer(synthetic_texts())
RECS = split_records(synthetic_classification_records(), "train")
TASK = choose_verbalizers(sorted({r["label"] for r in RECS}), TOKENIZER)
ENC = encode_classification(RECS, TOKENIZER, TASK, max_length=48)
BATCH = Collator("classification", TOKENIZER.pad_token_id, TASK.label_token_ids)(ENC[::3][:16])
INPUTS = {k: BATCH[k] for k in ("input_ids", "attention_mask", "position_ids")}
PEFT_EXPRESSIBLE = ("lora", "lora_ga", "boft", "oft", "hybrid", "hybrid_unitary")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama with non-square projections (like gemma's), saved as a plain model."""
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
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out, safe_serialization=True)
    TOKENIZER.save_pretrained(out)
    return out


def trained_run(method: str, base_dir: Path, run_dir: Path) -> torch.Tensor:
    """Train ``method`` a few steps, save it as a run would, return its logits on INPUTS."""
    torch.manual_seed(0)
    model, _ = load_causal_lm(base_dir)
    cfg = MethodConfig(name=method, hybrid={"block_size": 16} if method.startswith("hy") else {})
    model = apply_method(model, cfg, [BATCH], batch_loss)
    if method != "untuned":
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
        for step in range(1, 5):
            batch_loss(model, BATCH).backward()
            if hasattr(model, "refresh_lambdas"):
                model.refresh_lambdas(step)
            opt.step()
            opt.zero_grad()
    save_adapter(model, cfg, run_dir / "adapter", extra={"base_model": str(base_dir)})
    if method == "full":
        TOKENIZER.save_pretrained(run_dir / "adapter")
    model.eval()
    with torch.no_grad():
        return model(**INPUTS).logits


@pytest.mark.parametrize("method", METHODS)
def test_merged_export_loads_with_plain_transformers_and_gives_the_adapters_logits(
    method, base_dir, tmp_path
):
    expected = trained_run(method, base_dir, tmp_path / "run")
    result = export_run(tmp_path / "run", tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(result["merged"], dtype=torch.float32)
    assert type(merged).__module__.startswith("transformers.")
    with torch.no_grad():
        got = merged(**INPUTS).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base_dir)(**INPUTS).logits
    if method == "untuned":
        assert torch.equal(plain, got)
    else:  # the export really carries the training
        assert (plain - got).abs().max() > 1e-3
    meta = json.loads((Path(result["merged"]) / "govtune_export.json").read_text())
    assert meta["method"] == method and meta["merged"] is True
    peft = result["peft"]
    if method in PEFT_EXPRESSIBLE:
        model = load_peft_export(AutoModelForCausalLM.from_pretrained(base_dir), peft["dir"])
        with torch.no_grad():
            via_peft = model(**INPUTS).logits
        assert torch.allclose(via_peft, expected, atol=1e-4, rtol=0), (
            (via_peft - expected).abs().max()
        )
        if method.startswith("hybrid"):
            assert [a["name"] for a in peft["adapters"]] == ["oft", "lora"]
            oft_cfg = json.loads((Path(peft["dir"]) / "oft" / "adapter_config.json").read_text())
            assert oft_cfg["peft_type"] == "OFT" and oft_cfg["use_cayley_neumann"] is False
    else:
        assert peft["adapters"] == [] and "no adapter" in peft["not_expressible"]


def test_a_butterfly_hybrid_says_why_it_has_no_peft_form(base_dir, tmp_path):
    torch.manual_seed(0)
    model, _ = load_causal_lm(base_dir)
    cfg = MethodConfig(
        name="hybrid", hybrid={"block_size": 16, "structure": "butterfly", "butterfly_factors": 2}
    )
    model = apply_method(model, cfg, [BATCH], batch_loss)
    save_adapter(model, cfg, tmp_path / "run" / "adapter", extra={"base_model": str(base_dir)})
    result = export_run(tmp_path / "run", tmp_path / "out")
    assert result["peft"]["adapters"] == []
    assert "butterfly" in result["peft"]["not_expressible"]
    merged = AutoModelForCausalLM.from_pretrained(result["merged"])
    with torch.no_grad():
        expected = load_finetuned(tmp_path / "run").model(**INPUTS).logits
        assert torch.allclose(merged(**INPUTS).logits, expected, atol=1e-4, rtol=0)


def test_export_subcommand(base_dir, tmp_path):
    expected = trained_run("hybrid", base_dir, tmp_path / "run")
    res = subprocess.run(
        [sys.executable, "-m", "training", "export", str(tmp_path / "run"), str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["merged"] == str(tmp_path / "x" / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "x" / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(**INPUTS).logits, expected, atol=1e-4, rtol=0)
    bad = subprocess.run(
        [sys.executable, "-m", "training", "export", str(tmp_path / "nope"), str(tmp_path / "y")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "neither a run directory nor an adapter" in bad.stderr
