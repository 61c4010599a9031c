"""Step time and peak memory of every fine-tuning method ÷ LoRA, timed on the trainer's own step.

    python bench/training.py [--models gemma-3-270m] [--methods lora,hybrid,...] [--profile]

(run it under ``flock /tmp/govtune-heavy.lock`` on the shared machine; the script sets the
allocator variables of shared/REFERENCES.md "Benchmark hygiene on CPU" for its workers).

What is timed is ``training.trainer.train`` itself on a real task configuration (the
classification task with the verbaliser loss, batch 8 x 48 tokens as in ``configs/
reproduce.yaml``, fp32, 2 threads): the forward and backward, the hybrid's λ refresh
(``refresh_every``, default every 10 steps), the constraint check the trainer logs
(``orth_error_max``, every logged step), gradient statistics, clipping, AdamW and the metrics
record, all at the trainer's default frequencies. A step's time is the wall time between two
consecutive step records the trainer emits, so nothing the trainer does per step is left out.

* **Time**: one worker process runs two trainer runs, LoRA and the method, in two threads that
  take turns step by step (a baton handed over in the trainer's ``on_metrics`` callback), so
  both see the same machine load; the ratio is mean(method step) ÷ mean(LoRA step) over the
  measured steps (a multiple of ``refresh_every``, so periodic work is counted at its rate),
  with the median of the per-round ratios beside it.
* **Memory**: one worker process per method runs the trainer alone; its peak is the kernel's
  high-water RSS over the measured steps (reset after the warm-up, once memory freed by set-up
  was handed back with ``malloc_trim``); "Δ" is that peak minus the RSS of the loaded base.
* ``--profile``: where the time of a method's step goes, from cProfile over the measured steps
  of a run alone (trainer functions) and the torch profiler's top operators.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
DEFAULT_METHODS = "lora,lora_ga,oft,boft,hybrid,hybrid_unitary,hybrid:hard"


def _hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        return _hwm() is not None
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand memory freed by set-up back to the OS (glibc keeps it under the bench settings)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def train_config(args: argparse.Namespace, spec: str, run_dir: str) -> Any:
    """The trainer configuration of one benchmarked run (``spec`` = method[:hybrid rule])."""
    from training.trainer import TrainConfig

    name, _, rule = spec.partition(":")
    method: dict[str, Any] = {"name": name}
    if rule:
        method["hybrid"] = {"rule": rule}
    return TrainConfig.from_dict(
        {
            "run_dir": run_dir,
            "model": args.model,
            "data": "synthetic",
            "task": "classification",
            "steps": args.warmup + args.steps,
            "batch_size": args.batch,
            "max_length": args.seq,
            "lr": 3e-4,
            "seed": args.seed,
            "threads": args.threads,
            "progress": False,
            "checkpoint_every": 10_000,  # only the final one, after the measured steps
            "eval_max_examples": 8,
            "method": method,
        }
    )


class Baton:
    """Two runs take turns: each hands over after every step record it emits."""

    def __init__(self, names: list[str]) -> None:
        self.cv = threading.Condition()
        self.names, self.turn, self.done = names, names[0], set()
        self.log: list[str] = []  # who handed over, in order (one entry per step)

    def wait(self, name: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == name)

    def hand_over(self, name: str, finished: bool = False) -> None:
        with self.cv:
            if finished:
                self.done.add(name)
            else:
                self.log.append(name)
            others = [n for n in self.names if n != name and n not in self.done]
            self.turn = others[0] if others else name
            self.cv.notify_all()


def timed_run(cfg: Any, name: str, baton: Baton | None, out: dict[str, list[float]]) -> None:
    """Run the trainer; record the wall time between consecutive step records."""
    from training.trainer import train

    times: list[float] = []
    state = {"t": 0.0}

    def on_metrics(rec: dict[str, Any]) -> None:
        if "loss" not in rec:  # events (lambda_init, refresh, final) are not steps
            return
        now = time.perf_counter()
        times.append(now - state["t"])
        if baton is not None:
            baton.hand_over(name)
            baton.wait(name)
        state["t"] = time.perf_counter()

    if baton is not None:
        baton.wait(name)
    state["t"] = time.perf_counter()
    try:
        train(cfg, on_metrics=on_metrics)
    finally:
        out[name] = times
        if baton is not None:
            baton.hand_over(name, finished=True)


def time_worker(args: argparse.Namespace) -> dict[str, Any]:
    """LoRA and the method in alternating steps in one process."""
    import torch

    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {}
    names = ["lora", args.method] if args.method != "lora" else ["lora"]
    baton = Baton(names)
    with tempfile.TemporaryDirectory(prefix="govtune-bench-") as tmp:
        threads = [
            threading.Thread(
                target=timed_run,
                args=(train_config(args, n, f"{tmp}/{i}"), n, baton, times),
                daemon=True,
            )
            for i, n in enumerate(names)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    w = args.warmup
    lora = times["lora"][w:]
    method = times[args.method][w:]
    if len(method) != args.steps or len(lora) != args.steps:
        raise RuntimeError(f"expected {args.steps} measured steps, got {len(lora)}/{len(method)}")
    return {
        "model": args.model,
        "method": args.method,
        "turns": baton.log,
        "lora_step_s": statistics.fmean(lora),
        "method_step_s": statistics.fmean(method),
        "time_ratio": statistics.fmean(method) / statistics.fmean(lora),
        "time_ratio_median_round": statistics.median(
            m / lo for m, lo in zip(method, lora, strict=True)
        ),
        "method_steps_s": method,
        "lora_steps_s": lora,
    }


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The method's trainer run alone: peak RSS over the measured steps."""
    import torch

    from training.trainer import train

    torch.set_num_threads(args.threads)
    state: dict[str, Any] = {"steps": 0, "exact": False, "peak": 0}
    rss_load: dict[str, int] = {}

    def on_metrics(rec: dict[str, Any]) -> None:
        if "loss" not in rec:
            return
        state["steps"] += 1
        if state["steps"] == args.warmup:
            release_freed_memory()  # set-up (loading, gradient estimation) is not training
            state["exact"] = _reset_hwm()
            state["peak"] = _rss()
        elif state["steps"] > args.warmup:
            state["peak"] = max(state["peak"], _hwm() or 0, _rss())

    from training import models as models_mod

    load = models_mod.load_causal_lm

    def measured_load(*a: Any, **kw: Any):  # the RSS with the base model loaded, before the method
        out = load(*a, **kw)
        release_freed_memory()
        rss_load.setdefault("rss", _rss())
        return out

    import training.trainer as trainer_mod

    trainer_mod.load_causal_lm = measured_load
    with tempfile.TemporaryDirectory(prefix="govtune-bench-") as tmp:
        result = train(train_config(args, args.method, tmp), on_metrics=on_metrics)
    base = rss_load.get("rss", 0)
    return {
        "model": args.model,
        "method": args.method,
        "peak_rss_mb": state["peak"] / 2**20,
        "rss_base_mb": base / 2**20,
        "delta_mb": (state["peak"] - base) / 2**20,
        "peak_exact": state["exact"],
        "trainable": result.footprint.get("trainable_params"),
        "setup_s": result.footprint.get("setup_s"),
    }


def profile_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Where a run's measured steps spend their time (cProfile + torch profiler)."""
    import torch

    from training.trainer import train

    torch.set_num_threads(args.threads)
    prof = cProfile.Profile()
    tprof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    state = {"steps": 0, "t0": 0.0, "wall": 0.0}

    def on_metrics(rec: dict[str, Any]) -> None:
        if "loss" not in rec:
            return
        state["steps"] += 1
        if state["steps"] == args.warmup:
            state["t0"] = time.perf_counter()
            prof.enable()
            tprof.__enter__()
        elif state["steps"] == args.warmup + args.steps:
            tprof.__exit__(None, None, None)
            prof.disable()
            state["wall"] = time.perf_counter() - state["t0"]

    with tempfile.TemporaryDirectory(prefix="govtune-bench-") as tmp:
        train(train_config(args, args.method, tmp), on_metrics=on_metrics)
    stats = pstats.Stats(prof, stream=io.StringIO())
    per_step = {}
    wanted = {
        "forward (model)": ("modeling_", "forward"),
        "backward": ("graph.py", "_engine_run_backward"),
        "optimizer step": ("optimizer.py", "wrapper"),
        "hybrid: batched rotations (pre-hook)": ("hybrid.py", "_prepare_rotations"),
        "hybrid: λ refresh": ("hybrid.py", "refresh_lambdas"),
        "orth check (orth_error_max)": ("constraints.py", "max_orthogonality_error"),
        "grad stats": ("trainer.py", "_grad_layer_stats"),
        "clip_grad_norm_": ("clip_grad.py", "clip_grad_norm_"),
        "metrics record (emit)": ("trainer.py", "emit"),
    }
    for label, (file_part, func) in wanted.items():
        best = 0.0
        for (fname, _, fn), (_, _, _, ct, _) in stats.stats.items():
            if file_part in fname and fn == func:
                best = max(best, ct)
        per_step[label] = best / args.steps
    # emit calls this profiler's own callback: leave that out of the metrics record's time
    own = max(
        (ct for (f, _, fn), (_, _, _, ct, _) in stats.stats.items() if fn == "on_metrics"),
        default=0.0,
    )
    per_step["metrics record (emit)"] = max(
        per_step["metrics record (emit)"] - own / args.steps, 0.0
    )
    ops = tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return {
        "model": args.model,
        "method": args.method,
        "step_s": state["wall"] / args.steps,
        "per_step_s": per_step,
        "top_ops": ops,
    }


WORKERS = {"time": time_worker, "memory": memory_worker, "profile": profile_worker}

ABLATION_ARMS = {
    # name: (hybrid overrides, alpha, steps)
    "projection α=16 (trained)": ({}, 16.0, None),
    "projection α=4": ({}, 4.0, 0),
    "old grad-norm signal α=16": ({"signal": "grad_norm"}, 16.0, 0),
    "old grad-norm signal α=4": ({"signal": "grad_norm"}, 4.0, 0),
    "hard (projection)": ({"rule": "hard"}, 16.0, 0),
}


def lambda_ablation(args: argparse.Namespace, out_json: Path, out_png: Path | None) -> dict:
    """λ per layer at initialisation under the projection signal (α = 16 and 4), the earlier
    gradient-norm signal (α = 16 and 4) and the hard rule, plus λ after ``--ablation-steps``
    trainer steps of the default hybrid; a JSON record and a plot."""
    from training.trainer import TrainConfig, train

    arms: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="govtune-lambda-") as tmp:
        for i, (label, (over, alpha, steps)) in enumerate(ABLATION_ARMS.items()):
            cfg = train_config(args, "hybrid", f"{tmp}/{i}").to_dict()
            cfg["steps"] = args.ablation_steps if steps is None else steps
            cfg["method"]["alpha"] = alpha
            cfg["method"]["hybrid"] = {**cfg["method"].get("hybrid", {}), **over}
            cfg["eval_max_examples"] = 32
            t = time.perf_counter()
            result = train(TrainConfig.from_dict(cfg))
            hist = json.loads((result.adapter_dir / "lambda_history.json").read_text())
            arms[label] = {
                "init": hist[0]["lambdas"],
                "rho": hist[0]["branch_grad_norms"],
                "history": [{"step": h["step"], "lambdas": h["lambdas"]} for h in hist],
                "final_loss": result.final_loss,
                "eval": result.eval,
            }
            print(f"  {label}: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    names = list(next(iter(arms.values()))["init"])
    summary = {}
    for label, arm in arms.items():
        vals = [arm["init"][n] for n in names]
        summary[label] = {
            "mean": statistics.fmean(vals),
            "min": min(vals),
            "max": max(vals),
            "std": statistics.pstdev(vals),
        }
    trained = arms["projection α=16 (trained)"]["history"][-1]["lambdas"]
    vals = [trained[n] for n in names]
    summary["projection α=16 after training"] = {
        "mean": statistics.fmean(vals),
        "min": min(vals),
        "max": max(vals),
        "std": statistics.pstdev(vals),
    }
    hard = arms["hard (projection)"]["init"]
    summary["hard: layers given the low-rank branch"] = sum(v == 1.0 for v in hard.values())
    summary["hard: layers given the orthogonal branch"] = sum(v == 0.0 for v in hard.values())
    record = {"model": args.model, "layers": names, "arms": arms, "summary": summary}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2))
    if out_png is not None:
        _plot_ablation(record, out_png)
    return record


def _plot_ablation(record: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = record["layers"]
    short = [n.split("layers.")[-1].replace("self_attn.", "") for n in names]
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(12, 4.2), constrained_layout=True)
    styles = {
        "projection α=16 (trained)": ("C0", "-", "o", "projection signal, α=16 (init)"),
        "projection α=4": ("C0", ":", "x", "projection signal, α=4 (init)"),
        "old grad-norm signal α=16": ("C3", "-", "s", "earlier grad-norm signal, α=16"),
        "old grad-norm signal α=4": ("C3", ":", "^", "earlier grad-norm signal, α=4"),
    }
    for label, (color, ls, marker, legend) in styles.items():
        init = record["arms"][label]["init"]
        ax.plot(x, [init[n] for n in names], color=color, ls=ls, marker=marker, ms=3, label=legend)
    hist = record["arms"]["projection α=16 (trained)"]["history"]
    ax.plot(
        x,
        [hist[-1]["lambdas"][n] for n in names],
        color="C2",
        marker="d",
        ms=3,
        label=f"projection, α=16, after step {hist[-1]['step']}",
    )
    hard = record["arms"]["hard (projection)"]["init"]
    ax.scatter(
        [i for i, n in enumerate(names) if hard[n] == 0.0],
        [0.02] * sum(hard[n] == 0.0 for n in names),
        color="k",
        marker="v",
        label="hard rule: orthogonal branch",
    )
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set_xticks(x[::4], [s.split(".")[0] for s in short[::4]])
    ax.set_xlabel("decoder layer (q, k, v, o projections in order)")
    ax.set_ylabel("λ (share of the low-rank branch)")
    ax.set_ylim(0, 1)
    ax.set_title(f"λ per adapted projection, {record['model']}")
    ax.legend(fontsize=7, ncol=3, loc="lower left")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)


def run_worker(kind: str, model: str, method: str, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model",
        model,
        "--method",
        method,
        *("--steps", str(args.steps), "--warmup", str(args.warmup)),
        *("--batch", str(args.batch), "--seq", str(args.seq)),
        *("--threads", str(args.threads), "--seed", str(args.seed)),
    ]
    env = {**os.environ, **MALLOC_ENV, "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        print(f"[{model}/{method}/{kind}] failed:\n{res.stderr[-2500:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def available(model: str) -> bool:
    if model == "tiny":
        return True
    from training.models import SHIPPED_MODELS, ensure_base_model

    if model in SHIPPED_MODELS:
        try:
            ensure_base_model(model)  # converts once (about a minute) when the package is present
            return True
        except (ImportError, OSError, ValueError, RuntimeError) as exc:
            print(f"skipping {model}: {exc}", file=sys.stderr)
            return False
    return Path(model).is_dir()


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<14} {'method':<16} {'step ms':>9} {'LoRA ms':>9} {'÷LoRA t':>8} "
        f"{'(median)':>8} {'peak MB':>9} {'÷LoRA mem':>9} {'Δ MB':>8} {'÷LoRA Δ':>8} "
        f"{'trainable':>11}"
    )
    lines = [head, "-" * len(head)]
    lora = {r["model"]: r for r in rows if r["method"] == "lora"}
    for r in rows:
        base = lora.get(r["model"], {})
        mem = r.get("peak_rss_mb", float("nan"))
        bmem = base.get("peak_rss_mb", float("nan"))
        d, bd = r.get("delta_mb", float("nan")), base.get("delta_mb", float("nan"))
        step_ms = 1000 * r.get("method_step_s", float("nan"))
        lora_ms = 1000 * r.get("lora_step_s", float("nan"))
        lines.append(
            f"{r['model']:<14} {r['method']:<16} {step_ms:>9.0f} {lora_ms:>9.0f} "
            f"{r.get('time_ratio', float('nan')):>8.3f} "
            f"{r.get('time_ratio_median_round', float('nan')):>8.3f} "
            f"{mem:>9.0f} {mem / bmem:>9.3f} {d:>8.0f} {(d / bd) if bd else float('nan'):>8.2f} "
            f"{r.get('trainable') or 0:>11,}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gemma-3-270m")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--steps", type=int, default=10, help="measured steps (a multiple of 10)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timing workers per method")
    p.add_argument("--profile", action="store_true", help="also profile each method")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument(
        "--lambda-ablation",
        type=Path,
        metavar="JSON",
        help="instead of timing: λ per layer under each signal and rule (writes JSON, and --png)",
    )
    p.add_argument("--png", type=Path, help="the λ ablation plot")
    p.add_argument("--ablation-steps", type=int, default=30)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    if args.lambda_ablation:
        for k, v in MALLOC_ENV.items():
            os.environ.setdefault(k, v)
        args.model = args.models.split(",")[0]
        if not available(args.model):
            sys.exit(f"{args.model} is not available")
        record = lambda_ablation(args, args.lambda_ablation, args.png)
        print(json.dumps(record["summary"], indent=2))
        return
    methods = [m for m in args.methods.split(",") if m]
    if "lora" not in methods:
        methods.insert(0, "lora")
    rows: list[dict] = []
    profiles: list[dict] = []
    for model in [m for m in args.models.split(",") if m]:
        if not available(model):
            continue
        for method in methods:
            t = time.perf_counter()
            row: dict[str, Any] = {"model": model, "method": method}
            mem = run_worker("memory", model, method, args)
            if mem:
                row.update(mem)
            if method == "lora":
                row.update(time_ratio=1.0, time_ratio_median_round=1.0)
            else:
                timed = [run_worker("time", model, method, args) for _ in range(args.repeats)]
                timed = [x for x in timed if x]
                if timed:
                    row.update({k: v for k, v in timed[0].items() if k not in row})
                    row["time_ratio"] = statistics.median(x["time_ratio"] for x in timed)
                    row["time_ratios"] = [x["time_ratio"] for x in timed]
                    row["method_step_s"] = statistics.median(x["method_step_s"] for x in timed)
                    row["lora_step_s"] = statistics.median(x["lora_step_s"] for x in timed)
            if args.profile:
                prof = run_worker("profile", model, method, args)
                if prof:
                    profiles.append(prof)
            rows.append(row)
            took = time.perf_counter() - t
            print(f"  {model}/{method}: {took:.0f}s", file=sys.stderr, flush=True)
    for r in rows:
        if r["method"] == "lora":
            others = [x for x in rows if x["model"] == r["model"] and "lora_step_s" in x]
            if others:
                r["lora_step_s"] = r["method_step_s"] = statistics.median(
                    x["lora_step_s"] for x in others
                )
    print(
        f"trainer steps: classification (verbaliser loss), batch {args.batch} x {args.seq} tokens, "
        f"fp32, {args.threads} threads, {args.warmup} warm-up + {args.steps} measured steps; "
        "÷LoRA t = mean method step ÷ mean LoRA step, the two runs alternating step by step in "
        "one process ((median) = median of per-round ratios); peak MB = high-water RSS of a "
        "process running that method alone over its measured steps"
    )
    print(table(rows))
    for prof in profiles:
        print(f"\nprofile {prof['model']}/{prof['method']}: {1000 * prof['step_s']:.0f} ms/step")
        for label, sec in prof["per_step_s"].items():
            print(f"  {label:<40} {1000 * sec:8.1f} ms/step")
        print(prof["top_ops"])
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "profiles": profiles}, indent=2))


if __name__ == "__main__":
    main()
