"""Where and in which precision a run trains: one small pure function and the helpers around it.

:func:`resolve_placement` takes what the machine offers (CUDA or not, bf16 support, the
``torchrun`` environment) and the run's settings (``device``, ``dtype``, ``precision``) and
returns a :class:`Placement`: the device (``cuda:LOCAL_RANK`` or ``cpu``), the process-group
backend (NCCL with CUDA, gloo without), the dtype the frozen weights are stored in, the autocast
dtype of the forward pass, and whether fp16 needs a ``GradScaler``. It reads nothing itself, so
every combination is testable on a CPU machine; :func:`detect_placement` feeds it the real
machine.

Precision (``dtype`` picks the low precision, ``precision`` how it is used):

* ``dtype: float32``: everything in fp32, no autocast (the CPU default).
* ``dtype: auto``: bf16 on a GPU that supports it, fp32 otherwise (CPU, or a GPU without bf16).
* ``precision: weights`` (the default, also what ``auto`` means): the *frozen* weights are
  stored in the low dtype (half the memory of the base model); the trainable parameters stay
  fp32 (the optimiser's master weights), and the forward runs under ``torch.autocast`` so
  the mixed dtypes meet in low-precision matrix products.
* ``precision: autocast``: every weight stays fp32; only the forward runs under autocast.
* ``dtype: float16`` always comes with a ``GradScaler`` (fp16 gradients underflow without
  loss scaling); bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PRECISIONS = ("auto", "weights", "autocast")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """The resolved device, backend and precision of one process of a run."""

    device: str  # "cpu" or "cuda:N"
    backend: str  # "nccl" | "gloo" (used only when world_size > 1)
    weights_dtype: str  # storage dtype of the frozen weights
    autocast_dtype: str | None  # dtype of the forward's autocast, None: no autocast
    grad_scaler: bool  # fp16: scale the loss, unscale before clipping
    local_rank: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def compute_dtype(self) -> str:
        """The precision of the forward's matrix products."""
        return self.autocast_dtype or self.weights_dtype

    def weights_torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.weights_dtype]

    def autocast(self) -> Any:
        """The forward pass's autocast context (a no-op context without low precision)."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=_TORCH_DTYPES[self.autocast_dtype])

    def fingerprint_part(self) -> dict[str, Any]:
        """What changes the numbers of a run: enters the resume fingerprint (not the rank)."""
        return {
            "device_type": self.device_type,
            "weights_dtype": self.weights_dtype,
            "autocast_dtype": self.autocast_dtype,
            "world_size": self.world_size,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key}={raw!r} is not an integer") from None


def resolve_placement(
    *,
    cuda_available: bool,
    bf16_supported: bool,
    env: Mapping[str, str],
    device: str = "auto",
    dtype: str = "auto",
    precision: str = "auto",
    cuda_device_count: int | None = None,
) -> Placement:
    """Pick device, backend and precision from the machine's facts and the run's settings.

    ``env`` is the process environment (``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE`` as torchrun
    sets them). ``device="cuda"`` without CUDA, fp16 without a GPU, bf16 on a GPU without
    bf16, or a ``LOCAL_RANK`` beyond the visible GPUs are errors, never a silent fallback.
    """
    for name, value, allowed in (
        ("device", device, DEVICES),
        ("dtype", dtype, DTYPES),
        ("precision", precision, PRECISIONS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")

    if device == "cuda" and not cuda_available:
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA device")
    use_cuda = cuda_available and device in ("auto", "cuda")
    if use_cuda:
        if cuda_device_count is not None and local_rank >= cuda_device_count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {cuda_device_count} CUDA device(s) are "
                "visible: start at most one process per GPU"
            )
        dev, backend = f"cuda:{local_rank}", "nccl"
    else:
        dev, backend = "cpu", "gloo"

    if dtype == "auto":
        low = "bfloat16" if use_cuda and bf16_supported else "float32"
    else:
        low = dtype
    if low == "float16" and not use_cuda:
        raise ValueError("dtype='float16' needs a CUDA device (fp16 on the CPU is slow and lossy)")
    if low == "bfloat16" and use_cuda and not bf16_supported:
        raise ValueError("dtype='bfloat16' but this GPU does not support bf16; use float16")
    if low == "float32":
        return Placement(dev, backend, "float32", None, False, local_rank, rank, world)
    mode = "weights" if precision == "auto" else precision
    weights = low if mode == "weights" else "float32"
    return Placement(dev, backend, weights, low, low == "float16", local_rank, rank, world)


def detect_placement(
    device: str = "auto",
    dtype: str = "auto",
    precision: str = "auto",
    env: Mapping[str, str] | None = None,
) -> Placement:
    """:func:`resolve_placement` on this machine and this process's environment."""
    cuda = torch.cuda.is_available()
    return resolve_placement(
        cuda_available=cuda,
        bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
        env=os.environ if env is None else env,
        device=device,
        dtype=dtype,
        precision=precision,
        cuda_device_count=torch.cuda.device_count() if cuda else None,
    )


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (non-blocking from pinned memory on CUDA)."""
    device = torch.device(device)
    if device.type == "cpu":
        return dict(batch)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.pin_memory().to(device, non_blocking=True)
        out[key] = value
    return out


def cuda_rng_state(placement: Placement) -> torch.Tensor | None:
    """This process's CUDA RNG state (None on the CPU): checkpoints carry it for exact resume."""
    if placement.device_type != "cuda":
        return None
    return torch.cuda.get_rng_state(placement.torch_device)


def set_cuda_rng_state(placement: Placement, state: torch.Tensor | None) -> None:
    if placement.device_type == "cuda" and state is not None:
        torch.cuda.set_rng_state(state, placement.torch_device)
