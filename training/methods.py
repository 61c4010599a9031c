"""One interface over every fine-tuning method govtune compares.

``apply_method(model, MethodConfig, grad_batches)`` returns a model ready to train:

========== ============================================================================
untuned     the base model as it is: no adapter, no training (the reports' untuned rows)
full        every parameter trains
lora        peft LoRA
lora_ga     peft LoRA with LoRA-GA init (``preprocess_loraga`` rewrites base weights;
            ``save_adapter`` converts the result back to a plain LoRA on the original base)
boft        peft BOFT (butterfly orthogonal). Without CUDA peft cannot build its butterfly
            kernel and forces one butterfly factor: block-diagonal OFT. ``method_info`` records
            the factors actually used, and the run's ``govtune_method.json`` carries it
oft         peft OFT (v2: input-centric, Cayley–Neumann)
hybrid      govtune's hybrid adapter (training/hybrid.py); its low-rank branch starts from
            exactly the ``lora_ga`` baseline's factors (peft's own LoRA-GA computation)
hybrid_unitary  the hybrid plus Stiefel (semi-orthogonal) low-rank factors and float32
            rotations on selected sub-layers (default ``o_proj``, ``v_proj``)
========== ============================================================================
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.hybrid import (
    HybridConfig,
    HybridModel,
    default_loss,
    loraga_lora_config,
    matches,
)

METHODS = ("untuned", "full", "lora", "lora_ga", "boft", "oft", "hybrid", "hybrid_unitary")
PEFT_METHODS = ("lora", "lora_ga", "boft", "oft")
METHOD_FILE = "govtune_method.json"
# the hybrid_unitary defaults: which sub-layers carry the unitary constraints
UNITARY_DEFAULTS: dict[str, Any] = {
    "exact_orthogonality": True,
    "stiefel_lowrank": True,
    "unitary_fp32": True,
    "unitary_modules": ["o_proj", "v_proj"],
}
BOFT_CPU_NOTE = "butterfly_factors=1 (vanilla OFT: peft's CUDA kernel unavailable)"


@dataclass
class MethodConfig:
    """The method and its knobs. ``hybrid`` holds ``HybridConfig`` overrides (rule, block size,
    constraints ...); the shared fields (targets, r, alpha, dropout, LoRA-GA) apply to it too."""

    name: str = "hybrid"
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    loraga_direction: str = "ArB2r"
    loraga_scale: str = "stable"
    loraga_gamma: int = 16
    boft_block_size: int = 8
    # BOFT's butterfly: 2 factors where peft's CUDA kernel builds; on CPU peft forces 1
    boft_n_butterfly_factor: int = 2
    oft_block_size: int = 32
    hybrid: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> MethodConfig:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {list(METHODS)}")
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        if self.name.startswith("hybrid"):
            self.to_hybrid_config()  # raises on a bad hybrid key or value
        return self

    def to_hybrid_config(self) -> HybridConfig:
        """The HybridConfig this method runs; ``hybrid_unitary`` switches the constraints on."""
        base: dict[str, Any] = {
            "target_modules": list(self.target_modules),
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "loraga_direction": self.loraga_direction,
            "loraga_scale": self.loraga_scale,
            "loraga_gamma": float(self.loraga_gamma),
        }
        if self.name == "hybrid_unitary":
            base.update(UNITARY_DEFAULTS)
        known = {f.name for f in fields(HybridConfig)}
        unknown = sorted(set(self.hybrid) - known)
        if unknown:
            raise ValueError(f"unknown hybrid options {unknown}; known: {sorted(known)}")
        base.update(self.hybrid)
        return HybridConfig(**base).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown method config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data)).validate()


def check_targets(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Names of the nn.Linear modules the targets select; a clear error if there are none."""
    found = [n for n, m in model.named_modules() if matches(n, target_modules)]
    if not found:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"target_modules {target_modules} match nothing; this model's linear layers: {linear}"
        )
    bad = [n for n in found if not isinstance(model.get_submodule(n), nn.Linear)]
    if bad:
        raise ValueError(f"target_modules must name nn.Linear layers; not linear: {bad[:5]}")
    return found


def apply_method(
    model: nn.Module,
    config: MethodConfig,
    grad_batches: Iterable[Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> nn.Module:
    """Turn a base causal LM into a trainable model for ``config.name``.

    ``grad_batches`` (a few training batches) feed the gradient-estimation pass of ``lora_ga``
    and the hybrids; ``loss_fn(model, batch)`` defaults to the model's loss on ``labels``.
    Deterministic given the torch seed (LoRA-GA uses a randomised SVD).
    """
    config.validate()
    name = config.name
    if name in ("lora_ga", "hybrid", "hybrid_unitary") and grad_batches is None:
        raise ValueError(f"method {name!r} needs grad_batches for its gradient-estimation pass")
    # the LoRA-GA factors of lora_ga and of the hybrid come from this RNG state (peft's
    # randomised SVD), so both start from the same factors
    rng_state = torch.get_rng_state()
    if name == "untuned":
        for p in model.parameters():
            p.requires_grad_(False)
        model._govtune_method_info = {"method": "untuned", "trained": False}
        return model
    if name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    check_targets(model, list(config.target_modules))
    if name.startswith("hybrid"):
        wrapped = HybridModel(model, config.to_hybrid_config())
        if name == "hybrid_unitary" and not any(
            layer.unitary for layer in wrapped.hybrid_layers.values()
        ):
            cfg = wrapped.config
            raise ValueError(
                f"hybrid_unitary: unitary_modules {cfg.unitary_modules} x unitary_layers "
                f"{cfg.unitary_layers} select none of the targeted modules {cfg.target_modules}"
            )
        wrapped.initialize(grad_batches, loss_fn, rng_state=rng_state)
        return wrapped

    from peft import get_peft_model, get_peft_model_state_dict

    peft_cfg = peft_config(config)
    if name == "boft" and not torch.cuda.is_available():
        _skip_boft_cuda_build()
    if name == "lora_ga":
        from peft import preprocess_loraga

        batches = list(grad_batches or [])
        if not batches:
            raise ValueError("grad_batches is empty")
        fn = loss_fn or default_loss

        def train_step() -> None:
            for batch in batches:
                fn(model, batch).backward()

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            preprocess_loraga(model, peft_cfg, train_step)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*fused.*|.*CUDA.*|.*extension.*|.*butterfly.*")
        torch.set_rng_state(rng_state)
        peft_model = get_peft_model(model, peft_cfg)
    if name == "lora_ga":
        # the residual base W - s·B0A0 lives only in memory: keep the initial adapter so that
        # save_adapter can express the result as a plain LoRA on the original base
        init = get_peft_model_state_dict(peft_model)
        peft_model._govtune_lora_ga_init = {k: v.detach().clone() for k, v in init.items()}
    peft_model._govtune_method_info = method_info(peft_model, config)
    return peft_model


def method_info(model: nn.Module, config: MethodConfig) -> dict[str, Any]:
    """What the method actually runs, where it differs from what its name promises.

    For ``boft``: the butterfly factors peft used (``boft_R`` holds one block-diagonal factor per
    butterfly stage) and, when that is 1 against more requested, a ``label`` saying so, so that
    reports do not claim BOFT where it is block-diagonal OFT.
    """
    info: dict[str, Any] = {"method": config.name}
    if config.name == "boft":
        factors, cuda = set(), set()
        for module in model.modules():
            boft_r = getattr(module, "boft_R", None)
            if isinstance(boft_r, nn.ParameterDict) and len(boft_r):
                factors.update(int(p.shape[0]) for p in boft_r.values())
                cuda.add(bool(getattr(module, "fbd_cuda_available", False)))
        used = max(factors) if factors else None
        info.update(
            butterfly_factors_requested=config.boft_n_butterfly_factor,
            butterfly_factors=used,
            fbd_cuda_kernel=any(cuda),
        )
        if used == 1:
            info["label"] = (
                BOFT_CPU_NOTE
                if not any(cuda) and config.boft_n_butterfly_factor > 1
                else "butterfly_factors=1 (vanilla OFT: one butterfly factor configured)"
            )
    return info


def _skip_boft_cuda_build() -> None:
    """peft's BOFT tries to compile its CUDA kernel (ninja + nvcc) on first use, which on a
    CPU-only machine fails after ~10 s and falls back to one butterfly factor. Record the
    failure up front (peft caches the result in this module global) so it is not attempted."""
    import peft.tuners.boft.layer as boft_layer

    if boft_layer._FBD_CUDA is None:
        boft_layer._FBD_CUDA = False


def peft_config(config: MethodConfig) -> Any:
    """The peft config object for a peft-backed method."""
    from peft import BOFTConfig, LoraConfig, OFTConfig

    targets = list(config.target_modules)
    if config.name == "lora":
        return LoraConfig(
            r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets
        )
    if config.name == "lora_ga":
        return loraga_lora_config(
            targets,
            config.r,
            config.alpha,
            config.dropout,
            config.loraga_direction,
            config.loraga_scale,
            config.loraga_gamma,
        )
    if config.name == "boft":
        return BOFTConfig(
            boft_block_size=config.boft_block_size,
            boft_n_butterfly_factor=config.boft_n_butterfly_factor,
            boft_dropout=config.dropout,
            target_modules=targets,
        )
    if config.name == "oft":
        return OFTConfig(r=0, oft_block_size=config.oft_block_size, target_modules=targets)
    raise ValueError(f"{config.name!r} is not a peft-backed method")


def save_adapter(
    model: nn.Module,
    config: MethodConfig,
    out_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write what ``training.loader.load_finetuned`` needs to rebuild the model.

    untuned → nothing but the record (the base model is the model); full → the whole model
    (safetensors); peft methods → peft's adapter format (LoRA-GA is converted to a rank-2r LoRA
    on the original base); hybrid → HybridModel format. ``govtune_method.json`` records the
    method, the base model, ``extra`` (task metadata) and ``method_info`` (what the method
    actually ran, e.g. BOFT's butterfly factors).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = config.name
    if name == "untuned":
        pass  # nothing trained: the recorded base model is the model
    elif name == "full":
        model.save_pretrained(out, safe_serialization=True)
    elif name.startswith("hybrid"):
        model.save_pretrained(out)
    elif name == "lora_ga":
        from safetensors.torch import save_file

        init_state = getattr(model, "_govtune_lora_ga_init", None)
        if init_state is None:
            raise RuntimeError(
                "this LoRA-GA model lacks its initial adapter; build it with apply_method"
            )
        with tempfile.TemporaryDirectory() as tmp:
            init_dir = Path(tmp) / "lora_ga_init"
            init_dir.mkdir()
            save_file(
                {k: v.contiguous() for k, v in init_state.items()},
                str(init_dir / "adapter_model.safetensors"),
            )
            model.save_pretrained(out, path_initial_model_for_weight_conversion=str(init_dir))
    else:
        model.save_pretrained(out)
    meta = {"method": config.to_dict(), **dict(extra or {})}
    info = getattr(model, "_govtune_method_info", None)
    if info is not None:
        meta["method_info"] = info
    (out / METHOD_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything training changes: trainable parameters plus the hybrid's λ and init buffers.

    Checkpoints store this; the rest of the model is rebuilt deterministically.
    """
    out = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if isinstance(model, HybridModel):
        for n, b in model.named_buffers():
            if ".hybrid_" in n:
                out[n] = b.detach().clone()
    return out


def load_adapter_tensors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``adapter_tensors`` output back into an identically built model (strict names)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    expected = set(adapter_tensors(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]} (was it made with another method or config?)"
        )
    with torch.no_grad():
        for n, t in state.items():
            target = params.get(n, buffers.get(n))
            assert target is not None
            target.copy_(t)
