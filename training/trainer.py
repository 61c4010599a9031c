"""The trainer: seeded, gradient accumulation, checkpoints with exact resume, metrics as JSONL,
a footprint for every run, and data parallelism when launched by ``torchrun`` (NCCL on GPUs,
gloo on CPUs). Device and precision come from :func:`training.device.resolve_placement`.

Multi-objective steps (``moo`` set) combine the per-language gradients of the *whole* step
(all micro-batches) once: in one process with :func:`training.moo.apply_language_gradients`,
under ``torchrun`` inside DDP's communication hook (:mod:`training.moo_ddp`), which all-reduces
each bucket's per-language gradients and solves per bucket, so every rank applies the same
update (docs/moo.md).

Exact resume rests on three facts: the model is rebuilt deterministically (seed, then
``apply_method`` on the same gradient-estimation batches); a checkpoint holds everything that
training changes (adapter tensors, optimiser and scheduler state, RNG states); and the data order
is a pure function of (seed, step), so no iterator state is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.constraints import max_orthogonality_error
from training.data import (
    TASKS,
    ClassificationTask,
    Collator,
    choose_verbalizers,
    data_version,
    encode_classification,
    encode_translation,
    example_losses,
    example_target_count,
    language_losses,
    read_records,
    score_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
    synthetic_translation_records,
    validate_records,
)
from training.device import (
    DTYPES,
    Placement,
    cuda_rng_state,
    detect_placement,
    set_cuda_rng_state,
)
from training.hybrid import HybridModel
from training.methods import (
    MethodConfig,
    adapter_tensors,
    apply_method,
    load_adapter_tensors,
    save_adapter,
)
from training.models import count_parameters, load_causal_lm, tiny_llama

MOO_SOLVERS = ("none", "mgda", "pcgrad", "cagrad")
MOO_SCOPES = ("global", "bucket", "layer")
MOO_GRADIENTS = ("auto", "split", "capture")
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
# fields that may change between a run and its resumption without breaking exactness
_RESUME_FREE = {
    "run_dir",
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "eval_every",
    "eval_max_examples",
    "resume",
    "progress",
    "debug_kill_at_step",
    "schedule_total_steps",
    "extend_steps",
}


@dataclass
class TrainConfig:
    """One training run. Defaults run the hybrid on gemma-3-270m; tests use ``model="tiny"``."""

    run_dir: str = ".govtune/runs/dev"
    model: str = "gemma-3-270m"
    # placement (training/device.py): auto = cuda:LOCAL_RANK when CUDA is present, bf16 there
    device: str = "auto"
    dtype: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    task: str = "classification"
    data: str = "synthetic"
    train_split: str = "train"
    eval_split: str = "dev"
    train_langs: list[str] | None = None
    eval_langs: list[str] | None = None
    max_train_examples: int | None = None
    verbalizers: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    cls_loss: str = "verbalizer"
    max_length: int = 128
    method: MethodConfig = field(default_factory=MethodConfig)
    steps: int = 100
    extend_steps: bool = False
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    schedule_total_steps: int | None = None
    max_grad_norm: float | None = 1.0
    seed: int = 0
    grad_estimation_batches: int = 2
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    eval_every: int = 0
    eval_max_examples: int = 256
    resume: bool = True
    threads: int | None = None
    progress: bool = True
    moo: str = "none"
    moo_scope: str = "bucket"
    moo_normalization: str = "l2"
    bucket_cap_mb: float = 25.0
    mgda_solver: str = "pgd"
    cagrad_c: float = 0.5
    moo_backend: str = "govtune"
    moo_aggregator: str | None = None
    moo_gradients: str = "auto"
    moo_hook_mode: str = "exact"
    debug_kill_at_step: int | None = None

    def validate(self) -> TrainConfig:
        if isinstance(self.method, Mapping):
            self.method = MethodConfig.from_dict(self.method)
        self.method.validate()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name, allowed in (
            ("moo", MOO_SOLVERS),
            ("moo_scope", MOO_SCOPES),
            ("schedule", SCHEDULES),
            ("cls_loss", ("verbalizer", "vocab")),
            ("dtype", DTYPES),
            ("device", ("auto", "cpu", "cuda")),
            ("precision", ("auto", "weights", "autocast")),
            ("optimizer", OPTIMIZERS),
            ("moo_gradients", MOO_GRADIENTS),
            ("moo_hook_mode", ("exact", "local_gram")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if int(self.steps) < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in (
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "log_every",
            "max_length",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_estimation_batches < 1:
            raise ValueError("grad_estimation_batches must be >= 1")
        if self.moo != "none":
            from training.moo import resolve_config

            resolve_config(self)  # bucket_cap_mb, cagrad_c, mgda_solver, backend: fail early
            if self.dtype == "float16":
                raise ValueError(
                    "moo needs fp32 or bf16 gradients; use dtype bfloat16, not float16"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"] = (
            self.method.to_dict() if isinstance(self.method, MethodConfig) else self.method
        )
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        d = dict(data)
        if isinstance(d.get("method"), str):
            d["method"] = {"name": d["method"]}
        if isinstance(d.get("method"), Mapping):
            d["method"] = MethodConfig.from_dict(d["method"])
        return cls(**d).validate()

    def fingerprint(self) -> str:
        """Hash of everything that changes a run's result. The training data and a local model
        directory enter by content (:func:`training.data.data_version`), not by path: a moved
        data root or the same data written elsewhere keeps the fingerprint, different data
        under the same path changes it."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RESUME_FREE}
        d["data"] = _content_id(self.data)
        d["model"] = _model_id(self.model)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run_fingerprint(self, placement: Placement) -> str:
        """:meth:`fingerprint` plus what the process layout changes: world size, device type,
        dtypes (a checkpoint resumes only under the same ones)."""
        d = {"config": self.fingerprint(), **placement.fingerprint_part()}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _content_id(path: str) -> str:
    """A data file's content hash; names that are not files ("synthetic") stay as they are."""
    if path and Path(path).is_file():
        return data_version(path)
    return path


_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _model_id(model: str) -> str:
    """A local model directory by the content of its config, tokenizer and weights."""
    root = Path(model)
    if not (root / "config.json").is_file():
        return model
    files = sorted(
        [root / f for f in _MODEL_FILES if (root / f).is_file()] + list(root.glob("*.safetensors"))
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + data_version(f).encode() + b"\0")
    return f"model-sha256:{h.hexdigest()}"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    final_loss: float
    steps: int
    footprint: dict[str, Any]
    eval: dict[str, Any]
    resumed_from: int | None


# ----------------------------------------------------------------------------- helpers
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(placement: Placement) -> _Dist:
    """Join the process group torchrun set up: NCCL with CUDA, gloo without."""
    if placement.device_type == "cuda":
        torch.cuda.set_device(placement.torch_device)
    if placement.world_size <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        kw = {"device_id": placement.torch_device} if placement.device_type == "cuda" else {}
        dist.init_process_group(placement.backend, **kw)
    return _Dist(world=dist.get_world_size(), rank=dist.get_rank())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil ships with the venv
        return float("nan")


class StepSampler:
    """Example indices for (step, micro-batch, rank): a pure function of (seed, position).

    Unit weights: a seeded permutation per epoch (every example once per epoch). Otherwise
    (``weights``, e.g. a rehydrated training file's ``weight`` column) each epoch is n seeded
    draws with replacement, example i with probability weight_i / sum(weights), so an example
    of weight 3 is seen three times as often as one of weight 1 and one of weight 0 never.
    Every rank and every resumed run computes the same sequence without any iterator state.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        batch_size: int,
        accum: int,
        world: int,
        rank: int,
        weights: list[float] | None = None,
    ):
        if n == 0:
            raise ValueError("no training examples")
        self._weights: torch.Tensor | None = None
        if weights is not None:
            if len(weights) != n:
                raise ValueError(f"{len(weights)} weights for {n} examples")
            w = torch.tensor(weights, dtype=torch.float64)
            if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
                raise ValueError("example weights must be finite, >= 0 and not all zero")
            if not torch.all(w == w[0]):
                self._weights = w
        self.n, self.seed, self.b, self.accum, self.world, self.rank = (
            n,
            seed,
            batch_size,
            accum,
            world,
            rank,
        )
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            if self._weights is None:
                order = torch.randperm(self.n, generator=g)
            else:
                order = torch.multinomial(self._weights, self.n, replacement=True, generator=g)
            self._perms = {epoch: order.tolist()}
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        start = ((step * self.accum + micro) * self.world + self.rank) * self.b
        out = []
        for i in range(start, start + self.b):
            out.append(self._perm(i // self.n)[i % self.n])
        return out


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    total = cfg.schedule_total_steps or cfg.steps

    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


# ----------------------------------------------------------------------------- data
@dataclass
class TaskData:
    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    dev_records: list[dict[str, Any]]
    collate: Collator
    classification: ClassificationTask | None
    langs: list[str]


def load_task_records(cfg: TrainConfig) -> list[dict[str, Any]]:
    if cfg.data == "synthetic":
        if cfg.task == "classification":
            return synthetic_classification_records(seed=cfg.seed)
        return synthetic_translation_records(seed=cfg.seed)
    records = read_records(cfg.data)
    validate_records(records, cfg.task)
    return records


def _filter_langs(
    records: list[dict[str, Any]], langs: list[str] | None, task: str
) -> list[dict[str, Any]]:
    """Keep records in ``langs`` (translation: either side of the pair); None keeps all."""
    if not langs:
        return records
    if task == "classification":
        return [r for r in records if r["lang"] in langs]
    return [r for r in records if r["src_lang"] in langs or r["tgt_lang"] in langs]


def prepare_task(cfg: TrainConfig, tokenizer: Any, records: list[dict[str, Any]]) -> TaskData:
    """Records → encoded train/dev examples, verbalisers and the collator."""
    validate_records(records, cfg.task)
    train_recs = _filter_langs(split_records(records, cfg.train_split), cfg.train_langs, cfg.task)
    dev_recs = _filter_langs(split_records(records, cfg.eval_split), cfg.eval_langs, cfg.task)
    if not train_recs:
        raise ValueError(
            f"{cfg.data}: no records with split={cfg.train_split!r} in languages {cfg.train_langs}"
        )
    if cfg.max_train_examples:
        rng = random.Random(cfg.seed)
        rng.shuffle(train_recs)
        train_recs = train_recs[: cfg.max_train_examples]
    if len(dev_recs) > cfg.eval_max_examples:  # a seeded sample keeps every language
        dev_recs = random.Random(cfg.seed + 1).sample(dev_recs, cfg.eval_max_examples)
    if cfg.task == "classification":
        labels = sorted({r["label"] for r in train_recs})
        template = cfg.template or "{text}\nTopic:"
        task = choose_verbalizers(
            labels, tokenizer, cfg.verbalizers, template, candidates=_candidate_verbalizers()
        )
        dev_recs = [r for r in dev_recs if r["label"] in task.labels]
        train = encode_classification(train_recs, tokenizer, task, cfg.max_length)
        dev = encode_classification(dev_recs, tokenizer, task, cfg.max_length)
        collate = Collator("classification", tokenizer.pad_token_id, task.label_token_ids)
    else:
        task = None
        kw = {"template": cfg.template} if cfg.template else {}
        train = encode_translation(train_recs, tokenizer, cfg.max_length, **kw)
        dev = encode_translation(dev_recs, tokenizer, cfg.max_length, **kw)
        collate = Collator("translation", tokenizer.pad_token_id)
    langs = sorted({e["lang"] for e in train})
    return TaskData(train, dev, dev_recs, collate, task, langs)


def _candidate_verbalizers() -> dict[str, tuple[str, ...]]:
    """Label words the task builder proposes per domain (training/tasks.py), if present."""
    try:
        from training.tasks import CANDIDATE_VERBALISERS
    except ImportError:
        return {}
    return dict(CANDIDATE_VERBALISERS)


def _load_base(
    cfg: TrainConfig,
    records: list[dict[str, Any]],
    run_dir: Path,
    dist: _Dist,
    dtype: str = "float32",
):
    """Load the base model in ``dtype``; ``tiny`` is built (seeded) from the task texts and saved
    in the run."""
    base_dir = run_dir / "base"
    if cfg.model != "tiny":
        model, tok = load_causal_lm(cfg.model, dtype=dtype)
        return model, tok, cfg.model
    if (base_dir / "config.json").is_file():
        model, tok = load_causal_lm(base_dir, dtype=dtype)
        return model, tok, str(base_dir.resolve())
    texts = synthetic_texts() + [
        " ".join(
            str(r.get(k, ""))
            for k in ("text", "label", "source", "target", "lang", "src_lang", "tgt_lang")
        )
        for r in records
    ]
    model, tok = tiny_llama(texts=texts, seed=cfg.seed)
    if dist.main:
        tmp = base_dir.with_name("base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        tmp.rename(base_dir)
    if dist.world > 1:
        torch.distributed.barrier()
    model, tok = load_causal_lm(base_dir, dtype=dtype)  # identical weights on every rank
    return model, tok, str(base_dir.resolve())


# ----------------------------------------------------------------------------- checkpoints
def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = _checkpoints(Path(run_dir))
    return found[-1] if found else None


def _rng_tensors(placement: Placement) -> dict[str, torch.Tensor]:
    out = {"torch_rng": torch.get_rng_state()}
    cuda = cuda_rng_state(placement)
    if cuda is not None:
        out["cuda_rng"] = cuda
    return out


def _save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    opt,
    sched,
    cfg: TrainConfig,
    placement: Placement,
    dist: _Dist,
    scaler: Any = None,
    last_loss: float | None = None,
) -> Path | None:
    """Write ``checkpoints/step_N`` atomically; every rank adds its own torch/CUDA RNG state
    (``rng_rank{r}.safetensors``), rank 0 the rest. Call it on every rank."""
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.world > 1:
        torch.distributed.barrier()
    save_file(_rng_tensors(placement), str(tmp / f"rng_rank{dist.rank}.safetensors"))
    if dist.world > 1:
        torch.distributed.barrier()
    if not dist.main:
        return None
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in adapter_tensors(model).items()},
        str(tmp / "adapter.safetensors"),
    )
    if opt is not None:
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "grad_scaler.pt")
    py_state = random.getstate()
    np_state = np.random.get_state()
    state = {
        "step": step,
        "steps": cfg.steps,
        "fingerprint": cfg.fingerprint(),
        "run_fingerprint": cfg.run_fingerprint(placement),
        "world_size": placement.world_size,
        "last_loss": last_loss,
        "scheduler": sched.state_dict() if sched is not None else None,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "lambda_history": getattr(model, "lambda_history", None),
    }
    (tmp / "state.json").write_text(json.dumps(state, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(run_dir)[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    opt,
    sched,
    cfg: TrainConfig,
    placement: Placement,
    rank: int = 0,
    scaler: Any = None,
) -> int:
    state = json.loads((path / "state.json").read_text())
    saved_world = state.get("world_size")
    if saved_world is not None and saved_world != placement.world_size:
        raise ValueError(
            f"{path} was written by a run of {saved_world} process(es); this one has "
            f"{placement.world_size}: the data each rank sees and the update would change, so "
            "resume with the same world size (or start over with resume: false)"
        )
    if state["fingerprint"] != cfg.fingerprint() or state.get(
        "run_fingerprint", cfg.run_fingerprint(placement)
    ) != cfg.run_fingerprint(placement):
        raise ValueError(
            f"{path} was written by a run with a different configuration; resume needs the same "
            "model, data, method and optimiser settings (or pass resume=False / a new run_dir)"
        )
    saved_steps = state.get("steps")
    if saved_steps is not None and saved_steps != cfg.steps and not cfg.extend_steps:
        raise ValueError(
            f"{path} belongs to a run of {saved_steps} steps; this configuration asks for "
            f"{cfg.steps}, which changes the run (its schedule, its end). Set extend_steps: true "
            "to continue it to the new length, or start over with resume: false"
        )
    if cfg.steps < int(state["step"]):
        raise ValueError(
            f"{path} is at step {state['step']}, beyond the {cfg.steps} steps asked for"
        )
    device = next(iter(model.parameters())).device
    tensors = {k: v.to(device) for k, v in load_file(str(path / "adapter.safetensors")).items()}
    load_adapter_tensors(model, tensors)
    if isinstance(model, HybridModel):
        model._sync_trainable()
        if state.get("lambda_history") is not None:
            model.lambda_history = state["lambda_history"]
    if opt is not None:
        opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if sched is not None and state.get("scheduler") is not None:
        sched.load_state_dict(state["scheduler"])
    if scaler is not None and (path / "grad_scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "grad_scaler.pt", weights_only=True))
    rng_file = path / f"rng_rank{rank}.safetensors"
    if not rng_file.is_file():
        rng_file = path / "rng.safetensors"  # checkpoints written before per-rank RNG states
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["torch_rng"])
    set_cuda_rng_state(placement, rng.get("cuda_rng"))
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    nps = state["numpy_rng"]
    np.random.set_state((nps[0], np.array(nps[1], dtype=np.uint32), *nps[2:]))
    return int(state["step"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= step:
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer: Any,
    data: TaskData,
    cfg: TrainConfig,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Dev loss per language (and accuracy for classification), under the run's autocast."""
    if not data.dev:
        return {}
    if placement is not None:
        with placement.autocast():
            return evaluate(model, tokenizer, data, cfg)
    was = model.training
    model.eval()
    per_lang_loss: dict[str, list[float]] = {}
    total, n = 0.0, 0.0
    for i in range(0, len(data.dev), cfg.batch_size):
        batch = data.collate(data.dev[i : i + cfg.batch_size])
        losses, counts = example_losses(model, batch, cfg.cls_loss)
        for lang, lo, c in zip(batch["langs"], losses.tolist(), counts.tolist(), strict=True):
            per_lang_loss.setdefault(lang, [0.0, 0.0])
            per_lang_loss[lang][0] += lo * c
            per_lang_loss[lang][1] += c
            total += lo * c
            n += c
    out: dict[str, Any] = {
        "dev_loss": total / max(n, 1),
        "dev_loss_by_lang": {k: v[0] / max(v[1], 1) for k, v in sorted(per_lang_loss.items())},
        "dev_examples": len(data.dev),
    }
    if data.classification is not None:
        probs = score_classification(
            model, tokenizer, data.dev_records, data.classification, cfg.batch_size, cfg.max_length
        )
        gold = np.array([data.classification.labels.index(r["label"]) for r in data.dev_records])
        correct = probs.argmax(-1) == gold
        out["dev_accuracy"] = float(correct.mean())
        by_lang: dict[str, list[bool]] = {}
        for r, ok in zip(data.dev_records, correct, strict=True):
            by_lang.setdefault(r["lang"], []).append(bool(ok))
        out["dev_accuracy_by_lang"] = {k: float(np.mean(v)) for k, v in sorted(by_lang.items())}
    model.train(was)
    return out


# ----------------------------------------------------------------------------- training
def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _grad_layer_stats(named: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    """Per decoder layer gradient norm of the trainable parameters and their spread (the
    format of :func:`training.constraints.grad_norm_stats`), with every norm computed on the
    device in one batched call and copied to the host once."""
    from training.constraints import _LAYER_RE, _layer_key

    with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
    if not with_grad:
        return {"per_layer": {}, "total": 0.0}
    norms = torch._foreach_norm([g.detach() for _, g in with_grad])
    sq_all = torch.stack([x.float() for x in norms]).pow(2).cpu().tolist()
    sq: dict[str, float] = {}
    for (name, _), v in zip(with_grad, sq_all, strict=True):
        m = _LAYER_RE.search(name)
        key = m.group(1) if m else "other"
        sq[key] = sq.get(key, 0.0) + v
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


class _MooStep:
    """The per-language gradients of one optimiser step, combined once (training/moo.py).

    Every example's loss enters its language's objective with weight ``count / N_lang``, where
    ``N_lang`` is the language's target count over the *global* step (all micro-batches, all
    ranks), so the objective is the language's mean loss over the whole step, however the
    micro-batches and ranks split it. Per-language gradients come from one backward of the
    mixed micro-batch (``capture``: :class:`training.moo.LanguageGradientCapture`, LoRA-style
    adapters only) or from one forward/backward per language sub-batch (``split``, any model).
    One process combines them in place (:func:`training.moo.apply_language_gradients`); under
    DDP the MOO communication hook does (:mod:`training.moo_ddp`): with ``split`` every
    language's sub-batches go through DDP, with ``capture`` the per-language gradients are
    built locally and handed to the hook in one synced backward of a one-row batch with zero
    loss (DDP's bucket then holds the preset ``p.grad``; the first step, before DDP has formed
    its buckets, runs ``split``)."""

    def __init__(self, cfg: TrainConfig, model, fwd_model, params, names, data, placement, dist):
        from training.moo import LanguageGradientCapture, resolve_config

        self.cfg, self.model, self.fwd_model = cfg, model, fwd_model
        self.params, self.names, self.data = params, names, data
        self.placement, self.dist = placement, dist
        self.moo_cfg = resolve_config(cfg)
        self.capture = None
        self.hook_state = None
        self.mode = "split"
        if dist.world > 1:
            from training.moo_ddp import register_moo_hook

            self.hook_state = register_moo_hook(
                fwd_model, data.langs, self.moo_cfg, mode=cfg.moo_hook_mode
            )
        if cfg.moo_gradients in ("auto", "capture"):
            why = None
            if cfg.gradient_checkpointing:
                why = "gradient checkpointing recomputes the recorded forward"
            else:
                try:
                    self.capture = LanguageGradientCapture(model, params)
                    self.mode = "capture"
                except ValueError as exc:
                    why = str(exc)
            if why is not None and cfg.moo_gradients == "capture":
                raise ValueError(f"moo_gradients='capture' is not possible here: {why}")

    # ----------------------------------------------------------------------------- counts
    def _totals(self, micro_examples: list[list[dict[str, Any]]]) -> dict[str, float]:
        """Global target count per training language for this step (one tiny all-reduce)."""
        langs = self.data.langs
        local = torch.zeros(len(langs), dtype=torch.float64)
        index = {lang: i for i, lang in enumerate(langs)}
        for examples in micro_examples:
            for e in examples:
                local[index[e["lang"]]] += example_target_count(e)
        if self.dist.world > 1:
            torch.distributed.all_reduce(local)
        return {lang: float(local[i]) for i, lang in enumerate(langs) if local[i] > 0}

    def _lang_loss(self, model: nn.Module, sub: tuple[dict[str, Any], float]) -> torch.Tensor:
        batch, scale = sub
        with self.placement.autocast():
            losses, counts = example_losses(model, batch, self.cfg.cls_loss)
        return (losses.float() * counts).sum() * scale

    # ----------------------------------------------------------------------------- the step
    def backward(self, micro_examples: list[list[dict[str, Any]]], step: int) -> dict[str, Any]:
        """Fill ``p.grad`` with the step's combined gradient; returns the diagnostics."""
        totals = self._totals(micro_examples)
        langs = [lang for lang in self.data.langs if lang in totals]
        mode = self.mode
        if self.hook_state is None:
            if mode == "capture":
                diag = self._capture_step(micro_examples, langs, totals, step)
            else:
                diag = self._split_step(micro_examples, langs, totals, step)
        elif mode == "capture" and getattr(self.fwd_model, "_has_rebuilt_buckets", True):
            diag = self._ddp_capture_step(micro_examples, langs, totals)
        else:
            mode = "split"
            diag = self._ddp_step(micro_examples, langs, totals)
        diag["gradients"] = mode
        diag["combined"] = "in-process" if self.hook_state is None else "ddp-hook"
        diag.setdefault("world_size", self.dist.world)
        n = sum(totals[lang] for lang in langs)
        weighted = zip(langs, diag["losses"], strict=True)
        diag["step_loss"] = sum(totals[lang] * v for lang, v in weighted) / n
        return diag

    def _subs(self, micro_examples, langs, totals):
        """Per language: this rank's sub-batches (one per micro-batch holding the language)."""
        world = self.dist.world
        subs: dict[str, list[tuple[dict[str, Any], float]]] = {lang: [] for lang in langs}
        for examples in micro_examples:
            for lang in langs:
                rows = [e for e in examples if e["lang"] == lang]
                if rows:
                    subs[lang].append((self.data.collate(rows), world / totals[lang]))
        return subs

    def _split_step(self, micro_examples, langs, totals, step) -> dict[str, Any]:
        from training.moo import apply_language_gradients

        subs = self._subs(micro_examples, langs, totals)
        grads, values = [], []
        for lang in langs:
            value = None
            for sub in subs[lang]:
                loss = self._lang_loss(self.fwd_model, sub)
                loss.backward()
                value = loss.detach() if value is None else value + loss.detach()
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in self.params])
            for p in self.params:
                p.grad = None
            values.append(value)
        losses = torch.stack(values).tolist()  # one host copy for all languages
        return apply_language_gradients(
            self.params, grads, self.moo_cfg, languages=langs, losses=losses,
            names=self.names, step=step,
        )  # fmt: skip

    def _capture_grads(self, micro_examples, langs, totals):
        """Per-language gradients (and loss values) of this rank's micro-batches from one
        mixed forward and one backward each, scaled like :meth:`_lang_loss`."""
        world = self.dist.world
        acc: dict[str, list[torch.Tensor] | None] = {lang: None for lang in langs}
        values = {lang: torch.zeros((), device=self.placement.torch_device) for lang in langs}
        for examples in micro_examples:
            batch = self.data.collate(examples)
            with self.capture.recording(), self.placement.autocast():
                losses, counts = example_losses(self.model, batch, self.cfg.cls_loss)
            weighted = losses.float() * counts
            present = sorted(set(batch["langs"]))
            lang_losses = {}
            for lang in present:
                rows = [i for i, x in enumerate(batch["langs"]) if x == lang]
                idx = torch.tensor(rows, device=weighted.device)
                lang_losses[lang] = weighted[idx].sum() * (world / totals[lang])
                values[lang] = values[lang] + lang_losses[lang].detach()
            got = self.capture.language_gradients(lang_losses, batch["langs"])
            for lang, g in zip(present, got, strict=True):
                if acc[lang] is None:
                    acc[lang] = g
                else:
                    for a, b in zip(acc[lang], g, strict=True):
                        a.add_(b)
        return acc, values

    def _capture_step(self, micro_examples, langs, totals, step) -> dict[str, Any]:
        from training.moo import apply_language_gradients

        acc, values = self._capture_grads(micro_examples, langs, totals)
        grads = [acc[lang] for lang in langs]
        losses = torch.stack([values[lang] for lang in langs]).tolist()
        return apply_language_gradients(
            self.params, grads, self.moo_cfg, languages=langs, losses=losses,
            names=self.names, step=step,
        )  # fmt: skip

    def _ddp_capture_step(self, micro_examples, langs, totals) -> dict[str, Any]:
        """Local per-language gradients (capture) into the hook: languages 0..K-2 through the
        stash, the last one preset in ``p.grad`` for one synced zero-loss backward."""
        acc, values = self._capture_grads(micro_examples, langs, totals)
        state = self.hook_state
        state.set_languages(langs)
        zeros = None
        for k, lang in enumerate(langs):
            state.start_language(k)
            grads = acc[lang]
            if grads is None:  # this rank has no row of the language this step
                zeros = zeros or [torch.zeros_like(p) for p in self.params]
                grads = zeros if k < len(langs) - 1 else [z.clone() for z in zeros]
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            if k < len(langs) - 1:
                state.stash_grads()
        state.set_losses(torch.stack([values[lang] for lang in langs]).tolist())
        dummy = self.data.collate(next(ex for ex in micro_examples if ex)[:1])
        (self._lang_loss(self.fwd_model, (dummy, 1.0)) * 0.0).backward()
        return state.finish_step()

    def _ddp_step(self, micro_examples, langs, totals) -> dict[str, Any]:
        from training.moo_ddp import ddp_moo_accumulated_backward

        subs = self._subs(micro_examples, langs, totals)
        dummy = next((s for lang in langs for s in subs[lang]), None)
        if dummy is None:  # this rank holds no example of any language: borrow one row
            dummy = (self.data.collate(micro_examples[0][:1]), 0.0)
        self.hook_state.set_languages(langs)
        return ddp_moo_accumulated_backward(
            self.fwd_model, self.hook_state, subs, self._lang_loss, dummy=dummy
        )


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fused = {}
    if params and params[0].device.type == "cuda":
        fused = {"fused": True}
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def train(
    config: TrainConfig, on_metrics: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Run (or resume) one training run; returns where everything was written.

    ``on_metrics`` receives every metrics record as it is written (the CLI forwards them to
    Dagster Pipes).
    """
    cfg = config.validate()
    t_setup = time.perf_counter()
    placement = detect_placement(cfg.device, cfg.dtype, cfg.precision)
    dist = _init_distributed(placement)
    device = placement.torch_device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if not cfg.resume and dist.main:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        metrics_path.unlink(missing_ok=True)
    if dist.world > 1:
        torch.distributed.barrier()
    if dist.main:
        _write_json_atomic(run_dir / "config.json", cfg.to_dict())

    _seed_all(cfg.seed)
    if placement.device_type == "cuda":
        torch.cuda.manual_seed(cfg.seed)
    records = load_task_records(cfg)
    # full fine-tuning trains every weight: keep them fp32 (master weights), autocast the rest
    load_dtype = "float32" if cfg.method.name == "full" else placement.weights_dtype
    base, tokenizer, base_name = _load_base(cfg, records, run_dir, dist, load_dtype)
    base.to(device)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers' newer name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    data = prepare_task(cfg, tokenizer, records)
    data.collate.device = str(device)
    loss_fn = _make_loss(cfg, placement)
    sampler = StepSampler(
        len(data.train),
        cfg.seed,
        cfg.batch_size,
        cfg.grad_accum,
        dist.world,
        dist.rank,
        weights=[e.get("weight", 1.0) for e in data.train],
    )
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    grad_batches = [
        data.collate(
            [
                data.train[int(i)]
                for i in torch.randint(len(data.train), (cfg.batch_size,), generator=g)
            ]
        )
        for _ in range(cfg.grad_estimation_batches)
    ]
    torch.manual_seed(cfg.seed)  # LoRA-GA's randomised SVD and adapter inits
    if placement.device_type == "cuda":
        torch.cuda.manual_seed(cfg.seed)
    with placement.autocast():
        model = apply_method(base, cfg.method, grad_batches=grad_batches, loss_fn=loss_fn)
    model.to(device)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for _, p in named:  # trainable parameters are the optimiser's fp32 master weights
        if p.dtype != torch.float32:
            p.data = p.data.float()
    params = [p for _, p in named]
    param_names = [n for n, _ in named]
    if not params and cfg.steps > 0:
        raise RuntimeError("the method left no trainable parameter")
    fwd_model: nn.Module = model
    use_ddp = dist.world > 1 and bool(params) and cfg.steps > 0
    if use_ddp:
        from torch.nn.parallel import DistributedDataParallel

        fwd_model = DistributedDataParallel(
            model,
            device_ids=[placement.local_rank] if placement.device_type == "cuda" else None,
            bucket_cap_mb=cfg.bucket_cap_mb,
        )
    opt = _make_optimizer(cfg, params) if params else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg)) if opt is not None else None
    scaler = torch.amp.GradScaler("cuda") if placement.grad_scaler and opt is not None else None
    moo_step = None
    if cfg.moo != "none" and params and cfg.steps > 0:
        moo_step = _MooStep(cfg, model, fwd_model, params, param_names, data, placement, dist)
    trainable, total = count_parameters(model)

    start, resumed_from = 0, None
    last_loss = float("nan")
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        start = resumed_from = _load_checkpoint(
            ckpt, model, opt, sched, cfg, placement, dist.rank, scaler
        )
        saved_loss = json.loads((ckpt / "state.json").read_text()).get("last_loss")
        if saved_loss is not None:
            last_loss = float(saved_loss)  # a finished run resumed again keeps its final loss
        if dist.main:
            _truncate_metrics(metrics_path, start)
    elif dist.main:
        metrics_path.unlink(missing_ok=True)
    setup_s = time.perf_counter() - t_setup
    rss_after_setup = _rss_mb()

    def emit(rec: dict[str, Any]) -> None:
        if not dist.main:
            return
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")
        if on_metrics is not None:
            on_metrics(rec)

    if start == 0 and isinstance(model, HybridModel) and model.lambda_history:
        emit({"step": 0, "event": "lambda_init", **model.lambda_history[0]})

    from tqdm.auto import tqdm

    pbar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not (dist.main and cfg.progress),
        desc=f"{cfg.method.name}",
        unit="step",
        dynamic_ncols=True,
    )
    cuda = placement.device_type == "cuda"
    step_times: list[float] = []
    step_tokens: list[int] = []
    peak_train_rss = rss_after_setup
    t_interval, interval_steps = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        micro_examples = [
            [data.train[i] for i in sampler.indices(step, micro)] for micro in range(cfg.grad_accum)
        ]
        tokens = sum(len(e["input_ids"]) for ex in micro_examples for e in ex)
        moo_diag = None
        if moo_step is not None:
            moo_diag = moo_step.backward(micro_examples, step)
            loss_t = torch.tensor(moo_diag["step_loss"])
            lang_means = dict(zip(moo_diag["languages"], moo_diag["losses"], strict=True))
        else:
            loss_t = torch.zeros((), device=device)
            lang_acc: dict[str, list[torch.Tensor]] = {}
            for micro, examples in enumerate(micro_examples):
                batch = data.collate(examples)
                sync = (
                    fwd_model.no_sync()
                    if use_ddp and micro < cfg.grad_accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with placement.autocast():
                        losses, counts = example_losses(fwd_model, batch, cfg.cls_loss)
                    losses = losses.float()
                    loss = (losses * counts).sum() / counts.sum().clamp_min(1)
                    scaled = loss / cfg.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_t = loss_t + loss.detach() / cfg.grad_accum
                for lang, v in language_losses(losses.detach(), counts, batch["langs"]).items():
                    lang_acc.setdefault(lang, []).append(v)
            lang_means = None
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        lam_rec = model.refresh_lambdas(step + 1) if isinstance(model, HybridModel) else None
        if scaler is not None:
            scaler.unscale_(opt)
        grad_norm_t = None
        if cfg.max_grad_norm:
            grad_norm_t = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        gstats = _grad_layer_stats(named) if log_now else None
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        interval_steps += 1
        if log_now or not cuda:
            if cuda:  # the step times of a GPU run are measured over the log interval
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            dt = (now - t_interval) / interval_steps if cuda else now - t0
            step_times.extend([dt] * (interval_steps if cuda else 1))
            t_interval, interval_steps = now, 0
        step_tokens.append(tokens)
        if log_now:
            tokens_all = tokens
            if dist.world > 1:  # one all-reduce per logged step: mean loss, summed tokens
                import torch.distributed as tdist

                local = (
                    loss_t.double().to(device)
                    if moo_step is None
                    else torch.zeros((), device=device, dtype=torch.float64)
                )
                t = torch.stack([local, torch.tensor(float(tokens), device=device).double()])
                tdist.all_reduce(t)
                tokens_all = int(t[1])
                if moo_step is None:  # the MOO step loss is global already
                    loss_t = t[0] / dist.world
            last_loss = float(loss_t)
            if lang_means is None:
                lang_means = {k: float(torch.stack(v).mean()) for k, v in sorted(lang_acc.items())}
            peak_train_rss = max(peak_train_rss, _rss_mb())
            dt = step_times[-1]
            rec: dict[str, Any] = {
                "step": step + 1,
                "loss": last_loss,
                "loss_by_lang": dict(sorted(lang_means.items())),
                "lr": sched.get_last_lr()[0],
                "tokens": tokens_all,
                "step_time_s": dt,
                "tokens_per_s": tokens_all / dt if dt > 0 else None,
                "grad_norm": float(grad_norm_t) if grad_norm_t is not None else None,
                "grad_layers": gstats,
            }
            if isinstance(model, HybridModel):
                rec["orth_error_max"] = max_orthogonality_error(model)
            if lam_rec is not None:
                rec["lambdas"] = lam_rec["lambdas"]
                rec["branch_grad_norms"] = lam_rec["branch_grad_norms"]
            if moo_diag is not None:
                rec["moo"] = moo_diag
            emit(rec)
            pbar.set_postfix(loss=f"{last_loss:.4f}")
        elif lam_rec is not None:
            emit({"step": step + 1, "event": "lambda_refresh", **lam_rec})
        if (
            cfg.eval_every
            and (step + 1) % cfg.eval_every == 0
            and step + 1 < cfg.steps
            and dist.main
        ):
            emit(
                {
                    "step": step + 1,
                    "event": "eval",
                    **evaluate(model, tokenizer, data, cfg, placement),
                }
            )
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(
                run_dir, step + 1, model, opt, sched, cfg, placement, dist, scaler, last_loss
            )
            if dist.world > 1:
                torch.distributed.barrier()
        pbar.update(1)
        if cfg.debug_kill_at_step is not None and step + 1 == cfg.debug_kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a real, unclean kill
    pbar.close()

    eval_out = evaluate(model, tokenizer, data, cfg, placement) if dist.main else {}
    adapter_dir = run_dir / "adapter"
    footprint = _footprint(
        cfg,
        step_times,
        step_tokens,
        setup_s,
        rss_after_setup,
        peak_train_rss,
        trainable,
        total,
        dist,
        placement,
    )
    if dist.main:
        extra = {
            "base_model": base_name,
            "task": cfg.task,
            "classification_task": data.classification.to_dict() if data.classification else None,
            "template": cfg.template,
            "max_length": cfg.max_length,
            "train_languages": data.langs,
            "seed": cfg.seed,
        }
        tmp = run_dir / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(model, cfg.method, tmp, extra=extra)
        if cfg.method.name == "full":
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp.rename(adapter_dir)
        _write_json_atomic(run_dir / "footprint.json", footprint)
        summary = {
            "final_loss": last_loss if cfg.steps > 0 else None,
            "steps": cfg.steps,
            "resumed_from": resumed_from,
            "eval": eval_out,
            "footprint": footprint,
            "adapter_dir": str(adapter_dir),
            "base_model": base_name,
            "method": cfg.method.name,
            "fingerprint": cfg.fingerprint(),
            "run_fingerprint": cfg.run_fingerprint(placement),
            "data_version": _content_id(cfg.data),
            "placement": placement.to_dict(),
        }
        if isinstance(model, HybridModel):
            summary["lambdas"] = model.lambdas()
            summary["orth_error_max"] = max_orthogonality_error(model)
        _write_json_atomic(run_dir / "summary.json", summary)
        final_rec = {"step": cfg.steps, "event": "final", **eval_out}
        final_rec["final_loss"] = last_loss if cfg.steps > 0 else None
        emit(final_rec)
    if dist.world > 1:
        torch.distributed.barrier()
    return TrainResult(
        run_dir, adapter_dir, last_loss, cfg.steps, footprint, eval_out, resumed_from
    )


def _make_loss(
    cfg: TrainConfig, placement: Placement | None = None
) -> Callable[[nn.Module, Any], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        ctx = placement.autocast() if placement is not None else contextlib.nullcontext()
        with ctx:
            losses, counts = example_losses(model, batch, cfg.cls_loss)
        return (losses.float() * counts).sum() / counts.sum().clamp_min(1)

    return loss_fn


def _footprint(
    cfg: TrainConfig,
    step_times: list[float],
    step_tokens: list[int],
    setup_s: float,
    rss_after_setup: float,
    peak_train_rss: float,
    trainable: int,
    total: int,
    dist: _Dist,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Wall time per step, tokens/s, peak memory and parameter counts of this process's run."""
    warm = step_times[2:] if len(step_times) > 4 else step_times
    out: dict[str, Any] = {
        "method": cfg.method.name,
        "model": cfg.model,
        "steps_run": len(step_times),
        "setup_s": setup_s,
        "train_wall_s": float(sum(step_times)),
        "step_time_s_mean": float(np.mean(warm)) if warm else None,
        "step_time_s_median": float(np.median(warm)) if warm else None,
        "tokens_per_s": float(sum(step_tokens) / sum(step_times))
        if step_times and sum(step_times) > 0
        else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_setup_mb": rss_after_setup,
        "peak_train_rss_sampled_mb": peak_train_rss,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "world_size": dist.world,
        "threads": torch.get_num_threads(),
    }
    if placement is not None:
        out.update(
            device=placement.device,
            backend=placement.backend if dist.world > 1 else None,
            weights_dtype=placement.weights_dtype,
            autocast_dtype=placement.autocast_dtype,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
    return out
