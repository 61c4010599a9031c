"""Unitary and unit-norm constraints on selected sub-layers, and the measurements behind them.

Three constraints (docs/method.md §3), each optional and limited to the layers and projections a
``HybridConfig`` selects (``unitary_layers``, ``unitary_modules``):

* exact orthogonality of the hybrid's orthogonal branch: the Cayley map is solved exactly
  instead of by OFTv2's Neumann series (set in ``HybridLinear``; checked by
  ``orthogonality_errors``);
* a dense orthogonal rotation on the input of selected square projections, through torch's own
  ``torch.nn.utils.parametrizations.orthogonal``;
* unit-norm rows of the low-rank factor A, through ``torch.nn.utils.parametrize``.

``grad_norm_stats`` logs per-layer gradient norms so that "stabilises deep optimisation" can be
measured as the spread of those norms across layers and steps.
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


def add_dense_orthogonal(layer: Any) -> None:
    """Give a square projection a dense rotation Q in O(d) on its input, via torch's ``orthogonal``.

    Q starts at the identity (so the model is unchanged) and stays exactly orthogonal under any
    optimiser step, because it is a parametrisation (Cayley map), not a penalty. Restricted to
    square projections (d_in = d_out) so its cost stays that of the projection itself.
    """
    d_in, d_out = layer.in_features, layer.out_features
    if d_in != d_out:
        raise ValueError(
            f"{layer.name}: dense orthogonal parametrisation needs a square projection, "
            f"this one is {d_out}x{d_in}"
        )
    rot = nn.Linear(d_in, d_in, bias=False, device=layer.hybrid_A.device)
    with torch.no_grad():
        rot.weight.copy_(torch.eye(d_in))
    orthogonal(rot, orthogonal_map="cayley")
    layer.dense_rotation = rot


def _identity_error(q: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(q.shape[-1], dtype=torch.float64, device=q.device)
    q = q.double()
    return torch.linalg.matrix_norm(q.transpose(-1, -2) @ q - eye)


def orthogonality_errors(model: nn.Module) -> dict[str, float]:
    """||QᵀQ - I||_F of every hybrid layer's orthogonal transform (max over its blocks), keyed by
    the layer's name in the base model.

    Works on the blocks (cheap) at full strength and at the current mix; a dense rotation adds
    its own error. Layers without an orthogonal part are skipped.
    """
    from training.hybrid import HybridLinear

    out: dict[str, float] = {}
    for module in model.modules():
        if not isinstance(module, HybridLinear):
            continue
        with torch.no_grad():
            errs = [_identity_error(module.rotations(1.0)).max()]
            errs.append(_identity_error(module.rotations(1.0 - module.lam())).max())
            if module.dense_rotation is not None:
                errs.append(_identity_error(module.dense_rotation.weight))
        out[module.name] = float(max(errs))
    return out


def max_orthogonality_error(model: nn.Module, unitary_only: bool = False) -> float:
    """The largest ``orthogonality_errors`` value (0.0 when the model has no hybrid layer)."""
    from training.hybrid import HybridLinear

    errs = orthogonality_errors(model)
    if unitary_only:
        units = {m.name for m in model.modules() if isinstance(m, HybridLinear) and m.unitary}
        errs = {n: e for n, e in errs.items() if n in units}
    return max(errs.values(), default=0.0)


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
