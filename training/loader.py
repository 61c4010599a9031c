"""The documented loader for a finished run: ``load_finetuned(run_dir)`` → model + tokenizer.

Works for every method from the adapter directory alone plus the *unmodified* base model:
peft adapters through ``PeftModel.from_pretrained`` (LoRA-GA was saved as a plain LoRA on the
original base), the hybrid through ``HybridModel.from_pretrained``, full fine-tuning as a
complete model directory, and ``untuned`` as the recorded base model itself. For a model that
plain ``transformers`` (or peft) loads without govtune, see ``training/export.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.data import ClassificationTask
from training.methods import METHOD_FILE, PEFT_METHODS


@dataclass
class FinetunedModel:
    """What ``load_finetuned`` returns: the model (eval mode), its tokenizer and run metadata."""

    model: nn.Module
    tokenizer: Any
    method: str
    base_model: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def classification_task(self) -> ClassificationTask | None:
        task = self.info.get("classification_task")
        return ClassificationTask.from_dict(task) if task else None

    def __iter__(self):  # allows ``model, tokenizer = load_finetuned(...)``
        return iter((self.model, self.tokenizer))


def _adapter_dir(path: Path) -> Path:
    if (path / METHOD_FILE).is_file():
        return path
    if (path / "adapter" / METHOD_FILE).is_file():
        return path / "adapter"
    raise FileNotFoundError(
        f"{path} is neither a run directory nor an adapter directory (no {METHOD_FILE})"
    )


def load_finetuned(
    run_dir: str | Path,
    dtype: str | torch.dtype = "float32",
    base_model: str | Path | None = None,
    merge: bool = False,
) -> FinetunedModel:
    """Rebuild a fine-tuned model from ``run_dir`` (or its ``adapter/`` directory).

    ``base_model`` overrides the recorded base (e.g. the same weights at another path).
    ``merge=True`` folds LoRA/hybrid adapters into the weights for faster inference.
    """
    from training.models import load_causal_lm

    adapter = _adapter_dir(Path(run_dir))
    info = json.loads((adapter / METHOD_FILE).read_text())
    method = info["method"]["name"]
    base = str(base_model or info.get("base_model") or "")
    if method == "full":
        model, tokenizer = load_causal_lm(adapter, dtype=dtype)  # saved with its tokenizer
        model.eval()
        return FinetunedModel(model, tokenizer, method, base, info)
    if not base:
        raise ValueError(f"{adapter}: the base model is not recorded; pass base_model=")
    model, tokenizer = load_causal_lm(base, dtype=dtype)
    if method == "untuned":
        for p in model.parameters():  # like the adapters' loaders: nothing here trains
            p.requires_grad_(False)
        model.eval()
        return FinetunedModel(model, tokenizer, method, base, info)
    if method in PEFT_METHODS:
        from peft import PeftModel

        wrapped: nn.Module = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            wrapped = wrapped.merge_and_unload()
    elif method.startswith("hybrid"):
        from training.hybrid import HybridModel

        wrapped = HybridModel.from_pretrained(model, adapter)
        if merge:
            wrapped = wrapped.merge_and_unload()
    else:
        raise ValueError(f"{adapter}: unknown method {method!r}")
    wrapped.eval()
    return FinetunedModel(wrapped, tokenizer, method, base, info)
