"""Unitary and unit-norm constraints on selected sub-layers, and the measurements behind them.

The constraints (docs/method.md §4), each optional and limited to the sub-layers a
``HybridConfig`` selects (``unitary_layers`` x ``unitary_modules``, e.g. ``[o_proj, v_proj]``):

* **Stiefel low-rank factors** (``stiefel_lowrank``): on a selected sub-layer of any shape
  (gemma's projections are all non-square) the low-rank branch is ``U M A`` with
  ``A A^T = I_r`` and ``U^T U = I_r`` (semi-orthogonal parametrisations: the QR retraction by
  default, torch's own ``torch.nn.utils.parametrizations.orthogonal`` with ``stiefel_map:
  householder``) and a free r x r core M, so every update direction is an orthonormal frame and
  the update's scale lives in M alone;
* **rotation applied in float32** (``unitary_fp32``): the selected sub-layers rotate their input
  in float32 even when the model runs in bf16/fp16 (a bf16 copy of an exact rotation is only
  orthogonal to about 1e-2);
* exact orthogonality of the hybrid's orthogonal branch (``exact_orthogonality``): the Cayley
  map is solved exactly instead of by OFTv2's Neumann series;
* unit-norm rows of the low-rank factor A (``unit_norm_lowrank``), through ``parametrize``;
* a dense orthogonal rotation on the input of selected square projections
  (``dense_orthogonal_modules``; gemma has none).

``applied_orthogonality_error`` checks what the forward pass actually applied, in the dtype it
applied it; ``orthogonality_errors`` checks the float32 parameters (full strength and current
mix). ``grad_norm_stats`` logs per-layer gradient norms so that "stabilises deep optimisation"
can be measured as the spread of those norms across layers and steps.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class UnitNormRows(nn.Module):
    """Parametrisation A = V / ||V||_row: each row of a low-rank factor has unit L2 norm."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def right_inverse(self, a: torch.Tensor) -> torch.Tensor:
        return a


def unit_norm_rows(module: nn.Module, attr: str) -> None:
    """Constrain each row of ``module.<attr>`` to unit norm (the other factor holds the scale)."""
    if parametrize.is_parametrized(module, attr):
        return
    parametrize.register_parametrization(module, attr, UnitNormRows())


class FixedReflectorSigns(nn.Module):
    """Keeps the diagonal of a Householder-reflector tensor at its ±1 signs.

    torch's Householder ``orthogonal`` map reads the column signs from the stored tensor's
    diagonal through ``int()``; weight decay (or any update) that moves a diagonal entry from
    ±1 towards 0 truncates it to 0 and zeroes that column. Placed before ``orthogonal`` in the
    parametrisation chain, this restores the signs recorded when the matrix was assigned.
    """

    def __init__(self, k: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("signs", torch.ones(k, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.diagonal_scatter(x, self.signs.to(x.dtype))

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        d = x.diagonal().sign()
        self.signs.copy_(torch.where(d == 0, torch.ones_like(d), d))
        return x


class StiefelQR(nn.Module):
    """Parametrisation X -> Q, the orthonormal factor of the thin QR decomposition of X with a
    non-negative diagonal of R (wide X: of Xᵀ, so Q has orthonormal rows).

    The QR retraction onto the Stiefel manifold: any full-rank X maps to a semi-orthogonal
    matrix, an orthonormal X maps to itself (so assigning a semi-orthogonal matrix sets it
    exactly), and forward plus backward cost one n x k QR -- on CPU about 1/40 of torch's
    Householder ``orthogonal`` map for the n x 8 factors of gemma's projections.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.shape[-2] < x.shape[-1]
        q, r = torch.linalg.qr(x.mT if wide else x)
        sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
        q = q * sign.unsqueeze(-2)
        return q.mT if wide else q

    def right_inverse(self, a: torch.Tensor) -> torch.Tensor:
        return a


STIEFEL_MAPS = ("qr", "householder")


def stiefel(module: nn.Module, attr: str, method: str = "qr") -> None:
    """Constrain a (possibly non-square) matrix ``module.<attr>`` to the Stiefel manifold:
    orthonormal rows if it is wide, orthonormal columns if it is tall.

    ``method="qr"`` (default): ``StiefelQR``, the QR retraction. ``"householder"``: torch's own
    ``orthogonal`` parametrisation with the Householder map and no trivialisation (the stored
    tensor holds the reflectors, no n x n base buffer), behind a ``FixedReflectorSigns`` guard
    that keeps it robust to weight decay; exact too, but its backward is slow on CPU.
    """
    if parametrize.is_parametrized(module, attr):
        return
    if method not in STIEFEL_MAPS:
        raise ValueError(f"stiefel map {method!r} is not one of {list(STIEFEL_MAPS)}")
    weight = getattr(module, attr)
    if method == "qr":
        parametrize.register_parametrization(module, attr, StiefelQR())
        with torch.no_grad():  # a valid starting point: the Q factor of what was there
            setattr(module, attr, StiefelQR()(weight.detach()))
        return
    guard = FixedReflectorSigns(min(weight.shape), device=weight.device)
    parametrize.register_parametrization(module, attr, guard)
    orthogonal(module, attr, orthogonal_map="householder", use_trivialization=False)
    with torch.no_grad():  # a valid starting point: the Q factor of what was there
        q = torch.linalg.qr(weight.T if weight.shape[0] < weight.shape[1] else weight)[0]
        setattr(module, attr, q.T if weight.shape[0] < weight.shape[1] else q)


def add_dense_orthogonal(layer: Any) -> None:
    """Give a square projection a dense rotation Q in O(d) on its input, via torch's ``orthogonal``.

    Q starts at the identity (so the model is unchanged) and stays exactly orthogonal under any
    optimiser step, because it is a parametrisation (Cayley map), not a penalty. Restricted to
    square projections (d_in = d_out) so its cost stays that of the projection itself; for the
    non-square projections of real models use ``stiefel_lowrank`` on ``unitary_modules``.
    """
    d_in, d_out = layer.in_features, layer.out_features
    if d_in != d_out:
        raise ValueError(
            f"{layer.name}: dense orthogonal parametrisation needs a square projection, "
            f"this one is {d_out}x{d_in} (for non-square sub-layers use stiefel_lowrank)"
        )
    rot = nn.Linear(d_in, d_in, bias=False, device=layer.hybrid_A.device)
    with torch.no_grad():
        rot.weight.copy_(torch.eye(d_in))
    orthogonal(rot, orthogonal_map="cayley")
    layer.dense_rotation = rot


def semi_orthogonality_error(q: torch.Tensor) -> torch.Tensor:
    """||QᵀQ - I||_F (tall or square) or ||QQᵀ - I||_F (wide) per matrix of a batch, from the
    tensor as given (its own rounding counts: a bf16 copy is upcast exactly). Computed in
    float32 (float64 for float64 input): a resolution of about 1e-6, far below the 1e-4 the
    checks require and the ~1e-2 of a bf16 rotation, at a third of float64's cost."""
    q = q.detach()
    q = q.double() if q.dtype == torch.float64 else q.float()
    if q.shape[-2] < q.shape[-1]:
        q = q.transpose(-1, -2)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return torch.linalg.matrix_norm(q.transpose(-1, -2) @ q - eye)


_identity_error = semi_orthogonality_error  # the earlier name


def _hybrid_layers(model: nn.Module) -> list[Any]:
    from training.hybrid import HybridLinear

    return [m for m in model.modules() if isinstance(m, HybridLinear)]


def applied_tensors(layer: Any) -> dict[str, torch.Tensor]:
    """The constrained tensors a hybrid layer's forward pass applies, in the dtype it applies
    them: what the last forward recorded, else what a forward at the base weight's dtype would
    apply now. Keys: ``rotation`` (factors, blocks, b, b), ``A`` and ``U`` (Stiefel factors),
    ``dense`` (the square dense rotation)."""
    if layer.applied:
        return dict(layer.applied)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if layer.orth_active:
            rdt = layer.rotation_dtype(layer.base_layer.weight.dtype)
            out["rotation"] = layer.rotations(1.0 - layer.lam()).to(rdt)
        if layer.stiefel and layer.lowrank_active:
            out["A"], out["U"] = layer.hybrid_A.detach(), layer.hybrid_U.detach()
        if layer.dense_rotation is not None:
            out["dense"] = layer.dense_rotation.weight.detach()
    return out


def applied_orthogonality_report(
    model: nn.Module, unitary_only: bool = False
) -> dict[str, dict[str, Any]]:
    """Per hybrid layer and constrained tensor: the (semi-)orthogonality error of the tensor the
    forward pass applied (max over blocks), with its dtype and shape, and whether the layer is a
    selected unitary sub-layer."""
    out: dict[str, dict[str, Any]] = {}
    for layer in _hybrid_layers(model):
        if unitary_only and not layer.unitary:
            continue
        rec: dict[str, Any] = {"unitary": bool(layer.unitary)}
        for key, t in applied_tensors(layer).items():
            mats = t.reshape(-1, *t.shape[-2:])
            rec[key] = {
                "error": float(semi_orthogonality_error(mats).max()),
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
            }
        out[layer.name] = rec
    return out


def applied_orthogonality_error(model: nn.Module, unitary_only: bool = False) -> dict[str, float]:
    """{layer name: largest (semi-)orthogonality error of any constrained tensor its forward
    pass applied}: the block rotations (``‖RᵀR - I‖_F``), the Stiefel factors (``‖AAᵀ - I‖_F``,
    ``‖UᵀU - I‖_F``) and a dense rotation, each in the dtype the forward applied it (bf16
    rotations of a bf16 model count as bf16 unless ``unitary_fp32`` keeps them in fp32).

    One batched float64 product over all layers' blocks, so the trainer can log it every step.
    ``unitary_only`` keeps the selected unitary sub-layers. Layers with no constrained tensor
    report 0.0.
    """
    layers = [m for m in _hybrid_layers(model) if m.unitary or not unitary_only]
    errs = {m.name: 0.0 for m in layers}
    # group same-shaped matrices so each group costs one batched product
    groups: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for layer in layers:
        for t in applied_tensors(layer).values():
            mats = t.reshape(-1, *t.shape[-2:])
            groups[tuple(mats.shape[-2:])].append((layer.name, mats))
    for items in groups.values():
        stacked = torch.cat([m for _, m in items])
        e = semi_orthogonality_error(stacked)
        sizes = [m.shape[0] for _, m in items]
        maxima = torch.stack([part.max() for part in e.split(sizes)]).tolist()
        for (name, _), v in zip(items, maxima, strict=True):
            errs[name] = max(errs[name], v)
    return errs


def orthogonality_errors(model: nn.Module) -> dict[str, float]:
    """||QᵀQ - I||_F of every hybrid layer's orthogonal transform computed from its float32
    parameters (max over blocks) at full strength and at the current mix, keyed by the layer's
    name in the base model; a dense rotation adds its own error. This checks the
    parametrisation; ``applied_orthogonality_error`` checks what the forward pass applied."""
    out: dict[str, float] = {}
    for module in _hybrid_layers(model):
        with torch.no_grad():
            errs = [semi_orthogonality_error(module.rotations(1.0)).max()]
            errs.append(semi_orthogonality_error(module.rotations(1.0 - module.lam())).max())
            if module.dense_rotation is not None:
                errs.append(semi_orthogonality_error(module.dense_rotation.weight))
            if module.stiefel:
                errs.append(semi_orthogonality_error(module.hybrid_A))
                errs.append(semi_orthogonality_error(module.hybrid_U))
        out[module.name] = float(max(errs))
    return out


def max_orthogonality_error(model: nn.Module, unitary_only: bool = False) -> float:
    """The largest ``applied_orthogonality_error`` value (0.0 without hybrid layers): what the
    trainer logs as ``orth_error_max`` every logged step."""
    return max(applied_orthogonality_error(model, unitary_only).values(), default=0.0)


def grad_norm_stats(model: nn.Module) -> dict[str, Any]:
    """Per decoder layer gradient norm of the trainable parameters, and their spread.

    Returns ``{"per_layer": {idx: norm}, "mean", "std", "min", "max", "cv", "total"}``; the
    coefficient of variation across layers is the number to watch for deep-optimisation
    stability. Parameters outside numbered layers (embeddings, head) go under ``"other"``.
    """
    sq: dict[str, float] = defaultdict(float)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        m = _LAYER_RE.search(name)
        key = m.group(1) if m else "other"
        sq[key] += float(p.grad.detach().float().pow(2).sum())
    per_layer = {k: math.sqrt(v) for k, v in sq.items()}
    numbered = [v for k, v in per_layer.items() if k != "other"]
    total = math.sqrt(sum(sq.values()))
    if not numbered:
        return {"per_layer": per_layer, "total": total}
    mean = sum(numbered) / len(numbered)
    std = math.sqrt(sum((v - mean) ** 2 for v in numbered) / len(numbered))
    return {
        "per_layer": {k: round(v, 6) for k, v in sorted(per_layer.items(), key=_layer_key)},
        "mean": mean,
        "std": std,
        "min": min(numbered),
        "max": max(numbered),
        "cv": std / mean if mean > 0 else 0.0,
        "total": total,
    }


def _layer_key(item: tuple[str, float]) -> tuple[int, str]:
    k = item[0]
    return (int(k), "") if k.isdigit() else (1 << 30, k)
