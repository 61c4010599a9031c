"""The govtune hybrid adapter: a gradient-aligned low-rank branch and a Cayley-orthogonal branch,
mixed per targeted linear layer by λ_l (definitions and formulas in docs/method.md).

Shaped like a peft tuner (``HybridConfig`` / ``HybridLinear`` / ``HybridModel``) and saved like
one (``adapter_config.json`` + ``adapter_model.safetensors``); peft cannot load it (a tuner
outside peft cannot register a ``PeftType``), so ``training/export.py`` writes a merged
Hugging Face model and, where peft can express it, an OFT + LoRA adapter pair. For one targeted
linear layer with frozen weight W::

    y = W · Q((1-λ)·S) · x + b + λ · s · (B A - B0 A0) · x

Q is a block-diagonal (or butterfly) Cayley rotation applied to the activations (OFTv2 style),
A0, B0 peft's own LoRA-GA initialisation (the very factors the ``lora_ga`` baseline starts from,
kept frozen here so the base weights are never rewritten), and s = alpha / r. Both branches are
zero at initialisation, so the adapted model starts equal to the base model for every λ.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

HYBRID_PEFT_TYPE = "GOVTUNE_HYBRID"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
RULES = ("fixed", "grad_norm_ratio", "learned", "hard")
SIGNALS = ("efficiency", "grad_norm")
STRUCTURES = ("block", "butterfly")
CAYLEY = ("exact", "neumann")
APPLY_TO = ("auto", "input", "weight")
INITS = ("lora_ga", "gaussian")
# peft's LoraGAConfig choices (peft/tuners/lora/config.py)
LORAGA_DIRECTIONS = ("ArB2r", "A2rBr", "ArBr", "random")
LORAGA_SCALES = ("stable", "weight_svd", "gd_scale", "unit")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class HybridConfig:
    """Everything that defines a hybrid adapter; saved as ``adapter_config.json``."""

    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    init: str = "lora_ga"
    loraga_direction: str = "ArB2r"
    loraga_scale: str = "stable"
    loraga_gamma: float = 16.0
    block_size: int = 32
    structure: str = "block"
    butterfly_factors: int = 2
    cayley: str = "exact"
    neumann_terms: int = 5
    apply_to: str = "auto"
    rule: str = "grad_norm_ratio"
    # what the ratio rules compare: "efficiency" (first-order loss decrease per unit change of
    # the effective weight, invariant to alpha, lambda and rescaled parametrisations) or
    # "grad_norm" (the earlier raw gradient norms / mixing factor, kept for the ablation)
    signal: str = "efficiency"
    lambda_init: float = 0.5
    refresh_every: int = 10
    ema: float = 0.9
    lambda_min: float = 0.05
    lambda_max: float = 0.95
    grad_norm: str = "l2"  # "l2" | "rms": only for signal="grad_norm"
    hard_lowrank_fraction: float | None = None
    # unitary / unit-norm constraints on selected sub-layers (see training/constraints.py)
    unitary_layers: list[int] | None = None
    unitary_modules: list[str] | None = None
    exact_orthogonality: bool = False
    unit_norm_lowrank: bool = False
    # selected sub-layers: A on the Stiefel manifold (A Aᵀ = I), B = U M with Uᵀ U = I
    stiefel_lowrank: bool = False
    stiefel_map: str = "qr"  # "qr" (QR retraction) | "householder" (torch's orthogonal)
    # selected sub-layers apply their rotation in float32 even when the model runs in bf16/fp16
    unitary_fp32: bool = False
    dense_orthogonal_modules: list[str] = field(default_factory=list)
    base_model_name_or_path: str | None = None
    peft_type: str = HYBRID_PEFT_TYPE

    def validate(self) -> HybridConfig:
        """Raise a ValueError naming the bad field, before any tensor is touched."""

        def choice(name: str, allowed: Iterable[str]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"hybrid {name}={value!r} is not one of {list(allowed)}")

        choice("rule", RULES)
        choice("signal", SIGNALS)
        choice("structure", STRUCTURES)
        choice("cayley", CAYLEY)
        choice("apply_to", APPLY_TO)
        choice("init", INITS)
        choice("loraga_direction", LORAGA_DIRECTIONS)
        choice("loraga_scale", LORAGA_SCALES)
        choice("grad_norm", ("l2", "rms"))
        choice("stiefel_map", ("qr", "householder"))
        if not self.target_modules:
            raise ValueError("hybrid target_modules is empty: name at least one linear layer")
        if self.r < 1:
            raise ValueError(f"hybrid r must be >= 1, got {self.r}")
        if self.block_size < 2:
            raise ValueError(f"hybrid block_size must be >= 2, got {self.block_size}")
        if self.structure == "butterfly" and self.butterfly_factors < 2:
            raise ValueError("a butterfly needs butterfly_factors >= 2 (1 is the block structure)")
        if self.neumann_terms < 2:
            raise ValueError(f"neumann_terms must be >= 2, got {self.neumann_terms}")
        if not 0.0 <= self.lambda_min < self.lambda_max <= 1.0:
            raise ValueError("need 0 <= lambda_min < lambda_max <= 1")
        if not 0.0 <= self.lambda_init <= 1.0:
            raise ValueError(f"lambda_init must lie in [0, 1], got {self.lambda_init}")
        if self.rule == "learned" and not 0.0 < self.lambda_init < 1.0:
            raise ValueError("rule 'learned' needs 0 < lambda_init < 1 (λ = sigmoid(θ))")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if self.hard_lowrank_fraction is not None and not 0 <= self.hard_lowrank_fraction <= 1:
            raise ValueError("hard_lowrank_fraction must lie in [0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HybridConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown hybrid config keys {unknown}; known: {sorted(known)}")
        if data.get("peft_type", HYBRID_PEFT_TYPE) != HYBRID_PEFT_TYPE:
            raise ValueError(f"not a govtune hybrid adapter config (peft_type={data['peft_type']})")
        return cls(**dict(data)).validate()

    def lora_ga_config(self) -> Any:
        """peft's ``LoraConfig`` for the LoRA-GA initialisation: the same object the ``lora_ga``
        baseline is built from (``training.methods.peft_config``), so both start alike."""
        return loraga_lora_config(
            self.target_modules,
            self.r,
            self.alpha,
            self.dropout,
            self.loraga_direction,
            self.loraga_scale,
            self.loraga_gamma,
        )


def loraga_lora_config(
    target_modules: list[str],
    r: int,
    alpha: float,
    dropout: float,
    direction: str,
    scale: str,
    gamma: float,
) -> Any:
    """The peft ``LoraConfig(init_lora_weights="lora_ga")`` shared by ``lora_ga`` and the hybrid."""
    from peft import LoraConfig, LoraGAConfig

    g = int(gamma) if float(gamma).is_integer() else gamma
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        init_lora_weights="lora_ga",
        lora_ga_config=LoraGAConfig(direction=direction, scale=scale, stable_gamma=g),
    )


def matches(name: str, patterns: Iterable[str]) -> bool:
    """peft's rule: a pattern names a module by its full name or its last dotted components."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def layer_index(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def _chain(module: nn.Module, attr: str, raw: torch.Tensor) -> torch.Tensor:
    """Apply the parametrisations registered on ``module.<attr>`` to ``raw`` (its original)."""
    params = getattr(module, "parametrizations", None)
    if params is None or attr not in params:
        return raw
    x = raw
    for p in params[attr]:
        x = p(x)
    return x


class HybridLinear(nn.Module):
    """One targeted ``nn.Linear`` with both branches and its mixing weight λ."""

    def __init__(self, base_layer: nn.Linear, config: HybridConfig, name: str) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{name}: the hybrid adapter wraps nn.Linear, got {type(base_layer)}")
        self.base_layer = base_layer
        self.name = name
        self.layer_idx = layer_index(name)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        cfg = config
        b = cfg.block_size
        if self.in_features % b:
            divisors = [
                d for d in range(2, min(self.in_features, 256) + 1) if self.in_features % d == 0
            ]
            raise ValueError(
                f"{name}: block_size {b} does not divide in_features {self.in_features}; "
                f"choose one of {divisors[:12]}"
            )
        self.r, self.block, self.n_blocks = cfg.r, b, self.in_features // b
        self.n_factors = cfg.butterfly_factors if cfg.structure == "butterfly" else 1
        if self.n_factors > 1 and self.n_blocks < 2:
            raise ValueError(f"{name}: a butterfly needs at least 2 blocks per factor")
        self.scaling = cfg.alpha / cfg.r
        self.rule = cfg.rule
        self.signal = cfg.signal
        self.apply_to = cfg.apply_to
        self.neumann_terms = cfg.neumann_terms
        short = name.rsplit(".", 1)[-1]
        self.unitary = (cfg.unitary_layers is None or self.layer_idx in cfg.unitary_layers) and (
            cfg.unitary_modules is None
            or matches(name, cfg.unitary_modules)
            or short in cfg.unitary_modules
        )
        self.cayley = "exact" if (self.unitary and cfg.exact_orthogonality) else cfg.cayley
        self.stiefel = bool(self.unitary and cfg.stiefel_lowrank)
        self.rotation_fp32 = bool(self.unitary and cfg.unitary_fp32)
        if self.stiefel and cfg.r > min(self.in_features, self.out_features):
            raise ValueError(f"{name}: stiefel_lowrank needs r <= min(d_in, d_out)")
        dev, dt = base_layer.weight.device, torch.float32
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        # low-rank branch: trainable A (r x in), B (out x r) -- or, on Stiefel sub-layers,
        # B = U M with U (out x r) orthonormal columns and a free r x r core M
        self.hybrid_A = nn.Parameter(torch.empty(cfg.r, self.in_features, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.hybrid_A, a=math.sqrt(5))
        if self.stiefel:
            self.hybrid_U = nn.Parameter(torch.eye(self.out_features, cfg.r, device=dev, dtype=dt))
            self.hybrid_M = nn.Parameter(torch.zeros(cfg.r, cfg.r, device=dev, dtype=dt))
        else:
            self.hybrid_B = nn.Parameter(
                torch.zeros(self.out_features, cfg.r, device=dev, dtype=dt)
            )
        self.register_buffer(
            "hybrid_A0", torch.zeros(cfg.r, self.in_features, device=dev, dtype=dt)
        )
        self.register_buffer(
            "hybrid_B0", torch.zeros(self.out_features, cfg.r, device=dev, dtype=dt)
        )
        # orthogonal branch: skew-symmetric generators, one per block and butterfly factor
        m = b * (b - 1) // 2
        self.hybrid_S = nn.Parameter(
            torch.zeros(self.n_factors, self.n_blocks, m, device=dev, dtype=dt)
        )
        # upper-triangle positions of the b x b generator, in torch.triu_indices order (peft's)
        self.register_buffer("_triu", torch.triu_indices(b, b, offset=1).to(dev), persistent=False)
        # mixing weight
        self.register_buffer("hybrid_lambda", torch.tensor(float(cfg.lambda_init), device=dev))
        if cfg.rule == "learned":
            logit = math.log(cfg.lambda_init / (1 - cfg.lambda_init))
            self.hybrid_logit = nn.Parameter(torch.tensor(logit, device=dev))
        else:
            self.hybrid_logit = None
        self.dense_rotation: nn.Linear | None = None  # set by constraints.add_dense_orthogonal
        self.last_grad_norms: tuple[float, float] | None = None  # (ρ_lr, ρ_orth) of the signal
        self.bypass = False
        self.cached_rotations: torch.Tensor | None = None  # set by HybridModel's pre-hook
        # what the last forward pass applied (detached), for the orthogonality checks
        self.applied: dict[str, torch.Tensor] = {}
        self._wgram: torch.Tensor | None = None  # W_kᵀ W_k per block, for the λ signal
        self._wgram_eigh: tuple[torch.Tensor, torch.Tensor] | None = None
        # gradients of the applied (parametrised) factors, summed since the last λ refresh
        self._applied_grads: dict[str, torch.Tensor] = {}
        if self.stiefel:
            from training.constraints import stiefel

            stiefel(self, "hybrid_A", cfg.stiefel_map)
            stiefel(self, "hybrid_U", cfg.stiefel_map)
        elif self.unitary and cfg.unit_norm_lowrank:
            from training.constraints import unit_norm_rows

            unit_norm_rows(self, "hybrid_A")
        self.refresh_flags()

    # ---------------------------------------------------------------- mixing weight
    def lam(self) -> torch.Tensor:
        if self.hybrid_logit is not None:
            return torch.sigmoid(self.hybrid_logit)
        return self.hybrid_lambda

    def lambda_value(self) -> float:
        return float(self.lam().detach())

    def refresh_flags(self) -> None:
        """Cache which branches run (hard allocation) and whether A0/B0 are set: the forward
        pass then needs no tensor-to-Python synchronisation."""
        lam = float(self.hybrid_lambda)
        self.lowrank_active = not (self.rule == "hard" and lam == 0.0)
        self.orth_active = not (self.rule == "hard" and lam == 1.0)
        self.has_init_offset = bool(self.hybrid_A0.any())

    def _raw(self, attr: str) -> nn.Parameter:
        """The stored tensor behind a possibly parametrised attribute."""
        params = getattr(self, "parametrizations", None)
        if params is not None and attr in params:
            return params[attr].original
        return getattr(self, attr)

    def lowrank_parameters(self) -> list[nn.Parameter]:
        """The low-rank branch's stored (raw) tensors, the ones the optimiser updates."""
        if self.stiefel:
            return [self._raw("hybrid_A"), self._raw("hybrid_U"), self.hybrid_M]
        return [self._raw("hybrid_A"), self.hybrid_B]

    def lowrank_from_raw(self, raws: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as the forward pass applies them, from the raw tensors (for jvp / surrogates)."""
        a = _chain(self, "hybrid_A", raws[0])
        if self.stiefel:
            return a, _chain(self, "hybrid_U", raws[1]) @ raws[2]
        return a, raws[1]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of the low-rank branch as applied (parametrisations evaluated)."""
        if self.stiefel:
            return self.hybrid_A, self.hybrid_U @ self.hybrid_M
        return self.hybrid_A, self.hybrid_B

    def _parametrized(self, attr: str) -> bool:
        params = getattr(self, "parametrizations", None)
        return params is not None and attr in params

    def set_lowrank(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Set the trained factors so that B A equals ``b @ a`` (through the parametrisations),
        then the frozen A0, B0 to what is applied, so the branch output is exactly zero."""
        a, b = a.detach().float(), b.detach().float()
        with torch.no_grad():
            if self.stiefel:
                # A = orthonormal rows spanning a's rows, U = orthonormal columns spanning b's
                # columns, M = Uᵀ (b a) Aᵀ: U M A = b a for any pair, exactly up to rounding
                qa, _ = torch.linalg.qr(a.T)
                qb, _ = torch.linalg.qr(b)
                self.hybrid_A = qa.T.contiguous()
                self.hybrid_U = qb.contiguous()
                a_app, u_app = self.hybrid_A, self.hybrid_U
                self.hybrid_M.copy_(u_app.T @ (b @ a) @ a_app.T)
            elif self._parametrized("hybrid_A"):
                # unit-norm rows: move the row norms of A into the columns of B
                norms = a.norm(dim=-1).clamp_min(1e-12)
                self._raw("hybrid_A").copy_(a / norms[:, None])
                self.hybrid_B.copy_(b * norms[None, :])
            else:
                self.hybrid_A.copy_(a)
                self.hybrid_B.copy_(b)
            a_app, b_app = self.factors()
            self.hybrid_A0.copy_(a_app)
            self.hybrid_B0.copy_(b_app)
        self.refresh_flags()

    # ---------------------------------------------------------------- orthogonal branch
    def skew(
        self, scale: torch.Tensor | float = 1.0, params: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(factors, blocks, b, b) skew-symmetric generators, scaled by ``scale``."""
        p = self.hybrid_S if params is None else params
        return skew_from_triu(p, self.block, self._triu) * scale

    def rotations(
        self, scale: torch.Tensor | float = 1.0, params: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cayley map R = (I - S)(I + S)^-1 per block: exact solve or OFTv2's Neumann series."""
        return cayley(self.skew(scale, params), self.cayley, self.neumann_terms)

    def _shuffle(self, h: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Perfect shuffle between butterfly stages (an Omega network)."""
        lead = h.shape[:-1]
        a, c = (self.n_blocks, self.block) if not inverse else (self.block, self.n_blocks)
        return h.reshape(*lead, a, c).transpose(-1, -2).reshape(*lead, self.in_features)

    def rotate_input(self, x: torch.Tensor, rots: torch.Tensor) -> torch.Tensor:
        """Apply Q to row vectors: x Qᵀ with Q = Π_f Pᶠᵀ R_f Pᶠ (R_f block-diagonal)."""
        lead = x.shape[:-1]
        h = x.reshape(-1, self.n_blocks, self.block)
        for f in range(self.n_factors):
            if f:
                h = self._shuffle(h.reshape(-1, self.in_features)).reshape(
                    -1, self.n_blocks, self.block
                )
            # h[n, k, :] <- R_fk @ h[n, k, :]
            h = torch.einsum("nkj,kij->nki", h, rots[f])
        h = h.reshape(-1, self.in_features)
        for _ in range(self.n_factors - 1):
            h = self._shuffle(h, inverse=True)
        return h.reshape(*lead, self.in_features)

    def orthogonal_matrix(self, rots: torch.Tensor | None = None) -> torch.Tensor:
        """The unmixed orthogonal transform Q (in x in) of this layer, for checks."""
        eye = torch.eye(self.in_features, device=self.hybrid_S.device)
        r = self.rotations(1.0) if rots is None else rots
        q = self.rotate_input(eye, r).T  # rotate_input(I) = Qᵀ
        if self.dense_rotation is not None:
            q = q @ self.dense_rotation.weight
        return q

    def rotation_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.rotation_fp32 else x_dtype

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.bypass:  # gradient-estimation pass: the adapter is the identity there anyway
            return base(x)
        if self.dense_rotation is not None:
            x = self.dense_rotation(x)
            self.applied["dense"] = self.dense_rotation.weight.detach()
        lam = self.lam()
        dtype = x.dtype
        if self.orth_active:
            rots = self.cached_rotations
            if rots is None:
                rots = self.rotations(1.0 - lam)
            n_tokens = x.numel() // self.in_features
            mode = self.apply_to
            if mode == "auto":
                # training: the weight side would also need the full d_out x d_in gradient of WQ
                # (N·d_out·d_in work) against 3·N·d_in·b for the input side; without gradients
                # rotating W (d_out·d_in·b) wins once there are more tokens than outputs
                training = torch.is_grad_enabled() and self.hybrid_S.requires_grad
                cheap_weight = not training and n_tokens > self.out_features
                mode = "weight" if (cheap_weight and self.n_factors == 1) else "input"
            if mode == "input":
                rdt = self.rotation_dtype(dtype)
                applied = rots.to(rdt)
                y = base(self.rotate_input(x.to(rdt), applied).to(dtype))
            else:
                if self.n_factors > 1:
                    raise ValueError("apply_to='weight' supports the block structure only")
                rdt = self.rotation_dtype(base.weight.dtype)
                applied = rots[:1].to(rdt)
                w = base.weight.to(rdt).reshape(self.out_features, self.n_blocks, self.block)
                w = torch.einsum("okj,kji->oki", w, applied[0]).reshape_as(base.weight)
                y = F.linear(x, w.to(dtype), base.bias)
            self.applied["rotation"] = applied.detach()
        else:
            y = base(x)
        if self.lowrank_active:
            if self.stiefel:
                a, u = self.hybrid_A, self.hybrid_U
                bmat = u @ self.hybrid_M
                self.applied["A"] = a.detach()
                self.applied["U"] = u.detach()
            else:
                a, bmat = self.factors()
            if self.parametrized_lowrank and torch.is_grad_enabled() and a.requires_grad:
                self._capture_grad("A", a)  # computed tensors: a hook lives for this pass only
                if self.stiefel:
                    self._capture_grad("B", bmat)
            if self.has_init_offset:  # gradient-aligned init: subtract the frozen B0 A0
                a = torch.cat([a, self.hybrid_A0])
                bmat = torch.cat([bmat, -self.hybrid_B0], dim=1)
            d = self.dropout(x).to(a.dtype)
            y = y + (lam * self.scaling) * F.linear(F.linear(d, a), bmat).to(dtype)
        return y

    def merged_weight(self) -> torch.Tensor:
        """W' with y = W' x + b equal to forward(x) (dense rotation folded in too), in fp32."""
        with torch.no_grad():
            w = self.base_layer.weight.float()
            lam = self.lam().float()
            if self.orth_active:
                eye = torch.eye(self.in_features, device=w.device)
                q = self.rotate_input(eye, self.rotations(1.0 - lam)).T
                w = w @ q
            if self.lowrank_active:
                a, bm = self.factors()
                w = w + lam * self.scaling * (bm @ a - self.hybrid_B0 @ self.hybrid_A0)
            if self.dense_rotation is not None:
                w = w @ self.dense_rotation.weight
        return w

    # ---------------------------------------------------------------- branch signals
    def _weight_gram(self) -> torch.Tensor:
        """M_k = W_kᵀ W_k (blocks, b, b) of the frozen weight: ‖W_k X‖² = ⟨M_k X, X⟩."""
        if self._wgram is None:
            w = self.base_layer.weight.detach().float()
            wb = w.reshape(self.out_features, self.n_blocks, self.block)
            self._wgram = torch.einsum("oki,okj->kij", wb, wb)
        return self._wgram

    def _weight_gram_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigen-decomposition (D, V) of every M_k in float64, computed once (W is frozen)."""
        if self._wgram_eigh is None:
            d, v = torch.linalg.eigh(self._weight_gram().double())
            self._wgram_eigh = (d.clamp_min(0.0), v)
        return self._wgram_eigh

    @property
    def parametrized_lowrank(self) -> bool:
        """Whether A or B is computed from other stored tensors (Stiefel, unit-norm rows): the
        signal then needs the gradient of the applied factors, captured in the forward pass."""
        return self.stiefel or self._parametrized("hybrid_A")

    def _capture_grad(self, key: str, t: torch.Tensor) -> None:
        def hook(g: torch.Tensor) -> None:
            prev = self._applied_grads.get(key)
            self._applied_grads[key] = g.detach().clone() if prev is None else prev + g.detach()

        t.register_hook(hook)

    @staticmethod
    def _lowrank_reach(
        a: torch.Tensor, b: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor, c: float
    ) -> float:
        """‖P_T G‖_F for the low-rank branch at (A, B), T = {c (dB A + B dA)}, from the gradients
        of the applied factors (∂L/∂A = c BᵀG, ∂L/∂B = c G Aᵀ with c = λ·s, divided out).

        ‖P_T G‖² = ‖G V_A‖² + ‖U_Bᵀ G‖² - ‖U_Bᵀ G V_A‖² with V_A, U_B orthonormal bases of A's
        row space and B's column space (singular values below 1e-7 of the largest dropped).
        """
        a, b, ga, gb = (t.detach().double() for t in (a, b, grad_a, grad_b))

        def basis(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Thin SVD m = u diag(sv) vh of an r x n or n x r matrix via its r x r Gram matrix
            (an r x r eigh instead of an n x r SVD: 50x cheaper on CPU)."""
            tall = m.shape[0] > m.shape[1]
            g = m.T @ m if tall else m @ m.T
            ev, vec = torch.linalg.eigh(g)
            keep = ev > ev.max().clamp_min(1e-300) * 1e-14
            sv, vec = ev[keep].sqrt(), vec[:, keep]
            if tall:  # m = u diag(sv) vecᵀ
                return m @ vec / sv, sv, vec.T
            return vec, sv, (vec.T @ m) / sv[:, None]  # m = vec diag(sv) vh

        if c == 0 or (not bool(a.abs().sum() > 0) and not bool(b.abs().sum() > 0)):
            return 0.0
        total = 0.0
        u_a, s_a, v_a = basis(a)  # A = u_a diag(s_a) v_a
        g_va = None
        if s_a.numel():
            g_va = gb @ u_a / s_a  # ∝ G V_Aᵀ-basis: G v_aᵀ
            total += float(g_va.pow(2).sum())
        if bool(b.abs().sum() > 0):
            u_b, s_b, v_b = basis(b)  # B = u_b diag(s_b) v_b
            ub_g = (v_b @ ga) / s_b[:, None]  # ∝ U_Bᵀ G
            total += float(ub_g.pow(2).sum())
            if g_va is not None:
                total -= float((u_b.T @ g_va).pow(2).sum())
        return math.sqrt(max(total, 0.0)) / abs(c)

    def _orth_reach(self, grad_s: torch.Tensor, lam: float) -> float:
        """‖P_T G‖_F for the block rotation at R_k = cayley((1-λ) S_k), T = {W_k R_k Ω_k : Ω_k
        skew}, from the gradient of the stored generators.

        With K_k = ∂L/∂Ω_k and C_k = R_kᵀ M_k R_k (M_k = W_kᵀ W_k): ‖P_T G‖² = Σ_k ⟨K_k, H_k⁻¹ K_k⟩,
        H_k Ω = (C_k Ω + Ω C_k)/2, which is diagonal in C_k's eigenbasis (R_kᵀ times M_k's):
        Σ_ij K'_ij² · 2 / (d_i + d_j)."""
        scale = 1.0 - lam
        if scale <= 0:
            return 0.0
        s_t = self.skew(scale, self.hybrid_S.detach().double())[0]  # S~ = (1-λ) S
        eye = torch.eye(self.block, dtype=torch.float64, device=s_t.device)
        r = torch.linalg.solve(eye + s_t, eye - s_t)
        g_st = self.skew(1.0, grad_s.detach().double())[0] / (2.0 * scale)  # ∂L/∂S~ (skew)
        k = -0.5 * (eye + s_t) @ g_st @ (eye - s_t)  # ∂L/∂Ω with dR = R Ω
        d, v = self._weight_gram_eigh()
        kp = v.transpose(-1, -2) @ r @ k @ r.transpose(-1, -2) @ v
        den = d[:, :, None] + d[:, None, :]
        inv = torch.where(den > den.amax() * 1e-12, 2.0 / den.clamp_min(1e-300), 0.0)
        return math.sqrt(max(float((kp.pow(2) * inv).sum()), 0.0))

    def _orth_grad_from_weight_grad(self, g: torch.Tensor) -> torch.Tensor:
        """∂L/∂S (stored generators) if the effective weight's gradient were G (autograd of the
        first-order surrogate ⟨G, W Q((1-λ)S)⟩, block structure: only W_kᵀ G_k is needed)."""
        lam = self.lambda_value()
        w = self.base_layer.weight.detach().float()
        s_param = self.hybrid_S.detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            rots = self.rotations(1.0 - lam, s_param)
            if self.n_factors == 1:
                shape = (self.out_features, self.n_blocks, self.block)
                m = torch.einsum("oki,okj->kij", w.reshape(shape), g.reshape(shape))
                surrogate = (m * rots[0]).sum()
            else:
                eye = torch.eye(self.in_features, device=w.device)
                q_t = self.rotate_input(eye, rots)  # = Qᵀ
                surrogate = (g * (w @ q_t.T)).sum()
            (gs,) = torch.autograd.grad(surrogate, [s_param])
        return gs

    def _orth_step_efficiency(self, grad_s: torch.Tensor, lam: float) -> float:
        """Fallback for butterfly / Neumann rotations: ‖g‖² / ‖W dQ(g)‖, the first-order loss
        decrease per unit weight change of a gradient step (a lower bound of ‖P_T G‖)."""
        s_raw, g = self.hybrid_S.detach().float(), grad_s.detach().float()
        scale = 1.0 - lam
        w = self.base_layer.weight.detach().float()
        if self.n_factors > 1:
            _, d_qt = torch.func.jvp(
                lambda p: self.rotate_input(
                    torch.eye(self.in_features, device=p.device), self.rotations(scale, p)
                ),
                (s_raw,),
                (g,),
            )  # d(Qᵀ)
            den = float((w @ d_qt.T).norm())
        else:
            _, d_rots = torch.func.jvp(lambda p: self.rotations(scale, p), (s_raw,), (g,))
            d_r = d_rots[0]
            sq = (torch.einsum("kij,kjl->kil", self._weight_gram(), d_r) * d_r).sum()
            den = float(sq.clamp_min(0.0).sqrt())
        num = float(g.pow(2).sum())
        return num / den if den > 0 else 0.0

    def _orth_score(self, grad_s: torch.Tensor | None, lam: float) -> float:
        if grad_s is None or not self.orth_active:
            return 0.0
        if self.n_factors == 1 and self.cayley == "exact":
            return self._orth_reach(grad_s, lam)
        return self._orth_step_efficiency(grad_s, lam)

    def scores_from_gradient(self, grad: torch.Tensor) -> tuple[float, float]:
        """(ρ_lr, ρ_orth) of the configured signal from a full-weight gradient G (the
        gradient-estimation pass; the model equals the base there)."""
        g = grad.detach().float().to(self.hybrid_S.device)
        lam = self.lambda_value()
        c = lam * self.scaling
        a, b = (t.detach().float() for t in self.factors())
        grad_a, grad_b = c * (b.T @ g), c * (g @ a.T)
        gs = self._orth_grad_from_weight_grad(g)
        if self.signal == "efficiency":
            rho_lr = self._lowrank_reach(a, b, grad_a, grad_b, c) if self.lowrank_active else 0.0
            return rho_lr, self._orth_score(gs, lam)
        # legacy: raw gradient norms with the branch's own mixing factor divided out
        return (
            _norm([grad_a, grad_b], "l2") / max(lam, 1e-6),
            _norm([gs], "l2") / max(1.0 - lam, 1e-6),
        )

    def live_sensitivities(
        self, grad_norm: str = "l2", orth_score: float | None = None
    ) -> tuple[float, float] | None:
        """(ρ_lr, ρ_orth) from the current gradients (None if the layer has none yet).

        ``efficiency``: ρ = ‖P_T G‖_F, the norm of the effective weight's gradient G projected on
        the directions the branch can move W_eff in -- the largest first-order loss decrease per
        unit change of W_eff the branch offers. It depends only on the set of reachable weights,
        so it is invariant to the LoRA alpha, to λ and to how each branch is parametrised
        (plain, unit-norm or Stiefel factors give the same ρ at the same point).
        """
        lam = self.lambda_value()
        orth_grad = self.hybrid_S.grad if self.orth_active else None
        if self.signal == "grad_norm":
            lr_grads = [p.grad for p in self.lowrank_parameters()]
            if any(gr is None for gr in lr_grads) or orth_grad is None:
                return None
            rho_lr = _norm(lr_grads, grad_norm) / max(lam, 1e-6)
            rho_orth = _norm([orth_grad], grad_norm) / max(1.0 - lam, 1e-6)
            return rho_lr, rho_orth
        rho_lr = 0.0
        if self.lowrank_active:
            if self.parametrized_lowrank:
                grad_a = self._applied_grads.get("A")
                grad_b = self._applied_grads.get("B") if self.stiefel else self.hybrid_B.grad
            else:
                grad_a, grad_b = self.hybrid_A.grad, self.hybrid_B.grad
            if grad_a is None or grad_b is None:
                return None
            with torch.no_grad():
                a, b = self.factors()
            rho_lr = self._lowrank_reach(a, b, grad_a, grad_b, lam * self.scaling)
        elif orth_grad is None:
            return None
        if self.orth_active and orth_grad is None:
            return None
        if orth_score is None:
            orth_score = self._orth_score(orth_grad, lam)
        return rho_lr, orth_score

    @property
    def batched_orth_reach(self) -> bool:
        """Whether ``HybridModel`` may score this layer's rotation in its batched pass."""
        return self.orth_active and self.n_factors == 1 and self.cayley == "exact"


def skew_from_triu(p: torch.Tensor, b: int, triu: torch.Tensor) -> torch.Tensor:
    """(..., b(b-1)/2) upper-triangle entries -> (..., b, b) skew-symmetric matrices.

    Written with an index_put (its backward is a gather), which on CPU costs a quarter of a
    gather from [0, p, -p] (whose backward is a scatter-add)."""
    m = p.new_zeros(*p.shape[:-1], b, b)
    m[..., triu[0], triu[1]] = p
    return m - m.transpose(-1, -2)


def cayley(s: torch.Tensor, mode: str = "exact", terms: int = 5) -> torch.Tensor:
    """Cayley map R = (I - S)(I + S)^-1 of a batch of skew matrices (exact or Neumann series)."""
    eye = torch.eye(s.shape[-1], device=s.device, dtype=s.dtype)
    if mode == "exact":
        return torch.linalg.solve(eye + s, eye - s)
    # OFTv2: (I + S)^-1 ≈ I - S + S^2 - ... ; exact orthogonality is traded for speed
    inv, term = eye - s, -s
    for _ in range(2, terms):
        term = term @ (-s)
        inv = inv + term
    return (eye - s) @ inv


def _norm(tensors: list[torch.Tensor], kind: str) -> float:
    total = sum(float(t.detach().float().pow(2).sum()) for t in tensors)
    n = sum(t.numel() for t in tensors)
    return math.sqrt(total / n) if kind == "rms" else math.sqrt(total)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def peft_loraga_factors(
    layers: Mapping[str, nn.Linear],
    grads: Mapping[str, torch.Tensor],
    lora_config: Any,
    rng_state: torch.Tensor | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft's own LoRA-GA factors (A, B) for each named linear layer, from its gradient.

    Runs peft's ``lora.Linear`` (``lora_ga_init``) on a proxy of each layer -- in the order and
    from the RNG state ``get_peft_model`` uses for the ``lora_ga`` baseline, so the factors are
    the baseline's bit for bit -- and leaves the real weights untouched (peft would subtract
    s·B A from them). ``rng_state`` defaults to the current torch RNG state; the global RNG is
    not advanced.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    state = torch.get_rng_state() if rng_state is None else rng_state
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lora_ga.*|.*LoRA-GA.*")
        torch.set_rng_state(state)
        for name, layer in layers.items():
            proxy = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
            proxy.weight = nn.Parameter(layer.weight.detach().float(), requires_grad=False)
            proxy._peft_loraga_grad = grads[name]
            lora = LoraLinear(
                proxy,
                "default",
                config=lora_config,
                r=lora_config.r,
                lora_alpha=lora_config.lora_alpha,
            )
            out[name] = (
                lora.lora_A["default"].weight.detach().float(),
                lora.lora_B["default"].weight.detach().float(),
            )
    return out


class HybridModel(nn.Module):
    """Wraps a causal LM, injects ``HybridLinear`` layers and owns the λ rules."""

    def __init__(self, model: nn.Module, config: HybridConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        targets = [
            (n, m)
            for n, m in model.named_modules()
            if matches(n, config.target_modules) and not isinstance(m, HybridLinear)
        ]
        if not targets:
            raise ValueError(
                f"none of target_modules {config.target_modules} names a module of this model"
            )
        self.hybrid_layers: dict[str, HybridLinear] = {}
        for name, module in targets:
            if not isinstance(module, nn.Linear):
                raise ValueError(f"target {name} is a {type(module).__name__}, not nn.Linear")
            layer = HybridLinear(module, config, name)
            _set_module(model, name, layer)
            self.hybrid_layers[name] = layer
        dense = list(config.dense_orthogonal_modules)
        if dense:
            from training.constraints import add_dense_orthogonal

            chosen = [n for n in self.hybrid_layers if matches(n, dense)]
            if not chosen:
                raise ValueError(f"dense_orthogonal_modules {dense} match no targeted module")
            for n in chosen:
                add_dense_orthogonal(self.hybrid_layers[n])
        self.lambda_history: list[dict[str, Any]] = []
        self.batch_rotations = True
        self._scale_cache: dict[tuple[str, int], tuple[list[int], torch.Tensor]] = {}
        model.register_forward_pre_hook(self._prepare_rotations)
        model.register_forward_hook(self._drop_rotations)
        self._sync_trainable()

    # ----------------------------------------------------------- delegation
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def _prepare_rotations(self, *_: Any) -> None:
        """Compute every layer's rotations in one batched Cayley map per forward pass.

        One skew gather and one batched solve for all blocks of all layers instead of one per
        layer: on CPU the per-layer kernel overhead, not the arithmetic, dominates this part.
        """
        groups: dict[tuple[str, int], list[HybridLinear]] = {}
        for layer in self.hybrid_layers.values():
            layer.cached_rotations = None
            if self.batch_rotations and layer.orth_active and not layer.bypass:
                groups.setdefault((layer.cayley, layer.block), []).append(layer)
        for key, layers in groups.items():
            mode = key[0]
            first = layers[0]
            params = torch.cat([layer.hybrid_S for layer in layers], dim=1)
            skew = first.skew(1.0, params) * self._mix_scales(key, layers)[None, :, None, None]
            rots = cayley(skew, mode, first.neumann_terms)
            # split, not slicing: its backward is one concatenation instead of a zero-filled
            # full-size gradient per layer
            parts = rots.split([layer.n_blocks for layer in layers], dim=1)
            for layer, part in zip(layers, parts, strict=True):
                layer.cached_rotations = part

    def _mix_scales(self, key: tuple[str, int], layers: list[HybridLinear]) -> torch.Tensor:
        """(1 - λ_l) per block of a group of layers; cached between λ refreshes unless λ is
        learned (then it must stay in the graph)."""
        if self.config.rule == "learned":
            return torch.cat(
                [(1.0 - layer.lam()).reshape(1).expand(layer.n_blocks) for layer in layers]
            )
        cached = self._scale_cache.get(key)
        if cached is None or cached[0] != [id(layer) for layer in layers]:
            with torch.no_grad():
                vec = torch.cat(
                    [(1.0 - layer.lam()).reshape(1).expand(layer.n_blocks) for layer in layers]
                )
            cached = ([id(layer) for layer in layers], vec)
            self._scale_cache[key] = cached
        return cached[1]

    def _drop_rotations(self, *_: Any) -> None:
        for layer in self.hybrid_layers.values():
            layer.cached_rotations = None

    def _sync_trainable(self) -> None:
        self._scale_cache = {}  # λ may have changed (initialisation, a loaded checkpoint)
        for layer in self.hybrid_layers.values():
            layer.refresh_flags()
            for p in layer.lowrank_parameters():
                p.requires_grad_(layer.lowrank_active)
            layer.hybrid_S.requires_grad_(layer.orth_active)
            if layer.hybrid_logit is not None:
                layer.hybrid_logit.requires_grad_(True)
            if layer.dense_rotation is not None:
                for p in layer.dense_rotation.parameters():
                    p.requires_grad_(True)

    # ----------------------------------------------------------- initialisation
    def initialize(
        self,
        grad_batches: Iterable[Any] | None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        rng_state: torch.Tensor | None = None,
    ) -> dict[str, tuple[float, float]]:
        """Gradient-estimation pass: peft's LoRA-GA init and the initial λ_l from the signal.

        Uses peft's ``estimate_gradients`` (the pass ``preprocess_loraga`` runs) on the unmodified
        base weights, which the wrapped layers expose as ``<name>.base_layer``, and peft's
        ``lora_ga_init`` for the factors (``peft_loraga_factors``; ``rng_state`` is the torch RNG
        state the ``lora_ga`` baseline would start ``get_peft_model`` from).
        """
        cfg = self.config
        if cfg.init == "gaussian":
            if cfg.rule in ("grad_norm_ratio", "hard") and grad_batches is None:
                raise ValueError(f"rule {cfg.rule!r} needs grad_batches for its first measurement")
        elif grad_batches is None:
            raise ValueError(
                "the hybrid's LoRA-GA init needs grad_batches (a few training batches)"
            )
        sens: dict[str, tuple[float, float]] = {}
        if grad_batches is not None:
            for layer in self.hybrid_layers.values():
                layer.bypass = True
            try:
                grads = estimate_weight_gradients(
                    self.model,
                    [f"{n}.base_layer" for n in self.hybrid_layers],
                    grad_batches,
                    loss_fn,
                )
            finally:
                for layer in self.hybrid_layers.values():
                    layer.bypass = False
            grads = {n: grads[f"{n}.base_layer"] for n in self.hybrid_layers}
            if cfg.init == "lora_ga":
                factors = peft_loraga_factors(
                    {n: layer.base_layer for n, layer in self.hybrid_layers.items()},
                    grads,
                    cfg.lora_ga_config(),
                    rng_state,
                )
                for name, layer in self.hybrid_layers.items():
                    layer.set_lowrank(*factors[name])
            for name, layer in self.hybrid_layers.items():
                sens[name] = layer.scores_from_gradient(grads[name])
        self._initial_lambdas(sens)
        self._sync_trainable()
        return sens

    def _initial_lambdas(self, sens: Mapping[str, tuple[float, float]]) -> None:
        cfg = self.config
        ratio = {n: (lr / (lr + orth) if lr + orth > 0 else 0.5) for n, (lr, orth) in sens.items()}
        with torch.no_grad():
            if cfg.rule == "grad_norm_ratio":
                for n, layer in self.hybrid_layers.items():
                    value = min(max(ratio[n], cfg.lambda_min), cfg.lambda_max)
                    layer.hybrid_lambda.fill_(value)
            elif cfg.rule == "hard":
                names = sorted(ratio, key=lambda n: ratio[n], reverse=True)
                if cfg.hard_lowrank_fraction is None:
                    lowrank = {n for n in names if ratio[n] >= 0.5}
                else:
                    lowrank = set(names[: round(cfg.hard_lowrank_fraction * len(names))])
                for n, layer in self.hybrid_layers.items():
                    layer.hybrid_lambda.fill_(1.0 if n in lowrank else 0.0)
        for n, layer in self.hybrid_layers.items():
            layer.last_grad_norms = sens.get(n)
        self._record(step=0, source="init")

    # ----------------------------------------------------------- λ rules during training
    def refresh_lambdas(self, step: int) -> dict[str, Any] | None:
        """Call after backward and before ``optimizer.step``; on every K-th step update λ.

        ``grad_norm_ratio``: λ ← β λ + (1 - β) clip(ρ_lr / (ρ_lr + ρ_orth)), with ρ the configured
        signal measured on the live (all-reduced) gradients. Other rules only log.
        Returns the logged record on refresh steps, else None.
        """
        cfg = self.config
        if step % cfg.refresh_every:
            self._reset_captured()
            return None
        self._all_reduce_captured()
        with torch.no_grad():
            batched = self._batched_orth_scores() if cfg.signal == "efficiency" else {}
            for name, layer in self.hybrid_layers.items():
                sens = layer.live_sensitivities(cfg.grad_norm, batched.get(name))
                if sens is None:
                    continue
                layer.last_grad_norms = sens
                if cfg.rule != "grad_norm_ratio":
                    continue
                lr, orth = sens
                target = lr / (lr + orth) if lr + orth > 0 else layer.lambda_value()
                target = min(max(target, cfg.lambda_min), cfg.lambda_max)
                layer.hybrid_lambda.mul_(cfg.ema).add_((1.0 - cfg.ema) * target)
        self._scale_cache = {}
        self._reset_captured()
        return self._record(step=step, source="refresh")

    def _batched_orth_scores(self) -> dict[str, float]:
        """ρ_orth of every block-structured, exact-Cayley layer in one batched pass: the same
        ‖P_T G‖ as ``HybridLinear._orth_reach`` (a test checks they agree), with one solve and
        a few batched products over all blocks of all layers instead of a dozen ops per layer."""
        layers = [
            (n, layer)
            for n, layer in self.hybrid_layers.items()
            if layer.batched_orth_reach
            and layer.hybrid_S.grad is not None
            and layer.lambda_value() < 1.0
        ]
        out: dict[str, float] = {}
        by_block: dict[int, list[tuple[str, HybridLinear]]] = {}
        for n, layer in layers:
            by_block.setdefault(layer.block, []).append((n, layer))
        for b, group in by_block.items():
            first = group[0][1]
            sizes = [layer.n_blocks for _, layer in group]
            scale = torch.cat(
                [
                    torch.full((layer.n_blocks,), 1.0 - layer.lambda_value(), dtype=torch.float64)
                    for _, layer in group
                ]
            ).to(first.hybrid_S.device)
            p = torch.cat([layer.hybrid_S.detach()[0] for _, layer in group]).double()
            g = torch.cat([layer.hybrid_S.grad.detach()[0] for _, layer in group]).double()
            s_t = skew_from_triu(p, b, first._triu) * scale[:, None, None]
            g_st = skew_from_triu(g, b, first._triu) / (2.0 * scale)[:, None, None]
            eye = torch.eye(b, dtype=torch.float64, device=p.device)
            r = torch.linalg.solve(eye + s_t, eye - s_t)
            k = -0.5 * (eye + s_t) @ g_st @ (eye - s_t)
            d = torch.cat([layer._weight_gram_eigh()[0] for _, layer in group])
            v = torch.cat([layer._weight_gram_eigh()[1] for _, layer in group])
            kp = v.transpose(-1, -2) @ r @ k @ r.transpose(-1, -2) @ v
            den = d[:, :, None] + d[:, None, :]
            # the same threshold as the per-layer code: relative to that layer's largest
            top = torch.cat([part.amax().expand(len(part)) for part in den.flatten(1).split(sizes)])
            inv = torch.where(den > top[:, None, None] * 1e-12, 2.0 / den.clamp_min(1e-300), 0.0)
            per_block = (kp.pow(2) * inv).sum((-1, -2))
            sums = torch.stack([part.sum() for part in per_block.split(sizes)])
            for (n, _), v2 in zip(group, sums.clamp_min(0.0).sqrt().tolist(), strict=True):
                out[n] = v2
        return out

    def _reset_captured(self) -> None:
        """The applied-factor gradients are summed over one step's backward passes."""
        for layer in self.hybrid_layers.values():
            layer._applied_grads.clear()

    def _all_reduce_captured(self) -> None:
        """Under data parallelism the captured applied-factor gradients are local: average them
        over the ranks (the parameters' .grad already are), so every rank computes the same λ."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        world = dist.get_world_size()
        for name in sorted(self.hybrid_layers):
            layer = self.hybrid_layers[name]
            if not layer.parametrized_lowrank or not layer.lowrank_active:
                continue
            for key in ("A", "B"):
                t = layer._applied_grads.get(key)
                if t is None:  # the same on every rank: same graph, same hooks
                    continue
                dist.all_reduce(t)
                t /= world

    def _record(self, step: int, source: str) -> dict[str, Any]:
        rec = {
            "step": step,
            "source": source,
            "rule": self.config.rule,
            "signal": self.config.signal,
            "lambdas": self.lambdas(),
            # (ρ_lr, ρ_orth) per layer; the key keeps its first name for the metrics readers
            "branch_grad_norms": {
                n: list(layer.last_grad_norms)
                for n, layer in self.hybrid_layers.items()
                if layer.last_grad_norms is not None
            },
        }
        self.lambda_history.append(rec)
        return rec

    def lambdas(self) -> dict[str, float]:
        return {n: round(layer.lambda_value(), 6) for n, layer in self.hybrid_layers.items()}

    # ----------------------------------------------------------- persistence
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every adapter tensor (parameters and buffers), never the frozen base weights."""
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.hybrid_layers.items():
            for key, value in layer.state_dict().items():
                if key.startswith("base_layer."):
                    continue
                out[f"{name}.{key}"] = value.detach().contiguous().clone()
        return out

    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.adapter_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                "adapter weights do not fit this model/config: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        for name, layer in self.hybrid_layers.items():
            prefix = f"{name}."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            result = layer.load_state_dict(sub, strict=False)
            bad = [k for k in result.missing_keys if not k.startswith("base_layer.")]
            if bad or result.unexpected_keys:
                raise ValueError(f"{name}: missing {bad}, unexpected {result.unexpected_keys}")
        self._sync_trainable()

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        if cfg.get("base_model_name_or_path") is None:
            cfg["base_model_name_or_path"] = getattr(self.model, "name_or_path", None) or None
        (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        save_file(
            self.adapter_state_dict(), str(directory / WEIGHTS_NAME), metadata={"format": "pt"}
        )
        if self.lambda_history:
            (directory / "lambda_history.json").write_text(json.dumps(self.lambda_history))
        return directory

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path) -> HybridModel:
        """Rebuild the adapter on an unmodified base model and load its weights."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        config = HybridConfig.from_dict(json.loads(cfg_path.read_text()))
        wrapped = cls(model, config)
        device = next(iter(model.parameters())).device
        state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
        wrapped.load_adapter_state_dict(state)
        return wrapped

    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight and return the plain model."""
        for name, layer in self.hybrid_layers.items():
            base = layer.base_layer
            with torch.no_grad():
                base.weight.copy_(layer.merged_weight().to(base.weight.dtype))
            _set_module(self.model, name, base)
        self.hybrid_layers = {}
        return self.model


def estimate_weight_gradients(
    model: nn.Module,
    module_names: list[str],
    grad_batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Average full-weight gradients of the named linear layers over ``grad_batches``.

    Delegates to peft's LoRA-GA ``estimate_gradients`` so the hybrid and LoRA-GA see the same
    gradient. ``loss_fn(model, batch)`` defaults to the model's own loss on ``labels``.
    """
    from peft import LoraConfig
    from peft.tuners.lora.loraga import estimate_gradients

    batches = list(grad_batches)
    if not batches:
        raise ValueError("grad_batches is empty: the gradient estimation needs at least one batch")
    fn = loss_fn or default_loss

    def train_step() -> None:
        for batch in batches:
            fn(model, batch).backward()

    # a regex string is matched with re.fullmatch by peft: exactly these modules
    cfg = LoraConfig(target_modules="(" + "|".join(re.escape(n) for n in module_names) + ")")
    with warnings.catch_warnings():  # peft's counting hook warns when inputs need no grad
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        estimate_gradients(model, cfg, train_step)
    out = {}
    for n in module_names:
        module = model.get_submodule(n)
        grad = getattr(module, "_peft_loraga_grad", None)
        if grad is None:
            raise RuntimeError(f"no gradient reached {n}: is it used by the loss?")
        out[n] = grad
        del module._peft_loraga_grad
    return out


def default_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "labels")
    return model(**{k: batch[k] for k in keys if k in batch}).loss
