"""The ``govtune`` command line.

``govtune curate INPUT... --out DIR`` runs the governance stages without Dagster (what users
script against). ``govtune demo-corpus DIR`` builds the bundled demo corpus. The other commands
materialise the same assets and partitions the UI launches, into the local Dagster instance:
``govtune demo`` (what ``make demo`` runs), ``govtune run --variant full --languages de,ru
--until curated|finetune|reports``, ``govtune experiment configs/reproduce.yaml`` (``make
reproduce``) and ``govtune status`` (what is materialised, and the checks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _curate(args: argparse.Namespace) -> int:
    from quality_models.config import load_governance_config
    from quality_models.pipeline import curate, invariant_violations, variant_config, write_outputs
    from quality_models.sources import ingest_sources

    config = variant_config(load_governance_config(args.config), args.variant)
    if args.languages:
        from quality_models.langid import scope_languages

        config.languages = [x.strip() for x in args.languages.split(",") if x.strip()]
        scope_languages(config)  # a language the LID model cannot emit: an error before ingest
    if args.workers is not None:
        config.workers = args.workers
    if args.engine:
        config.engine.name = args.engine
    if args.address:
        config.engine.name, config.engine.address = "ray", args.address
    if config.engine.name == "ray":
        config.workers = 1  # Ray spreads each language's dedup itself; no process pool on top
    config.engine.validate()
    raw = ingest_sources(args.inputs, config.ingest)
    kenlm_dir, models = _curate_models(args)
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
                "kenlm_models": {"dir": kenlm_dir, "languages": sorted(models or {})},
                "invariant_ok": not problems,
            },
            indent=1,
        )
    )
    if problems:
        print("invariant violated: " + "; ".join(problems), file=sys.stderr)
        return 3
    return 0


def _curate_models(args: argparse.Namespace) -> tuple[str | None, dict[str, str] | None]:
    """The KenLM models for ``curate``: ``--kenlm-dir``; else the pipeline's own (what the
    ``kenlm_models`` asset wrote under ``$GOVTUNE_HOME/quality_models/<lang>/``) when there are
    any; none with ``--no-kenlm``. Returns the folder used and ``lang -> model``."""
    if args.no_kenlm:
        if args.kenlm_dir:
            raise ValueError("--no-kenlm and --kenlm-dir exclude each other")
        return None, None
    if args.kenlm_dir:
        return str(Path(args.kenlm_dir)), _kenlm_models(args.kenlm_dir)
    default = Path(os.environ.get("GOVTUNE_HOME") or ".govtune") / "quality_models"
    models = _kenlm_models(str(default)) if default.is_dir() else {}
    if not models:
        return None, None
    print(
        f"govtune: KenLM models of the pipeline from {default} ({', '.join(sorted(models))});"
        " --kenlm-dir DIR to use others, --no-kenlm for none",
        file=sys.stderr,
    )
    return str(default), models


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

    return run_demo(variants=args.variants.split(",") if args.variants else None)


def _run(args: argparse.Namespace) -> int:
    """Governance for one arm and some languages, then (optionally) the plan's training and
    reports restricted to that arm."""
    from pipelines.definitions import defs
    from pipelines.experiment import ExperimentPlan, run_experiment
    from pipelines.runner import instance, run_governance

    langs = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
    if langs is not None:
        from assets.stage_io import GovernanceSettings
        from quality_models.langid import scope_languages

        scope = set(scope_languages(GovernanceSettings().load(args.variant)))
        unknown = sorted(set(langs) - scope)
        if unknown:
            raise ValueError(f"unknown languages {unknown}: not in the governance config's scope")
    if langs is not None and args.until != "curated":
        raise ValueError(
            "--languages materialises only some language partitions, so the variant's ledger "
            "cannot balance and nothing may train on it: use it with --until curated"
        )
    inst = instance()
    run_governance(defs, inst, [args.variant], langs)
    if args.until == "curated":
        return 0
    plan = ExperimentPlan.load(args.plan)
    plan.variant, plan.ablation_variants = args.variant, []
    return run_experiment(plan, inst, until=args.until)


def _status(args: argparse.Namespace) -> int:
    from pipelines.definitions import defs
    from pipelines.runner import instance, status_rows

    rows = status_rows(defs, instance())
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(r[k].ljust(w) for k, w in widths.items()))
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from pipelines.experiment import ExperimentPlan, run_experiment
    from pipelines.runner import instance

    return run_experiment(ExperimentPlan.load(args.config), instance())


def _variants() -> tuple[str, ...]:
    from quality_models.pipeline import VARIANTS

    return tuple(VARIANTS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="govtune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cur = sub.add_parser("curate", help="run the governance stages on any input, no Dagster")
    cur.add_argument("inputs", nargs="+", help="files, folders or hf:NAME[:SUBSET][@SPLIT]")
    cur.add_argument("--out", required=True, help="output folder")
    cur.add_argument("--config", help="governance YAML config (unknown keys are an error)")
    cur.add_argument("--variant", default="full", help="governance ablation arm")
    cur.add_argument("--languages", help="comma-separated languages in scope")
    cur.add_argument(
        "--kenlm-dir",
        help="folder of KenLM models (<lang>.binary, any depth); default: the pipeline's models "
        "in $GOVTUNE_HOME/quality_models when there are any",
    )
    cur.add_argument(
        "--no-kenlm", action="store_true", help="no KenLM perplexity scoring (documents pass)"
    )
    cur.add_argument("--workers", type=int, help="processes across languages")
    cur.add_argument(
        "--engine", choices=["local", "ray"], help="where the stages run (default: the config's)"
    )
    cur.add_argument("--address", help="Ray cluster address (implies --engine ray)")
    cur.set_defaults(func=_curate)
    dc = sub.add_parser("demo-corpus", help="build the demo corpus with planted noise")
    dc.add_argument("out")
    dc.add_argument("--seed", type=int, default=0)
    dc.set_defaults(func=_demo_corpus)
    demo = sub.add_parser("demo", help="materialise the whole asset graph on the demo data")
    demo.add_argument("--variants", help="governance arms (default: every arm the plan uses)")
    demo.set_defaults(func=_demo)
    run = sub.add_parser("run", help="materialise one governance arm up to a stage, headless")
    run.add_argument("--variant", default="full", choices=list(_variants()))
    run.add_argument(
        "--languages",
        help="only these language partitions (default: every language LID found; "
        "the scope itself is the governance config's)",
    )
    run.add_argument("--until", default="curated", choices=["curated", "finetune", "reports"])
    run.add_argument("--plan", default="configs/demo.yaml", help="training/evaluation settings")
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="what is materialised, and the asset checks")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
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
