"""Benchmark of bucket-level MOO: step time of each scope against a plain averaged step.

A small Llama-style causal LM (built in-process, random weights) trains on a synthetic mixed
batch of three "languages" (token distributions that overlap only partly, so their gradients
conflict), in two settings: full fine-tuning (the gradient is as large as the model: the
worst case for MOO's extra work) and LoRA r=8 on q/k/v/o (how govtune fine-tunes). Tables:

1. single process: each arm's median step time / the plain step (one forward over the mixed
   batch, one backward of its mean loss, SGD), measured in the same process with the arms
   interleaved round by round in a seeded random order; with each arm's memory from a fresh
   subprocess that runs only it: the RSS growth over the set-up model during three steps
   (with the no-trim malloc settings below, freed memory stays mapped, so this is the steps'
   high-water mark; the process-wide peak RSS is dominated by imports and says nothing);
2. two processes, gloo on CPU: plain DDP (default all-reduce hook) against the MOO comm hook
   (bucket, layer, global; exact and local_gram; the first K-1 language passes under
   ``no_sync`` or through the hook), with the bytes all-reduced per step.

MOO arms forward each language's sub-batch separately (``per_language_losses``), so their K
backward passes cost about one plain backward; ``mgda/bucket (mixed fwd)`` instead takes the
per-language losses from one mixed forward and pays K full backward passes, for contrast;
``(mixed fwd, capture)`` takes them from one mixed forward and one backward
(``LanguageGradientCapture``, LoRA setting only: full fine-tuning also trains RMSNorm weights).
The goal from issue 7 is <= 1.3x a plain step for the bucket scope.

3. ``--trainer``: the trainer's own path (``python -m training`` under ``torchrun``, 2 gloo
   processes, 1 thread each) on the same model, data and batch: plain DDP (``moo: none``)
   against ``moo: mgda`` with the bucket scope (the DDP communication hook, one solve per
   step) and, for contrast, the global scope. Each round launches the arms one after the
   other, in an order that rotates from round to round; a round's ratio is the arm's median
   step time over the timed steps (the trainer's own ``step_time_s``, after the warm-up steps)
   divided by the plain DDP run's of the same round, and the table shows the median ratio
   over the rounds (issue 13's goal: bucket <= 1.3x plain DDP).

Usage: ``.venv/bin/python bench/moo.py [--steps 12] [--threads 1] [--quick] [--no-ddp]
[--no-single] [--no-memory] [--settings full,lora] [--trainer [--rounds 3]]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# glibc returns big buffers to the OS every step unless told otherwise (REFERENCES.md)
_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
if any(os.environ.get(k) != v for k, v in _MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from training.moo import (  # noqa: E402
    LanguageGradientCapture,
    MooConfig,
    bucket_layout,
    moo_backward,
    per_language_losses,
)
from training.moo_ddp import ddp_moo_backward, register_moo_hook  # noqa: E402

LANGS = ["de", "en", "sw"]
SETTINGS = ("full", "lora")
# caps giving several buckets: full ~20 (as many as gemma-3-270m full FT at DDP's 25 MB), LoRA ~5
BUCKET_CAP_MB = {"full": 1.0, "lora": 0.05}

# name -> (moo, scope, per-language losses from: "split" forwards | "mixed" forward)
ARMS = {
    "plain": ("plain", "", ""),
    "none (per-lang fwd)": ("none", "bucket", "split"),
    "mgda/global": ("mgda", "global", "split"),
    "mgda/bucket": ("mgda", "bucket", "split"),
    "mgda/layer": ("mgda", "layer", "split"),
    "pcgrad/bucket": ("pcgrad", "bucket", "split"),
    "cagrad/bucket": ("cagrad", "bucket", "split"),
    "mgda/bucket (mixed fwd)": ("mgda", "bucket", "mixed"),
    "mgda/bucket (mixed fwd, capture)": ("mgda", "bucket", "capture"),
}
# one-backward capture needs every trainable tensor in an nn.Linear/nn.Embedding: not RMSNorm
SKIP = {"full": {"mgda/bucket (mixed fwd, capture)"}, "lora": set()}
# name -> (moo, scope, hook mode, first K-1 passes under no_sync)
DDP_ARMS = {
    "plain DDP": ("plain", "", "exact", True),
    "mgda/bucket hook": ("mgda", "bucket", "exact", True),
    "mgda/bucket hook, every pass": ("mgda", "bucket", "exact", False),
    "mgda/layer hook": ("mgda", "layer", "exact", True),
    "mgda/global hook": ("mgda", "global", "exact", True),
    "mgda/bucket local_gram": ("mgda", "bucket", "local_gram", True),
}


def build_model(quick: bool, setting: str = "full") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=2048 if quick else 4096,
        hidden_size=128 if quick else 256,
        intermediate_size=352 if quick else 688,
        num_hidden_layers=2 if quick else 4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    if setting == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        model = get_peft_model(model, lora)
        for name, p in model.named_parameters():  # LoRA B starts at zero: give it some signal
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model


def _trainable(model: torch.nn.Module) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def make_batch(step: int, per_lang: int, seq: int, vocab: int) -> tuple[dict, list[str]]:
    """Each language draws tokens from its own Zipf-shaped slice of the vocabulary, the slices
    overlapping by a third: shared and conflicting gradient directions, seeded per step."""
    gen = torch.Generator().manual_seed(10_000 + step)
    rows, langs = [], []
    width = vocab // 2
    for k, lang in enumerate(LANGS):
        start = k * width // 2
        ranks = torch.arange(1, width + 1, dtype=torch.float64)
        probs = (1.0 / ranks) / (1.0 / ranks).sum()
        ids = torch.multinomial(probs, per_lang * seq, replacement=True, generator=gen)
        rows.append((ids + start).clamp_max(vocab - 1).view(per_lang, seq))
        langs += [lang] * per_lang
    ids = torch.cat(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}, langs


def mixed_language_losses(model, batch, langs) -> dict[str, torch.Tensor]:
    """Per-language mean token losses taken from one forward over the mixed batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tok = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        reduction="none",
    ).view(logits.shape[0], -1)
    out = {}
    for lang in dict.fromkeys(langs):
        rows = torch.tensor([i for i, x in enumerate(langs) if x == lang])
        out[lang] = tok[rows].mean()
    return out


def run_step(arm, setting, model, names, params, opt, batch, langs, step: int) -> None:
    moo, scope, source = ARMS[arm]
    opt.zero_grad(set_to_none=True)
    if moo == "plain":
        model(**batch).loss.backward()
    else:
        cfg = MooConfig(moo=moo, moo_scope=scope, bucket_cap_mb=BUCKET_CAP_MB[setting])
        capture = None
        if source == "split":
            losses = per_language_losses(model, batch, langs)
        elif source == "mixed":
            losses = mixed_language_losses(model, batch, langs)
        else:
            capture = LanguageGradientCapture(model, params)
            with capture.recording():
                losses = mixed_language_losses(model, batch, langs)
        moo_backward(
            params, losses, cfg, names=names, step=step, capture=capture, example_languages=langs
        )
    opt.step()


def single_process(args, setting: str) -> dict[str, list[float]]:
    torch.set_num_threads(args.threads)
    arms = [a for a in ARMS if a not in SKIP[setting]]
    setups = {}
    for arm in arms:  # one model per arm, same initial weights
        model = build_model(args.quick, setting)
        names, params = _trainable(model)
        setups[arm] = (model, names, params, torch.optim.SGD(params, lr=1e-3))
    vocab = setups[arms[0]][0].config.vocab_size
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    rng = np.random.default_rng(0)
    rounds = range(args.warmup + args.steps)
    for r in tqdm(rounds, desc=f"single process, {setting}", unit="round"):
        batch, langs = make_batch(r, args.per_lang, args.seq, vocab)
        for arm in rng.permutation(arms):
            model, names, params, opt = setups[arm]
            t0 = time.perf_counter()
            run_step(arm, setting, model, names, params, opt, batch, langs, r)
            if r >= args.warmup:
                times[arm].append(time.perf_counter() - t0)
    model, names, params, _ = setups[arms[0]]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    buckets = len(bucket_layout(params, BUCKET_CAP_MB[setting]))
    print(f"\n{setting}: {n_total / 1e6:.2f} M parameters, {n_train / 1e6:.3f} M trainable "
          f"({len(params)} tensors, {buckets} buckets at bucket_cap_mb {BUCKET_CAP_MB[setting]}); "
          f"batch {len(LANGS)} languages x {args.per_lang} rows x {args.seq} tokens; "
          f"{args.threads} thread(s)")  # fmt: skip
    return times


def memory_of(arm: str, setting: str, args) -> tuple[float, float]:
    """(peak RSS, RSS growth over the set-up model) in MiB of a fresh process running one arm."""
    cmd = [sys.executable, __file__, "--memory-arm", arm, "--memory-setting", setting,
           "--threads", str(args.threads), "--per-lang", str(args.per_lang),
           "--seq", str(args.seq)]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
    peak, growth = out.stdout.strip().splitlines()[-1].split()
    return float(peak), float(growth)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(args) -> None:
    """With the no-trim malloc settings freed memory stays mapped, so the RSS after the steps
    is the high-water mark of what the steps needed on top of the set-up model."""
    torch.set_num_threads(args.threads)
    setting = args.memory_setting
    model = build_model(args.quick, setting)
    names, params = _trainable(model)
    opt = torch.optim.SGD(params, lr=1e-3)
    batches = [make_batch(r, args.per_lang, args.seq, model.config.vocab_size) for r in range(3)]
    before = _rss_mib()
    for r, (batch, langs) in enumerate(batches):
        run_step(args.memory_arm, setting, model, names, params, opt, batch, langs, r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak:.1f} {_rss_mib() - before:.1f}")


def _ddp_worker(
    rank: int, world: int, init_file: str, out: str, args_d: dict, setting: str
) -> None:
    args = argparse.Namespace(**args_d)
    cap = BUCKET_CAP_MB[setting]
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )  # fmt: skip
    try:
        setups = {}
        for arm, (moo, scope, mode, _) in DDP_ARMS.items():
            model = build_model(args.quick, setting)
            ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cap)
            state = None
            if moo != "plain":
                cfg = MooConfig(moo=moo, moo_scope=scope, bucket_cap_mb=cap)
                state = register_moo_hook(ddp, LANGS, cfg, mode=mode)
            opt = torch.optim.SGD(_trainable(model)[1], lr=1e-3)
            setups[arm] = (ddp, state, opt)
        vocab = setups["plain DDP"][0].module.config.vocab_size
        times = {arm: [] for arm in DDP_ARMS}
        sent = {arm: 0 for arm in DDP_ARMS}
        rng = np.random.default_rng(0)
        rounds = range(args.warmup + args.steps)
        desc = f"2-process gloo, {setting}"
        for r in tqdm(rounds, desc=desc, unit="round", disable=rank != 0):
            # each rank gets its own half of the data
            batch, langs = make_batch(1000 * rank + r, args.per_lang // 2, args.seq, vocab)
            for arm in rng.permutation(list(DDP_ARMS)):
                ddp, state, opt = setups[arm]
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                if state is None:
                    ddp(**batch).loss.backward()
                    sent[arm] = sum(p.numel() * 4 for p in _trainable(ddp.module)[1])
                else:
                    subs = {}
                    for lang in LANGS:
                        rows = torch.tensor([i for i, x in enumerate(langs) if x == lang])
                        subs[lang] = {k: v[rows] for k, v in batch.items()}
                    quiet = DDP_ARMS[arm][3]
                    diag = ddp_moo_backward(ddp, state, subs, lambda m, b: m(**b).loss, quiet)
                    sent[arm] = diag["bytes_allreduced"]
                opt.step()
                elapsed = time.perf_counter() - t0
                if r >= args.warmup:
                    times[arm].append(elapsed)
        if rank == 0:
            Path(out).write_text(json.dumps({"times": times, "bytes": sent}))
    finally:
        dist.destroy_process_group()


def two_process(args, setting: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        worker_args = (2, os.path.join(tmp, "init"), out, vars(args), setting)
        mp.spawn(_ddp_worker, args=worker_args, nprocs=2, join=True)
        return json.loads(Path(out).read_text())


# name -> trainer config keys (issue 13: the trainer's own MOO path under torchrun)
TRAINER_ARMS = {
    "plain DDP": {"moo": "none"},
    "mgda/bucket (trainer, DDP hook)": {"moo": "mgda", "moo_scope": "bucket"},
    "mgda/global (trainer, DDP hook)": {"moo": "mgda", "moo_scope": "global"},
    "mgda/bucket, split passes": {"moo": "mgda", "moo_scope": "bucket", "moo_gradients": "split"},
}
# full fine-tuning trains RMSNorm weights: no one-backward capture, every MOO arm is split
TRAINER_SKIP = {"full": {"mgda/bucket, split passes"}, "lora": set()}


def _trainer_inputs(root: Path, quick: bool) -> tuple[Path, Path]:
    """A local model directory (the bench's Llama, random weights, a word tokenizer) and a
    3-language classification file with prompts of about 48 words."""
    import random

    from training.data import synthetic_classification_records, synthetic_texts
    from training.models import build_word_tokenizer

    records = synthetic_classification_records(n_per_class=30, seed=0)
    rng = random.Random(0)
    for r in records:
        words = r["text"].split()
        r["text"] = " ".join(rng.choice(words) for _ in range(48))
        r["split"] = "train" if r["split"] == "train" else "dev"
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = build_word_tokenizer(synthetic_texts() + [r["text"] for r in records])
    model = build_model(quick, "full")
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config, key, getattr(tok, key))
    model_dir = root / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    return model_dir, data


def _trainer_run(root: Path, name: str, arm: dict, setting: str, model_dir, data, args) -> dict:
    import yaml

    warm, timed = args.warmup, args.steps
    run = root / name
    shutil.rmtree(run, ignore_errors=True)
    cfg = {
        "run_dir": str(run), "model": str(model_dir), "data": str(data), "max_length": 64,
        "method": {"name": "lora" if setting == "lora" else "full"}, "steps": warm + timed,
        "batch_size": 3 * args.per_lang, "threads": 1, "progress": False, "log_every": 1,
        "checkpoint_every": 10_000, "eval_max_examples": 8, "lr": 1e-3,
        "bucket_cap_mb": BUCKET_CAP_MB[setting], **arm,
    }  # fmt: skip
    cfg_file = root / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "training", "--config", str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: torchrun failed\n{out.stderr[-3000:]}")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step_time_s" in r and r["step"] > warm]
    moo = [r["moo"] for r in steps if "moo" in r]
    return {
        "median": statistics.median(r["step_time_s"] for r in steps),
        "bytes": moo[-1]["bytes_allreduced"] if moo else None,
        "groups": len(moo[-1]["groups"]) if moo else None,
        "trainable": json.loads((run / "footprint.json").read_text())["trainable_params"],
    }


def trainer_bench(args, setting: str) -> None:
    """The trainer's MOO path under torchrun against plain DDP, arms alternated per round."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, data = _trainer_inputs(root, args.quick)
        arms = [a for a in TRAINER_ARMS if a not in TRAINER_SKIP[setting]]
        results: dict[str, list[dict]] = {a: [] for a in arms}
        for r in tqdm(range(args.rounds), desc=f"trainer under torchrun, {setting}"):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for arm in order:
                name = f"r{r}-{arms.index(arm)}"
                results[arm].append(
                    _trainer_run(root, name, TRAINER_ARMS[arm], setting, model_dir, data, args)
                )
    plain = results["plain DDP"]
    trainable = plain[0]["trainable"]
    print(f"\n### trainer under torchrun, 2 gloo processes (1 thread each), {setting}\n")
    print(f"{trainable:,} trainable parameters, bucket_cap_mb={BUCKET_CAP_MB[setting]}, ")
    print(f"batch {3 * args.per_lang} per rank, {args.rounds} rounds of {args.steps} timed steps\n")
    print("| arm | median step (s) | ratio vs plain DDP (median over rounds) | per round | "
          "groups | all-reduced per step (MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for arm in arms:
        ratios = [a["median"] / b["median"] for a, b in zip(results[arm], plain, strict=True)]
        med = statistics.median(x["median"] for x in results[arm])
        last = results[arm][-1]
        mb = (
            f"{last['bytes'] / 1e6:.3f}"
            if last["bytes"] is not None
            else f"{4 * trainable / 1e6:.3f}"
        )
        per_round = ", ".join(f"{x:.2f}" for x in ratios)
        groups = last["groups"] if last["groups"] is not None else "-"
        print(f"| {arm} | {med:.4f} | **{statistics.median(ratios):.2f}x** | {per_round} | "
              f"{groups} | {mb} |")  # fmt: skip


def table(title: str, times: dict[str, list[float]], base: str, extra=None) -> None:
    print(f"\n### {title}\n")
    head = "| arm | median step (s) | IQR (s) | ratio vs " + base + " |"
    if extra:
        head += " " + " | ".join(extra["columns"]) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    base_t = statistics.median(times[base])
    for arm, ts in times.items():
        q = np.percentile(ts, [25, 75])
        med = statistics.median(ts)
        row = f"| {arm} | {med:.4f} | {q[1] - q[0]:.4f} | {med / base_t:.2f}x |"
        if extra:
            row += " " + " | ".join(extra["rows"][arm]) + " |"
        print(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed rounds per arm")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-lang", type=int, default=4, help="rows per language per step")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--settings", default="full,lora", help="comma list of full, lora")
    ap.add_argument("--quick", action="store_true", help="smaller model, fewer steps")
    ap.add_argument("--no-ddp", action="store_true")
    ap.add_argument("--no-single", action="store_true", help="only the 2-process tables")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--trainer", action="store_true", help="only the trainer's own path under torchrun"
    )
    ap.add_argument("--rounds", type=int, default=3, help="--trainer: alternating rounds")
    ap.add_argument("--memory-arm", help=argparse.SUPPRESS)
    ap.add_argument("--memory-setting", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_arm:
        memory_child(args)
        return
    if args.quick:
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    settings = [x.strip() for x in args.settings.split(",") if x.strip()]
    unknown = [x for x in settings if x not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")

    if args.trainer:
        for setting in settings:
            trainer_bench(args, setting)
        return
    for setting in settings if not args.no_single else []:
        times = single_process(args, setting)
        extra = None
        if not args.no_memory:
            desc = f"memory, {setting}"
            arms = [a for a in ARMS if a not in SKIP[setting]]
            mem = {arm: memory_of(arm, setting, args) for arm in tqdm(arms, desc=desc)}
            extra = {
                "columns": ["step peak over set-up (MiB)", "vs plain (MiB)"],
                "rows": {
                    a: [f"{g:.0f}", f"{g - mem['plain'][1]:+.0f}"] for a, (_, g) in mem.items()
                },
            }
        table(f"single process (CPU), {setting}", times, "plain", extra)
    for setting in settings if not args.no_ddp else []:
        res = two_process(args, setting)
        plain_bytes = res["bytes"]["plain DDP"]
        extra = {
            "columns": ["all-reduced per step (MB)", "bytes vs plain DDP"],
            "rows": {
                a: [f"{b / 1e6:.3f}", f"{b / plain_bytes:.2f}x"] for a, b in res["bytes"].items()
            },
        }
        title = f"2 processes, gloo on CPU (1 thread each), {setting}"
        table(title, res["times"], "plain DDP", extra)


if __name__ == "__main__":
    main()
