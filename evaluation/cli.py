"""``python -m evaluation --config eval.yaml`` (or Pipes extras ``eval_config``): score a finished
run into a predictions Parquet file (``evaluation/predict.py``); ``--method lexical --train-data
F`` scores the character-n-gram baseline fitted on ``F`` instead of a run.

Under Dagster Pipes (``DAGSTER_PIPES_CONTEXT`` set) the extra ``eval_config`` holds the
``PredictConfig`` fields and the run ends with a materialisation carrying the row counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def _config(args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    from evaluation.predict import PredictConfig

    cfg: dict[str, Any] = {}
    if args.config is not None:
        cfg.update(yaml.safe_load(Path(args.config).read_text()) or {})
    cfg.update(extra)
    for key in ("run_dir", "data", "out", "task", "method", "train_data", "protocol"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.train_langs is not None:
        cfg["train_langs"] = [x for x in args.train_langs.split(",") if x]
    cfg.setdefault("run_dir", "")  # the lexical baseline has none
    return PredictConfig.from_dict(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    from evaluation.predict import predict
    from training.cli import bad_input, pipes_session

    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML with PredictConfig fields")
    p.add_argument("--run-dir")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--task", choices=["classification", "translation"])
    p.add_argument("--protocol", choices=["zero_shot", "translate_train"])
    p.add_argument("--method", choices=["lexical"], help="score the lexical baseline, no model")
    p.add_argument("--train-data", help="lexical: the rows it is fitted on (split == train)")
    p.add_argument("--train-langs", help="lexical: comma-separated languages (default en)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    with pipes_session() as pipes:
        extra = dict(pipes.extras.get("eval_config") or {}) if pipes is not None else {}
        try:
            cfg = _config(args, extra)
            table = predict(cfg)
        except (ValueError, OSError) as exc:
            return bad_input(exc, pipes)
        if pipes is not None:
            pipes.report_asset_materialization(metadata={"rows": table.num_rows})
        print(json.dumps({"rows": table.num_rows, "out": cfg.out}))
        return 0
