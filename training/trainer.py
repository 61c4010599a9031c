"""The trainer: seeded, gradient accumulation, checkpoints with exact resume, metrics as JSONL,
a footprint for every run, and data parallelism over gloo when launched by ``torchrun``.

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

from training.constraints import grad_norm_stats, max_orthogonality_error
from training.data import (
    TASKS,
    ClassificationTask,
    Collator,
    choose_verbalizers,
    count_tokens,
    encode_classification,
    encode_translation,
    example_losses,
    language_losses,
    read_records,
    score_classification,
    split_records,
    synthetic_classification_records,
    synthetic_texts,
    synthetic_translation_records,
    validate_records,
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
SCHEDULES = ("constant", "linear", "cosine")
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
}


@dataclass
class TrainConfig:
    """One training run. Defaults run the hybrid on gemma-3-270m; tests use ``model="tiny"``."""

    run_dir: str = ".govtune/runs/dev"
    model: str = "gemma-3-270m"
    dtype: str = "float32"
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
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
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
            ("dtype", ("float32", "bfloat16", "float16")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        for name in (
            "steps",
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
        d = {k: v for k, v in self.to_dict().items() if k not in _RESUME_FREE}
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
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
    """Example indices for (step, micro-batch, rank): a seeded permutation per epoch."""

    def __init__(self, n: int, seed: int, batch_size: int, accum: int, world: int, rank: int):
        if n == 0:
            raise ValueError("no training examples")
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
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
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


def _load_base(cfg: TrainConfig, records: list[dict[str, Any]], run_dir: Path, dist: _Dist):
    """Load the base model; ``tiny`` is built (seeded) from the task texts and saved in the run."""
    base_dir = run_dir / "base"
    if cfg.model != "tiny":
        model, tok = load_causal_lm(cfg.model, dtype=cfg.dtype)
        return model, tok, cfg.model
    if (base_dir / "config.json").is_file():
        model, tok = load_causal_lm(base_dir, dtype=cfg.dtype)
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
    model, tok = load_causal_lm(base_dir, dtype=cfg.dtype)  # identical weights on every rank
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


def _save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, opt, sched, cfg: TrainConfig
) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in adapter_tensors(model).items()},
        str(tmp / "adapter.safetensors"),
    )
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    state = {
        "step": step,
        "fingerprint": cfg.fingerprint(),
        "scheduler": sched.state_dict(),
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


def _load_checkpoint(path: Path, model: nn.Module, opt, sched, cfg: TrainConfig) -> int:
    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != cfg.fingerprint():
        raise ValueError(
            f"{path} was written by a run with a different configuration; resume needs the same "
            "model, data, method and optimiser settings (or pass resume=False / a new run_dir)"
        )
    load_adapter_tensors(model, load_file(str(path / "adapter.safetensors")))
    if isinstance(model, HybridModel):
        model._sync_trainable()
        if state.get("lambda_history") is not None:
            model.lambda_history = state["lambda_history"]
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
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
def evaluate(model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig) -> dict[str, Any]:
    """Dev loss per language (and accuracy for classification)."""
    if not data.dev:
        return {}
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
def _moo_backward(
    params: list[nn.Parameter],
    names: list[str],
    losses: dict[str, torch.Tensor],
    cfg: TrainConfig,
    step: int,
) -> dict[str, Any]:
    """Per-language losses → combined gradient added to ``p.grad`` (training/moo.py, issue 7)."""
    try:
        from training.moo import moo_backward
    except ImportError as exc:
        raise RuntimeError(
            f"moo={cfg.moo!r} needs training/moo.py, which is not available ({exc})"
        ) from exc
    scaled = {k: v / cfg.grad_accum for k, v in losses.items()}
    return moo_backward(params, scaled, cfg, names=names, step=step)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def train(
    config: TrainConfig, on_metrics: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Run (or resume) one training run; returns where everything was written.

    ``on_metrics`` receives every metrics record as it is written (the CLI forwards them to
    Dagster Pipes).
    """
    cfg = config.validate()
    t_setup = time.perf_counter()
    dist = _init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if not cfg.resume and dist.main:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        metrics_path.unlink(missing_ok=True)
    if dist.main:
        _write_json_atomic(run_dir / "config.json", cfg.to_dict())

    _seed_all(cfg.seed)
    records = load_task_records(cfg)
    base, tokenizer, base_name = _load_base(cfg, records, run_dir, dist)
    data = prepare_task(cfg, tokenizer, records)
    loss_fn = _make_loss(cfg)
    sampler = StepSampler(
        len(data.train), cfg.seed, cfg.batch_size, cfg.grad_accum, dist.world, dist.rank
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
    model = apply_method(base, cfg.method, grad_batches=grad_batches, loss_fn=loss_fn)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    param_names = [n for n, _ in named]
    if not params:
        raise RuntimeError("the method left no trainable parameter")
    fwd_model: nn.Module = model
    use_ddp = dist.world > 1 and cfg.moo == "none"
    if use_ddp:
        from torch.nn.parallel import DistributedDataParallel

        fwd_model = DistributedDataParallel(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    trainable, total = count_parameters(model)

    start, resumed_from = 0, None
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        start = resumed_from = _load_checkpoint(ckpt, model, opt, sched, cfg)
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
    step_times: list[float] = []
    step_tokens: list[int] = []
    peak_train_rss = rss_after_setup
    last_loss = float("nan")
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        tokens = 0
        loss_sum, lang_acc = 0.0, {}
        moo_diag = None
        for micro in range(cfg.grad_accum):
            batch = data.collate([data.train[i] for i in sampler.indices(step, micro)])
            tokens += count_tokens(batch)
            sync = (
                fwd_model.no_sync()
                if use_ddp and micro < cfg.grad_accum - 1
                else contextlib.nullcontext()
            )
            with sync:
                losses, counts = example_losses(fwd_model, batch, cfg.cls_loss)
                loss = (losses * counts).sum() / counts.sum().clamp_min(1)
                by_lang = language_losses(losses, counts, batch["langs"])
                if cfg.moo != "none":
                    moo_diag = _moo_backward(params, param_names, by_lang, cfg, step)
                else:
                    (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
            for lang, v in by_lang.items():
                lang_acc.setdefault(lang, []).append(float(v.detach()))
        if dist.world > 1:
            import torch.distributed as tdist

            if not use_ddp:  # MOO path: average the combined gradients ourselves
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    tdist.all_reduce(p.grad)
                    p.grad /= dist.world
            t = torch.tensor([loss_sum, float(tokens)])
            tdist.all_reduce(t)
            loss_sum, tokens = float(t[0]) / dist.world, int(t[1])
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        gstats = grad_norm_stats(model) if log_now else None
        lam_rec = model.refresh_lambdas(step + 1) if isinstance(model, HybridModel) else None
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        step_times.append(dt)
        step_tokens.append(tokens)
        peak_train_rss = max(peak_train_rss, _rss_mb())
        last_loss = loss_sum
        if log_now:
            rec: dict[str, Any] = {
                "step": step + 1,
                "loss": loss_sum,
                "loss_by_lang": {k: float(np.mean(v)) for k, v in sorted(lang_acc.items())},
                "lr": sched.get_last_lr()[0],
                "tokens": tokens,
                "step_time_s": dt,
                "tokens_per_s": tokens / dt if dt > 0 else None,
                "grad_norm": grad_norm,
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
        elif lam_rec is not None:
            emit({"step": step + 1, "event": "lambda_refresh", **lam_rec})
        if (
            cfg.eval_every
            and (step + 1) % cfg.eval_every == 0
            and step + 1 < cfg.steps
            and dist.main
        ):
            emit({"step": step + 1, "event": "eval", **evaluate(model, tokenizer, data, cfg)})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            if dist.main:
                _save_checkpoint(run_dir, step + 1, model, opt, sched, cfg)
            if dist.world > 1:
                torch.distributed.barrier()
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss_sum:.4f}")
        if cfg.debug_kill_at_step is not None and step + 1 == cfg.debug_kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a real, unclean kill
    pbar.close()

    eval_out = evaluate(model, tokenizer, data, cfg) if dist.main else {}
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
            "final_loss": last_loss,
            "steps": cfg.steps,
            "resumed_from": resumed_from,
            "eval": eval_out,
            "footprint": footprint,
            "adapter_dir": str(adapter_dir),
            "base_model": base_name,
            "method": cfg.method.name,
        }
        if isinstance(model, HybridModel):
            summary["lambdas"] = model.lambdas()
            summary["orth_error_max"] = max_orthogonality_error(model)
        _write_json_atomic(run_dir / "summary.json", summary)
        emit({"step": cfg.steps, "event": "final", "final_loss": last_loss, **eval_out})
    if dist.world > 1:
        torch.distributed.barrier()
    return TrainResult(
        run_dir, adapter_dir, last_loss, cfg.steps, footprint, eval_out, resumed_from
    )


def _make_loss(cfg: TrainConfig) -> Callable[[nn.Module, Any], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        losses, counts = example_losses(model, batch, cfg.cls_loss)
        return (losses * counts).sum() / counts.sum().clamp_min(1)

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
    return out
