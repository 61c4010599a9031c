"""The ``govtune`` command line.

``govtune curate INPUT... --out DIR`` runs the governance stages without Dagster (what users
script against). ``govtune demo-corpus DIR`` builds the bundled demo corpus. ``govtune demo``
materialises the whole asset graph into the local Dagster instance (what ``make demo`` runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _curate(args: argparse.Namespace) -> int:
    from quality_models.config import load_governance_config
    from quality_models.pipeline import curate, invariant_violations, variant_config, write_outputs
    from quality_models.sources import ingest_sources

    config = variant_config(load_governance_config(args.config), args.variant)
    if args.languages:
        config.languages = args.languages.split(",")
    if args.workers is not None:
        config.workers = args.workers
    raw = ingest_sources(args.inputs, config.ingest)
    models = _kenlm_models(args.kenlm_dir) if args.kenlm_dir else None
    result = curate(raw, config, models, variant=args.variant)
    paths = write_outputs(result, args.out, config, args.variant)
    problems = invariant_violations(result, raw.n_in)
    totals = result.totals()
    print(
        json.dumps(
            {
                "input": raw.n_in,
                **totals,
                "languages": {k: v.num_rows for k, v in result.curated.items()},
                "out": str(Path(args.out)),
                "rejected_file": str(paths["rejected"]),
                "invariant_ok": not problems,
            },
            indent=1,
        )
    )
    if problems:
        print("invariant violated: " + "; ".join(problems), file=sys.stderr)
        return 3
    return 0


def _kenlm_models(folder: str) -> dict[str, str]:
    """Every ``<lang>.binary`` under the folder (flat or one folder per language)."""
    from quality_models.perplexity import find_models

    return {lang: str(path) for lang, path in find_models(folder).items()}


def _demo_corpus(args: argparse.Namespace) -> int:
    from quality_models.demo_corpus import build_demo_corpus

    paths = build_demo_corpus(args.out, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo()


def _experiment(args: argparse.Namespace) -> int:
    from pipelines.demo import _instance
    from pipelines.experiment import ExperimentPlan, run_experiment

    return run_experiment(ExperimentPlan.load(args.config), _instance())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="govtune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cur = sub.add_parser("curate", help="run the governance stages on any input, no Dagster")
    cur.add_argument("inputs", nargs="+", help="files, folders or hf:NAME[:SUBSET][@SPLIT]")
    cur.add_argument("--out", required=True, help="output folder")
    cur.add_argument("--config", help="governance YAML config (unknown keys are an error)")
    cur.add_argument("--variant", default="full", help="governance ablation arm")
    cur.add_argument("--languages", help="comma-separated languages in scope")
    cur.add_argument("--kenlm-dir", help="folder of KenLM models (<lang>.binary, any depth)")
    cur.add_argument("--workers", type=int, help="processes across languages")
    cur.set_defaults(func=_curate)
    dc = sub.add_parser("demo-corpus", help="build the demo corpus with planted noise")
    dc.add_argument("out")
    dc.add_argument("--seed", type=int, default=0)
    dc.set_defaults(func=_demo_corpus)
    demo = sub.add_parser("demo", help="materialise the whole asset graph on the demo data")
    demo.set_defaults(func=_demo)
    exp = sub.add_parser(
        "experiment", help="train, score and report an experiment plan (make reproduce)"
    )
    exp.add_argument("config", help="experiment YAML, e.g. configs/reproduce.yaml")
    exp.set_defaults(func=_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # our own errors (ConfigError, SourceError, LanguageIdError...) are clear messages
        print(f"govtune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
