"""Device, backend and precision selection (a pure function, every case on a CPU machine), and
the trainer's low-precision and gradient-checkpointing paths on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.device import Placement, detect_placement, move_batch, resolve_placement
from training.trainer import TrainConfig, train

CPU = {"cuda_available": False, "bf16_supported": False}
H100 = {"cuda_available": True, "bf16_supported": True, "cuda_device_count": 8}
T4 = {"cuda_available": True, "bf16_supported": False, "cuda_device_count": 1}
TORCHRUN_RANK3 = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}


def test_cpu_machine_trains_on_the_cpu_in_fp32_over_gloo() -> None:
    p = resolve_placement(**CPU, env={})
    assert p == Placement("cpu", "gloo", "float32", None, False, 0, 0, 1)
    p = resolve_placement(**CPU, env=TORCHRUN_RANK3)
    assert (p.device, p.backend, p.rank, p.world_size) == ("cpu", "gloo", 3, 4)


def test_gpu_machine_places_each_rank_on_its_local_gpu_in_bf16_over_nccl() -> None:
    p = resolve_placement(**H100, env=TORCHRUN_RANK3)
    assert (p.device, p.backend, p.local_rank, p.world_size) == ("cuda:3", "nccl", 3, 4)
    # bf16 frozen weights, fp32 trainables, bf16 autocast, no loss scaling
    assert (p.weights_dtype, p.autocast_dtype, p.grad_scaler) == ("bfloat16", "bfloat16", False)
    assert resolve_placement(**H100, env={}).device == "cuda:0"
    auto = resolve_placement(**H100, env={}, precision="autocast")
    assert (auto.weights_dtype, auto.autocast_dtype) == ("float32", "bfloat16")
    fp32 = resolve_placement(**H100, env={}, dtype="float32")
    assert (fp32.device, fp32.weights_dtype, fp32.autocast_dtype) == ("cuda:0", "float32", None)


def test_fp16_always_comes_with_a_grad_scaler_and_old_gpus_get_fp32() -> None:
    p = resolve_placement(**T4, env={}, dtype="float16")
    assert (p.autocast_dtype, p.grad_scaler) == ("float16", True)
    assert resolve_placement(**T4, env={}).compute_dtype == "float32"  # auto: no bf16 here
    with pytest.raises(ValueError, match="does not support bf16"):
        resolve_placement(**T4, env={}, dtype="bfloat16")
    with pytest.raises(ValueError, match="float16' needs a CUDA device"):
        resolve_placement(**CPU, env={}, dtype="float16")


def test_device_key_forces_either_side_and_bad_settings_fail_clearly() -> None:
    forced = resolve_placement(**H100, env=TORCHRUN_RANK3, device="cpu")
    assert (forced.device, forced.backend, forced.weights_dtype) == ("cpu", "gloo", "float32")
    with pytest.raises(ValueError, match="device='cuda' was asked for"):
        resolve_placement(**CPU, env={}, device="cuda")
    with pytest.raises(ValueError, match="LOCAL_RANK=1 but only 1 CUDA device"):
        resolve_placement(**T4, env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    with pytest.raises(ValueError, match="not an integer"):
        resolve_placement(**CPU, env={"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_placement(**CPU, env={}, dtype="int8")
    # bf16 on the CPU is allowed when asked for (CPU autocast), never chosen by auto
    cpu_bf16 = resolve_placement(**CPU, env={}, dtype="bfloat16")
    assert (cpu_bf16.device, cpu_bf16.autocast_dtype) == ("cpu", "bfloat16")


def test_this_machine_and_cpu_batches() -> None:
    p = detect_placement(env={})
    assert p.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "langs": ["en", "de"]}
    moved = move_batch(batch, "cpu")
    assert moved["input_ids"] is batch["input_ids"] and moved["langs"] == ["en", "de"]


def _config(run_dir: Path, **kw) -> TrainConfig:
    base = {
        "run_dir": str(run_dir),
        "model": "tiny",
        "data": "synthetic",
        "steps": 4,
        "batch_size": 8,
        "lr": 1e-2,
        "threads": 1,
        "progress": False,
        "eval_max_examples": 16,
        "method": {"name": "lora"},
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_bf16_weights_keep_fp32_trainables_and_train(tmp_path: Path) -> None:
    result = train(_config(tmp_path / "bf16", dtype="bfloat16", steps=6))
    foot = result.footprint
    assert (foot["device"], foot["weights_dtype"], foot["autocast_dtype"]) == (
        "cpu",
        "bfloat16",
        "bfloat16",
    )
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    from safetensors.torch import load_file

    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {v.dtype for v in adapter.values()} == {torch.float32}  # fp32 master weights
    fp32 = train(_config(tmp_path / "fp32", dtype="float32", steps=6))
    assert fp32.footprint["autocast_dtype"] is None
    # same data and init: bf16 changes the numbers a little, not the run
    assert abs(result.final_loss - fp32.final_loss) < 0.2 * fp32.final_loss


def test_gradient_checkpointing_gives_the_same_run(tmp_path: Path) -> None:
    plain = train(_config(tmp_path / "plain"))
    ckpt = train(_config(tmp_path / "ckpt", gradient_checkpointing=True))
    assert ckpt.footprint["gradient_checkpointing"] is True
    assert ckpt.final_loss == pytest.approx(plain.final_loss, abs=1e-6)
    with pytest.raises(ValueError, match="capture' is not possible here: gradient checkpointing"):
        train(_config(tmp_path / "c2", gradient_checkpointing=True, moo="mgda",
                      moo_gradients="capture"))  # fmt: skip


def test_checkpoints_carry_this_ranks_rng_state(tmp_path: Path) -> None:
    result = train(_config(tmp_path / "run", steps=2, checkpoint_every=2))
    ckpt = result.run_dir / "checkpoints" / "step_0000002"
    assert (ckpt / "rng_rank0.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 1 and state["steps"] == 2
