"""Export a finished run so that tools without govtune can load it.

``export_run(run_dir, out)`` (``python -m training export RUN_DIR OUT``) writes:

* ``OUT/merged/``: a plain Hugging Face model directory (config, safetensors weights, tokenizer)
  with the adapter folded into the weights, for **every** method. It loads with
  ``AutoModelForCausalLM.from_pretrained(OUT/"merged")`` and gives the adapter's logits (the
  tests require 1e-4 in float32). The merge runs in float32; ``dtype="bfloat16"`` then rounds
  the merged weights, which loses small adapter updates, so float32 is the default.
* ``OUT/peft/``: where peft can express the method, peft adapters and the order to apply them
  (``OUT/peft/export.json``; ``load_peft_export`` does it):

  ====================== ==================================================================
  lora, lora_ga, oft      the run's own peft adapter (LoRA-GA is already a plain rank-2r LoRA
                          on the original base)
  boft                    the run's own peft adapter (its ``method_info`` says how many
                          butterfly factors it really has)
  hybrid, hybrid_unitary  two adapters applied in order: ``oft`` (the orthogonal branch at
                          its mix, an exact-Cayley peft OFT) loaded and merged first, then
                          ``lora`` (rank 2r: [A; A0] and λ·s·[B, -B0], Stiefel factors
                          included as they are applied)
  full, untuned           nothing: the merged directory is the model
  ====================== ==================================================================

  peft 0.21 cannot hold OFT in a ``PeftMixedModel`` (OFT is registered as not mixed-compatible)
  and one ``PeftModel`` holds one tuner type, hence two adapters in order. A hybrid with a
  butterfly structure, a dense rotation or the Neumann series has no such form and gets the
  merged export only (``export.json`` says why).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.loader import _adapter_dir, load_finetuned
from training.methods import METHOD_FILE, PEFT_METHODS

EXPORT_FILE = "export.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _atomic_dir(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_merged(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    base_model: str | Path | None = None,
) -> Path:
    """Write a plain Hugging Face model directory with the run's adapter merged in."""
    from training.models import parse_dtype

    out = Path(out_dir)
    ft = load_finetuned(run_dir, dtype="float32", base_model=base_model, merge=True)
    model = ft.model
    if not hasattr(model, "save_pretrained") or hasattr(model, "peft_config"):
        raise TypeError(f"the merged {ft.method} model is not a plain transformers model")
    model.to(parse_dtype(dtype))
    tmp = _atomic_dir(out)
    model.save_pretrained(tmp, safe_serialization=True)
    ft.tokenizer.save_pretrained(tmp)
    (tmp / "govtune_export.json").write_text(
        json.dumps(
            {
                "method": ft.method,
                "base_model": ft.base_model,
                "run": str(Path(run_dir)),
                "dtype": dtype,
                "merged": True,
                "method_info": ft.info.get("method_info"),
            },
            indent=2,
        )
    )
    return _publish(tmp, out)


def _hybrid_peft_blockers(hybrid: nn.Module) -> list[str]:
    """Why a hybrid has no OFT + LoRA form (empty when it has one)."""
    why = []
    if hybrid.config.structure != "block":
        why.append("a butterfly rotation is not block-diagonal (peft OFT holds block rotations)")
    if hybrid.config.dense_orthogonal_modules:
        why.append("a dense input rotation has no block-diagonal OFT form")
    if any(layer.cayley != "exact" for layer in hybrid.hybrid_layers.values()):
        why.append("the Neumann series is not an exact Cayley map (peft OFT's exact mode)")
    return why


def hybrid_to_peft(
    hybrid: nn.Module, out_dir: str | Path, base_name: str | None = None
) -> dict[str, Path]:
    """Express a trained ``HybridModel`` as a peft OFT adapter and a peft LoRA adapter that,
    applied in that order (OFT merged first), compute the hybrid's forward pass."""
    from peft import LoraConfig, OFTConfig, get_peft_model

    from training.hybrid import HybridModel

    if not isinstance(hybrid, HybridModel):
        raise TypeError("hybrid_to_peft needs a HybridModel")
    cfg = hybrid.config
    blockers = _hybrid_peft_blockers(hybrid)
    if blockers:
        raise NotImplementedError("; ".join(blockers))
    out = Path(out_dir)
    layers = dict(hybrid.hybrid_layers)
    targets = sorted({n.rsplit(".", 1)[-1] for n in layers})
    # per targeted layer, the tensors peft will hold
    oft_w: dict[str, torch.Tensor] = {}
    lora_a: dict[str, torch.Tensor] = {}
    lora_b: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            lam = float(layer.lam())
            # ours: x_k -> R_k x_k with R = (I - S~)(I + S~)^-1, S~ = (1-λ) S; peft (exact
            # Cayley) right-multiplies row vectors by (I - S')(I + S')^-1, which is R_kᵀ for
            # S' = -S~; both store the upper triangle in triu_indices order
            s = layer.hybrid_S.detach().float()[0]
            oft_w[name] = (-(1.0 - lam) * s) if layer.orth_active else torch.zeros_like(s)
            a, b = layer.factors()
            a, b = a.detach().float(), b.detach().float()
            coef = lam * layer.scaling if layer.lowrank_active else 0.0
            lora_a[name] = torch.cat([a, layer.hybrid_A0.float()])
            lora_b[name] = coef * torch.cat([b, -layer.hybrid_B0.float()], dim=1)
    block = cfg.block_size
    # build peft models on a bare copy of the architecture: only the adapter tensors are saved
    plain = _bare_copy(hybrid)
    oft_cfg = OFTConfig(
        r=0,
        oft_block_size=block,
        target_modules=targets,
        use_cayley_neumann=False,
        module_dropout=0.0,
        init_weights=True,
        base_model_name_or_path=base_name,
    )
    oft_model = get_peft_model(plain, oft_cfg)
    with torch.no_grad():
        for name, w in oft_w.items():
            module = oft_model.base_model.model.get_submodule(name)
            module.oft_R["default"].weight.copy_(w)
    tmp = _atomic_dir(out / "oft")
    oft_model.save_pretrained(tmp)
    paths = {"oft": _publish(tmp, out / "oft")}
    plain = oft_model.unload()
    r2 = 2 * cfg.r
    lora_cfg = LoraConfig(
        r=r2,
        lora_alpha=r2,  # scaling 1: the factor λ·s sits in B
        lora_dropout=0.0,
        target_modules=targets,
        init_lora_weights=True,
        base_model_name_or_path=base_name,
    )
    lora_model = get_peft_model(plain, lora_cfg)
    with torch.no_grad():
        for name in layers:
            module = lora_model.base_model.model.get_submodule(name)
            module.lora_A["default"].weight.copy_(lora_a[name])
            module.lora_B["default"].weight.copy_(lora_b[name])
    tmp = _atomic_dir(out / "lora")
    lora_model.save_pretrained(tmp)
    paths["lora"] = _publish(tmp, out / "lora")
    return paths


def _bare_copy(hybrid: nn.Module) -> nn.Module:
    """A fresh model of the hybrid's architecture (random weights, never saved): peft needs the
    module tree to build and save an adapter; the adapter files hold only adapter tensors."""
    from transformers import AutoModelForCausalLM

    config = hybrid.model.config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.to_empty(device="cpu")


def export_peft(
    run_dir: str | Path, out_dir: str | Path, base_model: str | Path | None = None
) -> dict[str, Any]:
    """Write the run's adapter in peft's format where peft can express it (module docstring);
    returns the ``export.json`` record (adapters in the order to apply them, or why none)."""
    adapter = _adapter_dir(Path(run_dir))
    info = json.loads((adapter / METHOD_FILE).read_text())
    method = info["method"]["name"]
    base = str(base_model or info.get("base_model") or "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"method": method, "base_model": base, "adapters": []}
    if method in PEFT_METHODS:
        tmp = _atomic_dir(out / "adapter")
        for f in PEFT_FILES:
            shutil.copy2(adapter / f, tmp / f)
        _publish(tmp, out / "adapter")
        record["adapters"] = [{"name": "adapter", "path": "adapter", "merge_before_next": False}]
        if info.get("method_info"):
            record["method_info"] = info["method_info"]
    elif method.startswith("hybrid"):
        ft = load_finetuned(run_dir, dtype="float32", base_model=base_model)
        try:
            hybrid_to_peft(ft.model, out, base_name=base or None)
        except NotImplementedError as exc:
            record["not_expressible"] = str(exc)
        else:
            record["adapters"] = [
                {"name": "oft", "path": "oft", "merge_before_next": True},
                {"name": "lora", "path": "lora", "merge_before_next": False},
            ]
    else:
        record["not_expressible"] = f"{method}: no adapter; use the merged model directory"
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=2))
    return record


def load_peft_export(base: nn.Module, export_dir: str | Path) -> nn.Module:
    """Apply the adapters of an ``export_peft`` directory to ``base`` in their order with plain
    peft: each adapter marked ``merge_before_next`` is merged before the next one loads."""
    from peft import PeftModel

    export_dir = Path(export_dir)
    record = json.loads((export_dir / EXPORT_FILE).read_text())
    if not record["adapters"]:
        raise ValueError(f"{export_dir}: no peft adapter ({record.get('not_expressible')})")
    model: nn.Module = base
    for item in record["adapters"]:
        model = PeftModel.from_pretrained(model, str(export_dir / item["path"]))
        if item["merge_before_next"]:
            model = model.merge_and_unload()
    return model


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    peft: bool = True,
    base_model: str | Path | None = None,
) -> dict[str, Any]:
    """``OUT/merged`` for every method, ``OUT/peft`` where peft can express it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "merged": str(export_merged(run_dir, out / "merged", dtype=dtype, base_model=base_model))
    }
    if peft:
        record = export_peft(run_dir, out / "peft", base_model=base_model)
        result["peft"] = {**record, "dir": str(out / "peft")}
    return result
