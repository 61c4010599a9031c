"""Task data from the system's gettext catalogues: the parallel corpus, the classification and
translation tasks (split without leakage, decontaminated), and the governed training side of
each governance variant."""

import json

import dagster as dg
import pyarrow.compute as pc

from quality_models.config import governance_config_from_dict
from quality_models.contract import (
    StageResult,
    empty_rejected,
    read_parquet,
    reason_counts,
    write_parquet_atomic,
)
from quality_models.pipeline import curate, variant_config
from training.gettext_corpus import build_parallel_corpus, write_parallel_corpus
from training.tasks import (
    DEFAULT_LANGUAGES,
    LexicalBaseline,
    TaskConfig,
    build_tasks,
    classification_documents,
    governed_training_records,
    pool_flag_report,
    write_tasks,
)

from .partitions import variant_partitions
from .resources import GovtuneHome

TASK_LANGUAGES = ["en", *DEFAULT_LANGUAGES]
task_language_partitions = dg.StaticPartitionsDefinition(TASK_LANGUAGES)
translation_partitions = dg.StaticPartitionsDefinition(list(DEFAULT_LANGUAGES))


class TaskSettings(dg.Config):
    seed: int = 0
    test_per_cell: int = 100
    dev_per_cell: int = 40
    train_per_cell: int = 300


def _task_config(settings: TaskSettings) -> TaskConfig:
    return TaskConfig(
        seed=settings.seed,
        test_per_cell=settings.test_per_cell,
        dev_per_cell=settings.dev_per_cell,
        train_per_cell=settings.train_per_cell,
    )


def _build(home: GovtuneHome, settings: TaskSettings):
    corpus = read_parquet(home.path("tasks", "parallel_corpus.parquet"))
    return build_tasks(corpus, _task_config(settings))


@dg.asset(group_name="task_data", code_version="1", kinds={"gettext", "parquet"})
def parallel_corpus(home: GovtuneHome) -> dg.MaterializeResult:
    """English msgid <-> msgstr per language from every installed catalogue, with the program
    (domain) as label, placeholders recorded, and a manifest (domain, language, sha256)."""
    corpus = build_parallel_corpus(
        languages=list(DEFAULT_LANGUAGES), exclude_domains=("iso-codes",), progress=False
    )
    paths = write_parallel_corpus(corpus, home.path("tasks"))
    return dg.MaterializeResult(
        metadata={
            "pairs": corpus.table.num_rows,
            "catalogues": corpus.manifest.num_rows,
            "dagster/row_count": corpus.table.num_rows,
            "stats": dg.MetadataValue.json(json.loads(json.dumps(corpus.stats, default=str))),
            "path": dg.MetadataValue.path(str(paths["parallel_corpus"])),
        }
    )


@dg.asset(group_name="task_data", code_version="1", deps=[parallel_corpus], kinds={"parquet"})
def task_splits(home: GovtuneHome, config: TaskSettings) -> dg.MaterializeResult:
    """Both tasks split by message (near-duplicate msgids in one split), decontaminated, with
    the lexical-overlap baseline and dataset cards."""
    task = _build(home, config)
    baseline = LexicalBaseline().fit(task.classification).report(task.classification)
    manifest = read_parquet(home.path("tasks", "manifest.parquet"))
    write_tasks(task, home.path("tasks"), baseline, None, manifest)
    card = home.path("tasks", "classification_card.md").read_text(encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            "classification_items": task.classification.num_rows,
            "translation_pairs": task.translation.num_rows,
            "builder_ledger": dg.MetadataValue.json(reason_counts(task.ledger)),
            "card": dg.MetadataValue.md(card),
        }
    )


def _counts(table, *columns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in zip(*(table.column(c).to_pylist() for c in columns), strict=True):
        key = "/".join(str(x) for x in row)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


@dg.asset(
    group_name="task_data",
    code_version="1",
    deps=[task_splits],
    partitions_def=task_language_partitions,
    kinds={"parquet"},
)
def classification_task(context: dg.AssetExecutionContext, home: GovtuneHome):
    """One language's message-domain classification items (train/dev/test)."""
    lang = context.partition_key
    table = read_parquet(home.path("tasks", "classification.parquet"))
    part = table.filter(pc.equal(table.column("lang"), lang))
    path = write_parquet_atomic(part, home.path("tasks", "classification", f"{lang}.parquet"))
    ledger = read_parquet(home.path("tasks", "rejected.parquet"))
    contamination = ledger.filter(pc.equal(ledger.column("reason"), "eval_contamination"))
    contamination = contamination.filter(pc.equal(contamination.column("lang"), lang))
    return dg.MaterializeResult(
        metadata={
            "items": part.num_rows,
            "dagster/row_count": part.num_rows,
            "per_split": dg.MetadataValue.json(_counts(part, "split")),
            "label_distribution": dg.MetadataValue.json(_counts(part, "split", "label")),
            "contamination_removed": contamination.num_rows,
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(
    group_name="task_data",
    code_version="1",
    deps=[task_splits],
    partitions_def=translation_partitions,
    kinds={"parquet"},
)
def translation_task(context: dg.AssetExecutionContext, home: GovtuneHome):
    """en->xx and xx->en pairs (train/dev/devtest) for one language."""
    lang = context.partition_key
    table = read_parquet(home.path("tasks", "translation.parquet"))
    part = table.filter(
        pc.or_(pc.equal(table.column("src_lang"), lang), pc.equal(table.column("tgt_lang"), lang))
    )
    path = write_parquet_atomic(part, home.path("tasks", "translation", f"{lang}.parquet"))
    return dg.MaterializeResult(
        metadata={
            "pairs": part.num_rows,
            "dagster/row_count": part.num_rows,
            "per_direction_split": dg.MetadataValue.json(
                _counts(part, "src_lang", "tgt_lang", "split")
            ),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(
    group_name="task_data",
    code_version="1",
    deps=[task_splits],
    partitions_def=variant_partitions,
    kinds={"parquet"},
)
def classification_train(
    context: dg.AssetExecutionContext, home: GovtuneHome, config: TaskSettings
) -> dg.MaterializeResult:
    """The training side through the governance variant's stages (LID, dedup, rules), then
    decontaminated against every evaluation item and balanced per (language, domain)."""
    variant = context.partition_key
    task = _build(home, config)
    gov = variant_config(governance_config_from_dict({"languages": TASK_LANGUAGES}), variant)
    raw = StageResult(classification_documents(task), empty_rejected())  # already contract rows
    result = curate(raw, gov, None, variant=variant, workers=1)
    records, decon = governed_training_records(task, result.curated)
    path = write_parquet_atomic(records, home.path("tasks", "train", f"{variant}.parquet"))
    ledger = result.rejected.combine_chunks()
    write_parquet_atomic(ledger, home.path("tasks", "train", f"{variant}_rejected.parquet"))
    return dg.MaterializeResult(
        metadata={
            "pool_documents": raw.kept.num_rows,
            "kept_by_governance": sum(t.num_rows for t in result.curated.values()),
            "contamination_removed": decon.rejected.num_rows,
            "train_records": records.num_rows,
            "dagster/row_count": records.num_rows,
            "removed_by_stage_and_flag": dg.MetadataValue.json(pool_flag_report(task, ledger)),
            "per_language_label": dg.MetadataValue.json(_counts(records, "lang", "label")),
            "path": dg.MetadataValue.path(str(path)),
        }
    )
