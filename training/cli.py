"""``python -m training``: train from a YAML config and/or flags, or convert a shipped base model.

Examples::

    python -m training --config cfg.yaml
    python -m training --model tiny --method hybrid --rule learned --steps 20 --run-dir runs/x
    python -m training --set method.hybrid.block_size=16 --set lr=1e-3 ...
    torchrun --nproc-per-node 2 -m training --config cfg.yaml   # DDP: NCCL on GPUs, gloo on CPUs
    python -m training --set device=cuda --set dtype=bfloat16 ...    # training/device.py
    python -m training convert-base gemma-3-270m [--out DIR]
    python -m training export RUN_DIR OUT [--dtype float32] [--no-peft]   # training/export.py

Writes ``run_dir/metrics.jsonl``, ``run_dir/adapter/``, ``run_dir/footprint.json``,
``run_dir/summary.json`` and ``run_dir/checkpoints/``. Under Dagster Pipes
(``DAGSTER_PIPES_CONTEXT`` set) every metrics record is forwarded as a custom message, the
Pipes extra ``train_config`` (a dict of dotted keys) overrides the configuration, and the run
ends with ``report_asset_materialization``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part == "method":
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part} is not a mapping")
    node[parts[-1]] = value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="YAML file with TrainConfig fields")
    p.add_argument(
        "--extras",
        type=Path,
        help="JSON file of dotted config keys (what Dagster passes; every torchrun rank reads "
        "it, only rank 0 talks to Dagster)",
    )
    p.add_argument("--run-dir")
    p.add_argument(
        "--model", help="shipped alias (gemma-3-270m, smollm2-135m), path, Hub name or 'tiny'"
    )
    p.add_argument("--task", choices=["classification", "translation"])
    p.add_argument("--data", help="task records (.parquet/.jsonl) or 'synthetic'")
    p.add_argument("--method", help="full|lora|lora_ga|boft|oft|hybrid|hybrid_unitary")
    p.add_argument("--rule", help="hybrid mixing rule: fixed|grad_norm_ratio|learned|hard")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--moo", help="none|mgda|pcgrad|cagrad")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="default auto (CUDA if present)"
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, dotted for nesting (method.hybrid.block_size=16)",
    )
    p.add_argument("--debug-kill-at-step", type=int, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """Merge YAML, Pipes extras and flags (later wins) into a validated TrainConfig."""
    from training.trainer import TrainConfig

    cfg: dict[str, Any] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"config file not found: {args.config}")
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of TrainConfig fields")
        cfg.update(loaded)
    for key, value in (extra or {}).items():
        _set_dotted(cfg, key, value)
    if isinstance(cfg.get("method"), str):
        cfg["method"] = {"name": cfg["method"]}
    flags = {
        "run_dir": args.run_dir,
        "model": args.model,
        "task": args.task,
        "data": args.data,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "seed": args.seed,
        "max_length": args.max_length,
        "checkpoint_every": args.checkpoint_every,
        "threads": args.threads,
        "moo": args.moo,
        "device": args.device,
        "debug_kill_at_step": args.debug_kill_at_step,
    }
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if args.method is not None:
        _set_dotted(cfg, "method.name", args.method)
    if args.rule is not None:
        _set_dotted(cfg, "method.hybrid.rule", args.rule)
    if args.no_resume:
        cfg["resume"] = False
    if args.no_progress:
        cfg["progress"] = False
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(cfg, key.strip(), _parse_value(raw))
    return TrainConfig.from_dict(cfg)


def _metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """Dagster metadata: scalars as they are, mappings as JSON, the adapter as a path."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, bool | int | float | str) or value is None:
            if value is not None:
                out[key] = value
        elif isinstance(value, dict):
            out[key] = {"raw_value": value, "type": "json"}
    out["adapter_dir"] = {"raw_value": summary["adapter_dir"], "type": "path"}
    return out


@contextlib.contextmanager
def pipes_session() -> Iterator[Any]:
    """The Dagster Pipes context when launched by Dagster (``DAGSTER_PIPES_CONTEXT`` set), else
    None; shared by ``python -m training`` and ``python -m evaluation``."""
    if PIPES_ENV not in os.environ or os.environ.get("RANK", "0") != "0":
        yield None  # under torchrun only rank 0 reports to Dagster
        return
    from dagster_pipes import open_dagster_pipes  # dagster-free package, imported only here
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would fill the run's log in the Dagster UI
    with open_dagster_pipes() as pipes:
        yield pipes


def bad_input(exc: Exception, pipes: Any) -> int:
    """Bad input (config, data, model name): one clear line on stderr and in the Dagster run's
    log, no library traceback, exit status 2. ``GOVTUNE_DEBUG=1`` re-raises for the trace."""
    if os.environ.get("GOVTUNE_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    if pipes is not None:
        pipes.log.error(str(exc))
    return 2


def streamed_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The scalars of a metrics record, for the Pipes stream. The full record (per-layer
    gradient statistics, MOO diagnostics) stays in ``metrics.jsonl``, which the asset reads:
    a message of many kilobytes can reach Dagster's message reader half flushed, and one
    unparsable line stops the reader thread, losing every later message of the run,
    the materialisation included (seen once in a 100-step gemma run)."""
    return {k: v for k, v in rec.items() if v is None or isinstance(v, (bool, int, float, str))}


def _train(argv: Sequence[str]) -> int:
    from training.trainer import train

    args = build_parser().parse_args(list(argv))
    with pipes_session() as pipes:
        extra = json.loads(args.extras.read_text()) if args.extras is not None else {}
        if pipes is not None:
            extra.update(pipes.extras.get("train_config") or {})
        on_metrics = None
        if pipes is not None:

            def on_metrics(rec: dict[str, Any]) -> None:
                pipes.report_custom_message(streamed_record(rec))
                if "loss" in rec:
                    pipes.log.info(f"step {rec['step']}: loss {rec['loss']:.4f}")

        try:
            cfg = config_from_args(args, extra)
            result = train(cfg, on_metrics=on_metrics)
        except (ValueError, OSError, ImportError) as exc:
            return bad_input(exc, pipes)
        summary_path = Path(cfg.run_dir) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if pipes is not None and summary:
            pipes.report_asset_materialization(metadata=_metadata(summary))
        print(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    "final_loss": result.final_loss,
                    "adapter_dir": str(result.adapter_dir),
                }
            )
        )
    return 0


def _convert(argv: Sequence[str]) -> int:
    from training.models import SHIPPED_MODELS, convert_gemma_gguf, convert_smollm2_gguf

    p = argparse.ArgumentParser(prog="python -m training convert-base")
    p.add_argument("name", choices=sorted(SHIPPED_MODELS))
    p.add_argument("--out", type=Path)
    p.add_argument("--dtype", default=None)
    args = p.parse_args(list(argv))
    if args.name == "gemma-3-270m":
        out = convert_gemma_gguf(args.out, dtype=args.dtype or "bfloat16")
    else:
        out = convert_smollm2_gguf(args.out, dtype=args.dtype or "float32")
    print(out)
    return 0


def _export(argv: Sequence[str]) -> int:
    from training.export import export_run

    p = argparse.ArgumentParser(
        prog="python -m training export",
        description="a merged Hugging Face model (OUT/merged) and peft adapters where peft can "
        "express the method (OUT/peft)",
    )
    p.add_argument("run_dir", type=Path, help="a finished run directory (or its adapter/)")
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-peft", action="store_true", help="only the merged model")
    p.add_argument("--base-model", help="the base model, if not where the run recorded it")
    args = p.parse_args(list(argv))
    try:
        result = export_run(
            args.run_dir, args.out, args.dtype, peft=not args.no_peft, base_model=args.base_model
        )
    except (ValueError, OSError) as exc:
        return bad_input(exc, None)
    print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert-base":
        return _convert(argv[1:])
    if argv and argv[0] == "export":
        return _export(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _train(argv)
