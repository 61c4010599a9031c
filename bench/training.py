"""Step time and peak memory of every fine-tuning method ÷ LoRA, on the same batch.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \\
    MALLOC_TOP_PAD_=1073741824 python bench/training.py [--models tiny,smollm2-135m,gemma-3-270m]

(the script sets those allocator variables for its workers itself; see shared/REFERENCES.md
"Benchmark hygiene on CPU"). One worker process per (model, method):

1. loads the base model, applies the method, runs ``--warmup`` + ``--steps`` AdamW steps on a
   fixed seeded batch and records the peak RSS of those steps: the method's *peak memory*;
2. loads a second base copy with LoRA and times ``--steps`` rounds that alternate one LoRA step
   and one method step, so the *time ratio* is taken against a LoRA baseline in the same process
   under the same load (the machine is shared).

The time ratio is the median over rounds of (method step ÷ the adjacent LoRA step). Memory
ratios compare worker processes that each hold one method: the peak RSS during the steps (the
kernel's high-water mark, reset before the steps), after memory freed by set-up (loading, the
gradient-estimation pass) was handed back with ``malloc_trim``; "Δ" is that peak minus the RSS
after loading the base, i.e. what the method and its training steps add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
DEFAULT_METHODS = "lora,full,lora_ga,boft,oft,hybrid,hybrid_unitary,hybrid:hard"


class PeakRss:
    """Peak resident memory over a block: the kernel's own high-water mark (VmHWM), reset on
    entry through /proc/self/clear_refs, so no transient buffer is missed; where that is not
    available, a thread samples the RSS every few milliseconds."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _hwm() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.exact = self._hwm() is not None
        except OSError:
            self.exact = False
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        if self.exact:
            self.peak = max(self.peak, self._hwm() or 0)


def release_freed_memory() -> None:
    """Hand memory freed by set-up back to the OS (glibc keeps it under the bench settings)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def _method_config(spec: str):
    from training.methods import MethodConfig

    name, _, rule = spec.partition(":")
    hybrid = {"rule": rule} if rule else {}
    return MethodConfig(name=name, hybrid=hybrid)


def _load(model_name: str, seed: int):
    import torch

    from training.data import synthetic_texts
    from training.models import load_causal_lm, tiny_llama

    if model_name == "tiny":
        return tiny_llama(texts=synthetic_texts(), seed=seed)[0]
    model = load_causal_lm(model_name, dtype="float32")[0]
    model.train()
    torch.manual_seed(seed)
    return model


def worker(args: argparse.Namespace) -> dict:
    """One (model, method) measurement; prints a JSON line."""
    import psutil
    import torch

    from training.methods import apply_method
    from training.models import count_parameters

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    proc = psutil.Process()
    t0 = time.perf_counter()
    base = _load(args.model, args.seed)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(4, vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    release_freed_memory()
    rss_base = proc.memory_info().rss

    def build(spec: str, model):
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        m = apply_method(model, _method_config(spec), grad_batches=[batch])
        m.train()
        params = [p for p in m.parameters() if p.requires_grad]
        lr = 1e-5 if spec == "full" else 1e-4
        return m, torch.optim.AdamW(params, lr=lr), time.perf_counter() - t

    def step(m, opt) -> float:
        t = time.perf_counter()
        m(**batch).loss.backward()
        if hasattr(m, "refresh_lambdas"):
            m.refresh_lambdas(1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    model, opt, setup = build(args.method, base)
    trainable, total = count_parameters(model)
    release_freed_memory()  # the gradient-estimation pass must not count as training memory
    with PeakRss() as rss:
        solo = [step(model, opt) for _ in range(args.warmup + args.steps)]
    out = {
        "model": args.model,
        "method": args.method,
        "load_s": round(t0 and (time.perf_counter() - t0) - setup - sum(solo), 2),
        "setup_s": round(setup, 2),
        "solo_step_s": statistics.median(solo[args.warmup :]),
        "rss_base_mb": rss_base / 2**20,
        "peak_rss_mb": rss.peak / 2**20,
        "delta_mb": (rss.peak - rss_base) / 2**20,
        "trainable": trainable,
        "total": total,
    }
    if args.method != "lora":
        lora, lopt, _ = build("lora", _load(args.model, args.seed))
        for _ in range(args.warmup):
            step(lora, lopt)
        t_lora, t_method = [], []
        for i in range(args.steps):  # alternate the order inside each round too
            pair = [(lora, lopt, t_lora), (model, opt, t_method)]
            for m, o, acc in pair if i % 2 == 0 else pair[::-1]:
                acc.append(step(m, o))
        out["lora_step_s"] = statistics.median(t_lora)
        out["method_step_s"] = statistics.median(t_method)
        # median of the per-round ratios: adjacent steps share the machine's load of the moment
        out["time_ratio"] = statistics.median(
            m / lo for m, lo in zip(t_method, t_lora, strict=True)
        )
        out["peak_exact"] = rss.exact
    return out


def run_worker(model: str, method: str, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        model,
        "--method",
        method,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    env = {**os.environ, **MALLOC_ENV, "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        print(f"[{model}/{method}] failed:\n{res.stderr[-1500:]}", file=sys.stderr)
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
        except (ImportError, OSError, ValueError) as exc:
            print(f"skipping {model}: {exc}", file=sys.stderr)
            return False
    return Path(model).is_dir()


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<14} {'method':<16} {'step ms':>9} {'÷LoRA t':>8} {'peak MB':>9} "
        f"{'÷LoRA mem':>9} {'Δ MB':>8} {'÷LoRA Δ':>8} {'trainable':>11} {'setup s':>8}"
    )
    lines = [head, "-" * len(head)]
    lora = {r["model"]: r for r in rows if r["method"] == "lora"}
    for r in rows:
        base = lora.get(r["model"])
        tr = r.get("time_ratio", 1.0 if r["method"] == "lora" else float("nan"))
        mem = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        dmem = r["delta_mb"] / base["delta_mb"] if base and base["delta_mb"] > 0 else float("nan")
        step_ms = 1000 * r.get("method_step_s", r["solo_step_s"])
        lines.append(
            f"{r['model']:<14} {r['method']:<16} {step_ms:>9.1f} {tr:>8.2f} "
            f"{r['peak_rss_mb']:>9.0f} {mem:>9.2f} {r['delta_mb']:>8.0f} {dmem:>8.2f} "
            f"{r['trainable']:>11,} {r['setup_s']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,smollm2-135m,gemma-3-270m")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = [m for m in args.methods.split(",") if m]
    if "lora" not in methods:
        methods.insert(0, "lora")
    rows: list[dict] = []
    for model in [m for m in args.models.split(",") if m]:
        if not available(model):
            continue
        for method in methods:
            t = time.perf_counter()
            row = run_worker(model, method, args)
            if row is not None:
                rows.append(row)
                print(
                    f"  {model}/{method}: {time.perf_counter() - t:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"batch {args.batch} x {args.seq} tokens, fp32, {args.threads} threads, "
        f"{args.warmup} warm-up + {args.steps} measured steps; ÷LoRA t = median of per-round "
        "(method step ÷ adjacent LoRA step) in one process; peak MB = high-water RSS of a "
        "process holding one method during its steps; step ms = median method step"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
