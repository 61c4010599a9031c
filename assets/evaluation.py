"""Scoring every fine-tuned model on the held-out task data, out of process through Dagster Pipes
(``python -m evaluation``). One Parquet file of per-example predictions per (variant, run):
the report assets compute every metric, interval and test from these rows."""

import hashlib
import json
import shutil
import sys

import dagster as dg
import numpy as np

from quality_models.contract import read_parquet

from .partitions import parse_run_key, variant_run_partitions
from .resources import GovtuneHome
from .training import TRAINING_POOL, TRAINING_TAG, run_dir_for


class EvaluationConfig(dg.Config):
    """Which items to score; the same for every run of an experiment, so runs are paired."""

    experiment: str = "demo"
    langs: list[str] = []  # empty: every task language
    test_per_lang: int = 40
    dev_per_lang: int = 20  # temperature scaling is fitted on these, per language
    seed: int = 0  # the item sample; independent of the training seed
    robustness_perturbations: list[str] = []  # empty: all of evaluation.perturb.PERTURBATIONS
    robustness_severities: list[float] = [0.25, 0.75]
    robustness_langs: list[str] = ["fr", "ru"]
    robustness_items: int = 25
    robustness_seeds: list[int] = [0]  # training seeds whose models get the robustness pass
    translation_langs: list[str] = ["de"]  # translation runs: en<->xx for these languages
    translation_per_direction: int = 24
    max_new_tokens: int = 24
    batch_size: int = 32
    max_length: int = 64


def predictions_file(home: GovtuneHome, experiment: str, variant: str, run: str):
    return home.path("evaluations", experiment, variant, f"{run}.parquet")


def predict_config(config: EvaluationConfig, home: GovtuneHome, variant: str, run: str) -> dict:
    """The ``evaluation.predict.PredictConfig`` fields for one run."""
    from evaluation.perturb import PERTURBATIONS

    task, _, seed = parse_run_key(run)
    robust = seed in config.robustness_seeds and task == "classification"
    return {
        "run_dir": str(run_dir_for(home, config.experiment, variant, run)),
        "data": str(home.path("tasks", f"{task}.parquet")),
        "out": str(predictions_file(home, config.experiment, variant, run)),
        "task": task,
        "langs": list(config.langs if task == "classification" else config.translation_langs),
        "test_per_lang": config.test_per_lang
        if task == "classification"
        else config.translation_per_direction,
        "dev_per_lang": config.dev_per_lang,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "max_new_tokens": config.max_new_tokens,
        "progress": False,
        "robustness": {
            "perturbations": list(config.robustness_perturbations or sorted(PERTURBATIONS))
            if robust
            else [],
            "severities": list(config.robustness_severities),
            "langs": list(config.robustness_langs),
            "items_per_lang": config.robustness_items,
        },
    }


def _fingerprint(cfg: dict, run_dir) -> str:
    """The evaluation config plus the identity of the model it scored (its summary)."""
    summary = (
        (run_dir / "summary.json").read_bytes() if (run_dir / "summary.json").is_file() else b""
    )
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode() + summary).hexdigest()[:16]


def _summary(out) -> dict:
    """UI metadata: clean test accuracy per language (classification) or rows (translation)."""
    df = read_parquet(out).to_pandas()
    meta: dict = {"rows": len(df), "dagster/row_count": len(df)}
    if "logits" in df.columns:
        clean = df[(df.split == "test") & (df.perturbation == "clean")]
        correct = np.array([np.argmax(x) for x in clean.logits]) == clean.gold.to_numpy()
        meta["test_accuracy"] = round(float(correct.mean()), 4)
        by_lang = clean.assign(ok=correct).groupby("lang").ok.mean().round(4).to_dict()
        meta["test_accuracy_by_lang"] = dg.MetadataValue.json(by_lang)
        meta["perturbed_rows"] = int((df.perturbation != "clean").sum())
    else:
        meta["directions"] = dg.MetadataValue.json(
            sorted({f"{a}-{b}" for a, b in zip(df.src_lang, df.tgt_lang, strict=True)})
        )
    return meta


@dg.asset(
    group_name="evaluation",
    code_version="1",
    deps=[dg.AssetDep("finetune")],  # same (variant, run) partition
    partitions_def=variant_run_partitions,
    kinds={"pytorch", "parquet"},
    op_tags={"govtune/stage": TRAINING_TAG},
    pool=TRAINING_POOL,
    owners=["team:evaluation"],
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    home: GovtuneHome,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Per-example predictions of one fine-tuned model: class logits on clean, perturbed and dev
    items, or translations; scored once per model and configuration (reused afterwards)."""
    keys = context.partition_key.keys_by_dimension
    variant, run = keys["variant"], keys["run"]
    run_dir = run_dir_for(home, config.experiment, variant, run)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run: materialise finetune first")
    cfg = predict_config(config, home, variant, run)
    out = predictions_file(home, config.experiment, variant, run)
    stamp = out.with_suffix(".json")
    fingerprint = _fingerprint(cfg, run_dir)
    reused = (
        out.is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    )
    reported: dict = {}
    if reused:
        context.log.info(f"{out} already scores this model with this configuration: reused")
    else:
        invocation = pipes_subprocess_client.run(
            command=[sys.executable, "-m", "evaluation"],
            context=context,
            extras={"eval_config": cfg},
        )
        reported = dict(invocation.get_materialize_result().metadata or {})
        if not out.is_file():
            raise RuntimeError(f"the evaluation subprocess wrote no predictions to {out}")
        shutil.copyfile(run_dir / "footprint.json", out.with_suffix(".footprint.json"))
        stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": cfg}, indent=2))
    task, method, seed = parse_run_key(run)
    return dg.MaterializeResult(
        metadata={
            **reported,
            "variant": variant,
            "method": method,
            "seed": seed,
            "task": task,
            "reused": reused,
            "path": dg.MetadataValue.path(str(out)),
            **_summary(out),
        }
    )
