"""Scoring every fine-tuned model on the held-out task data, out of process through Dagster Pipes
(``python -m evaluation``). One Parquet file of per-example predictions per (variant, run):
the report assets compute every metric, interval and test from these rows."""

import hashlib
import json
import sys
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd

from evaluation.predict import footprint_with_steps
from quality_models.contract import read_parquet

from . import ui
from .partitions import parse_run_key, run_protocol, variant_run_partitions
from .resources import GovtuneHome
from .tasks import file_version, task_pool_languages
from .training import TRAINING_POOL, TRAINING_TAG, run_dir_for, trainer_data


class EvaluationConfig(dg.Config):
    """Which items to score; the same for every run of an experiment, so runs are paired."""

    experiment: str = "demo"
    langs: list[str] = []  # empty: every task language
    test_per_lang: int = 40
    dev_per_lang: int = 20  # temperature scaling is fitted on these, per language
    seed: int = 0  # the item sample; independent of the training seed
    robustness_perturbations: list[str] = []  # empty: all of evaluation.perturb.PERTURBATIONS
    # target shares of characters changed (the measured corruption is recorded per item)
    robustness_severities: list[float] = [0.05, 0.15]
    robustness_langs: list[str] = ["fr", "ru"]
    robustness_items: int = 25
    robustness_seeds: list[int] = [0]  # training seeds whose models get the robustness pass
    translation_langs: list[str] = ["de"]  # translation runs: en<->xx for these languages
    translation_per_direction: int = 24
    max_new_tokens: int = 24
    batch_size: int = 32
    max_length: int = 64
    max_batch_tokens: int = 0  # tokens per scoring forward; 0: batch_size x max_length


def predictions_file(home: GovtuneHome, experiment: str, variant: str, run: str):
    return home.path("evaluations", experiment, variant, f"{run}.parquet")


def predict_config(
    config: EvaluationConfig,
    home: GovtuneHome,
    variant: str,
    run: str,
    train_langs: list[str] | None = None,
) -> dict:
    """The ``evaluation.predict.PredictConfig`` fields for one run. A ``lexical`` run is fitted
    on the variant's trainer rows (``classification_train``) in ``train_langs`` (default: the
    protocol's, English for zero-shot and every task language for ``tt-``)."""
    from evaluation.frames import TRANSLATE_TRAIN
    from evaluation.perturb import PERTURBATIONS

    task, method, seed = parse_run_key(run)
    protocol = run_protocol(run)
    robust = seed in config.robustness_seeds and task == "classification"
    lexical = {}
    if method == "lexical":
        if train_langs is None:
            train_langs = task_pool_languages(home) if protocol == TRANSLATE_TRAIN else ["en"]
        lexical = {
            "method": "lexical",
            "train_data": str(trainer_data(home, variant)),
            "train_langs": list(train_langs),
        }
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
        "max_batch_tokens": config.max_batch_tokens,
        "progress": False,
        "protocol": protocol,
        **lexical,
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
    """The evaluation config plus the identity of the model it scored (its summary; for the
    lexical baseline, the content of the rows it is fitted on)."""
    if cfg.get("method") == "lexical":
        summary = file_version(cfg["train_data"]).encode()
    elif (run_dir / "summary.json").is_file():
        summary = (run_dir / "summary.json").read_bytes()
    else:
        summary = b""
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode() + summary).hexdigest()[:16]


def _finetune_train_langs(context: dg.AssetExecutionContext) -> list[str] | None:
    """The languages ``finetune`` recorded for this (variant, run) partition (for ``lexical``
    it trains nothing but records what a model of that run key is trained on)."""
    try:
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("finetune"), asset_partitions=[str(context.partition_key)]
            ),
            limit=1,
        )
    except Exception:  # an instance without the records API: the protocol's default
        return None
    for record in result.records:
        entry = record.asset_materialization.metadata.get("train_langs")
        value = getattr(entry, "value", entry)
        if isinstance(value, str) and value:
            return value.split(",")
    return None


def _summary(df: pd.DataFrame) -> dict:
    """UI metadata: clean test accuracy per language (classification) or rows (translation)."""
    meta: dict = {"rows": len(df), "dagster/row_count": len(df)}
    if "logits" in df.columns:
        clean = _clean_test(df)
        correct = _correct(clean)
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
    code_version="2",
    deps=[dg.AssetDep("finetune")],  # same (variant, run) partition
    partitions_def=variant_run_partitions,
    kinds={"pytorch", "parquet"},
    op_tags={"govtune/stage": TRAINING_TAG},
    pool=TRAINING_POOL,
    owners=["team:evaluation"],
    check_specs=[
        dg.AssetCheckSpec(
            "every_test_item_scored",
            asset="model_evaluation",
            description="every sampled test item has a finite score in every language (the "
            "same items in each: the design is parallel)",
            partitions_def=variant_run_partitions,
        ),
        dg.AssetCheckSpec(
            "above_lexical_baseline",
            asset="model_evaluation",
            description="clean test accuracy above the lexical baseline's on the same items "
            "(a warning: a zero-shot model may not beat it)",
            partitions_def=variant_run_partitions,
        ),
    ],
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    home: GovtuneHome,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Per-example predictions of one run: class log-probabilities on the same clean, perturbed
    and dev items for every run (the lexical baseline is fitted here on the variant's train
    rows; untuned is the base model), or translations; scored once per model and configuration
    (reused afterwards). The footprint beside it carries the run's per-step times."""
    keys = context.partition_key.keys_by_dimension
    variant, run = keys["variant"], keys["run"]
    run_dir = run_dir_for(home, config.experiment, variant, run)
    task, method, seed = parse_run_key(run)
    if method == "lexical":  # fitted here on the variant's train rows: no run to load
        cfg = predict_config(config, home, variant, run, _finetune_train_langs(context))
    elif not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run: materialise finetune first")
    else:
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
        if method != "lexical":  # the lexical scorer writes its own (fit time, parameters)
            # the trainer's footprint plus its per-step times (Table VI's intervals)
            foot = json.dumps(footprint_with_steps(run_dir), indent=2)
            tmp = out.with_suffix(".footprint.json.tmp")
            tmp.write_text(foot)
            tmp.replace(out.with_suffix(".footprint.json"))
        stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": cfg}, indent=2))
    predictions = read_parquet(out).to_pandas()  # read once: the metadata and the checks
    yield dg.MaterializeResult(
        metadata={
            **reported,
            "variant": variant,
            "method": method,
            "seed": seed,
            "task": task,
            "protocol": cfg.get("protocol") or "translation",
            "reused": reused,
            "path": dg.MetadataValue.path(str(out)),
            **_summary(predictions),
        }
    )
    lexical = predictions_file(home, config.experiment, variant, "lexical-s0")
    checks = evaluation_checks(predictions, lexical if method != "lexical" else None)
    yield from ui.for_partition(checks, context.partition_key)


def _clean_test(df: pd.DataFrame) -> pd.DataFrame:
    """Clean test rows (classification), or every clean translation pair."""
    if "split" in df.columns:
        df = df[df.split == "test"]
    return df[df.perturbation == "clean"] if "perturbation" in df.columns else df


def evaluation_checks(predictions: pd.DataFrame, lexical) -> Iterator[dg.AssetCheckResult]:
    """The gate before the reports: every item scored, and (a warning) better than lexical."""
    df = _clean_test(predictions)
    if "logits" in df.columns:
        finite = all(np.isfinite(np.asarray(x, dtype=float)).all() for x in df.logits)
        per_lang = df.groupby("lang").size()
        parallel = per_lang.nunique() == 1
    else:  # translation: a hypothesis for every pair, the same pairs in every direction
        finite = bool(df.hypothesis.notna().all()) if len(df) else False
        per_lang = df.groupby(["src_lang", "tgt_lang"]).size()
        parallel = per_lang.nunique() == 1
    yield dg.AssetCheckResult(
        check_name="every_test_item_scored",
        passed=bool(len(df)) and finite and parallel,
        metadata={"test_items": len(df), "per_language": dg.MetadataValue.json(
            {str(k): int(v) for k, v in per_lang.items()})},
    )  # fmt: skip
    if "logits" not in df.columns or lexical is None or not lexical.is_file():
        why = "no lexical-s0 predictions for this variant to compare with"
        if "logits" not in df.columns or lexical is None:
            why = "translation, or the lexical baseline itself"
        yield dg.AssetCheckResult(
            check_name="above_lexical_baseline",
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"not compared: {why}",
        )
        return
    base = _clean_test(read_parquet(lexical).to_pandas())
    shared = set(df.item_id) & set(base.item_id)
    acc = _accuracy(df[df.item_id.isin(shared)])
    ref = _accuracy(base[base.item_id.isin(shared)])
    yield dg.AssetCheckResult(
        check_name="above_lexical_baseline",
        passed=acc > ref,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": round(acc, 4), "lexical_accuracy": round(ref, 4),
                  "shared_items": len(shared)},
    )  # fmt: skip


def _correct(rows: pd.DataFrame) -> np.ndarray:
    """Whether each row's highest class log-probability is its gold class."""
    return np.array([np.argmax(x) for x in rows.logits]) == rows.gold.to_numpy()


def _accuracy(df: pd.DataFrame) -> float:
    return float(_correct(df).mean()) if len(df) else float("nan")
