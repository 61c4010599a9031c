"""Task data from the system's gettext catalogues: the parallel corpus, the classification and
translation tasks (split without leakage, decontaminated), and the governed training side of
each governance variant."""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from quality_models.contract import read_parquet, reason_counts, write_parquet_atomic
from quality_models.storage import concat_tables
from training.gettext_corpus import build_parallel_corpus, write_parallel_corpus
from training.tasks import (
    DEFAULT_LANGUAGES,
    LexicalBaseline,
    TaskConfig,
    build_tasks,
    eval_texts_of,
    flag_report,
    pool_source_table,
    training_records_from_curated,
    write_tasks,
)

from . import ui
from .partitions import PER_VARIANT, variant_partitions
from .resources import GovtuneHome
from .stage_io import REFRESH_CONDITION

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


@dg.asset(
    group_name="task_data", code_version="1", owners=["team:training"], kinds={"gettext", "parquet"}
)
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


@dg.asset(
    group_name="task_data",
    code_version="1",
    owners=["team:training"],
    deps=[parallel_corpus],
    kinds={"parquet"},
)
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
    owners=["team:training"],
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
    owners=["team:training"],
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
    owners=["team:training"],
    deps=[task_splits],
    kinds={"parquet"},
)
def task_pool(context: dg.AssetExecutionContext, home: GovtuneHome) -> dg.MaterializeResult:
    """The task's raw training side, problems included, as the `task_pool` source of
    `raw_documents`: it is governed by the same stages as every corpus. Its `label`, `key`,
    `group`, `split` and `flag` columns travel through the stages untouched."""
    from .ingest import TASK_POOL_SOURCE, source_partitions

    task = built_task_parts(home)
    table = pool_source_table(task)
    path = write_parquet_atomic(table, home.path("raw", TASK_POOL_SOURCE, "pool.parquet"))
    if not context.instance.has_dynamic_partition(source_partitions.name, TASK_POOL_SOURCE):
        context.instance.add_dynamic_partitions(source_partitions.name, [TASK_POOL_SOURCE])
    return dg.MaterializeResult(
        metadata={
            "documents": table.num_rows,
            "dagster/row_count": table.num_rows,
            "per_language_label": dg.MetadataValue.json(_counts(table, "lang", "label")),
            "builder_flags": dg.MetadataValue.json(_counts(table, "flag")),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def built_task_parts(home: GovtuneHome):
    """The parts of the built task that `pool_source_table` reads (pool and splits), read back
    from what `task_splits` wrote."""
    from types import SimpleNamespace

    return SimpleNamespace(
        pool=read_parquet(home.path("tasks", "train_pool.parquet")),
        splits=read_parquet(home.path("tasks", "splits.parquet")),
    )


def task_pool_languages(home: GovtuneHome) -> list[str]:
    """The languages the task pool declares (the task's languages, English included)."""
    pool = read_parquet(home.path("raw", "task_pool", "pool.parquet"))
    return sorted(pc.unique(pool.column("lang")).to_pylist())


def curated_task_rows(home: GovtuneHome, variant: str) -> pa.Table:
    """The variant's curated rows that came from the task pool, in every task language."""
    from .ingest import TASK_POOL_SOURCE

    tables = []
    for lang in task_pool_languages(home):
        path = home.curated_dir(variant) / f"{lang}.parquet"
        if not path.is_file():
            raise dg.Failure(f"curated[{variant}|{lang}] is not materialised: run governance first")
        table = read_parquet(path)
        if "label" not in table.column_names:
            raise dg.Failure(
                f"curated[{variant}|{lang}] holds no task-pool rows: materialise "
                "raw_documents[task_pool] and the stages after it"
            )
        prefix = f"{TASK_POOL_SOURCE}:"
        tables.append(table.filter(pc.starts_with(table.column("source"), prefix)))
    return concat_tables(tables)


@dg.asset(
    group_name="task_data",
    code_version="2",
    deps=[
        task_splits,
        dg.AssetDep("curated", partition_mapping=PER_VARIANT),
        "ledger",
    ],
    partitions_def=variant_partitions,
    kinds={"parquet"},
    automation_condition=REFRESH_CONDITION,
    owners=["team:training"],
    check_specs=[
        dg.AssetCheckSpec(
            "no_evaluation_text_in_train",
            asset="classification_train",
            blocking=True,
            description="no training text equals (after normalisation) any evaluation text",
            partitions_def=variant_partitions,
        ),
        dg.AssetCheckSpec(
            "every_cell_filled",
            asset="classification_train",
            blocking=True,
            description="every (language, label) cell of the task has training rows",
            partitions_def=variant_partitions,
        ),
    ],
)
def classification_train(
    context: dg.AssetExecutionContext, home: GovtuneHome, config: TaskSettings
):
    """The training side of one governance variant: exactly the rows its `curated` assets hold
    from the task pool, decontaminated against every evaluation item and balanced per
    (language, label). The `rehydrate` arm carries FineWeb-2's up-weighting by duplicate-cluster
    size as a `weight` column. Writes `tasks/train/<variant>/train.parquet` and the trainer's
    file (train + the shared dev/test items) `trainer_data.parquet`."""
    from training.data import rehydration_weight

    variant = context.partition_key
    rows = curated_task_rows(home, variant)
    cls = read_parquet(home.path("tasks", "classification.parquet"))
    mt = read_parquet(home.path("tasks", "translation.parquet"))
    weight_of = rehydration_weight if variant == "rehydrate" else None
    task_config = _task_config(config)
    task_config.domains = tuple(sorted(pc.unique(cls.column("label")).to_pylist()))
    made = training_records_from_curated(
        rows, eval_texts_of(cls, mt), task_config, weight_of=weight_of
    )
    out = home.path("tasks", "train", variant)
    write_parquet_atomic(made.records, out / "train.parquet")
    write_parquet_atomic(made.decontamination.rejected, out / "rejected.parquet")
    evals = cls.filter(pc.is_in(cls.column("split"), pa.array(["dev", "test"])))
    evals = evals.append_column("weight", pa.array([1.0] * evals.num_rows, pa.float32()))
    trainer = write_parquet_atomic(
        pa.concat_tables([made.records, evals.select(made.records.column_names)]),
        out / "trainer_data.parquet",
    )
    version = file_version(trainer)
    ledger = read_parquet(home.ledger_file(variant))
    flags = dict(zip(*(home_pool_flags(home)), strict=True))
    weights = made.records.column("weight").to_pylist()
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "curated_task_rows": made.curated_rows,
            "contamination_removed": made.decontamination.rejected.num_rows,
            "balanced_out": made.balanced_out,
            "train_records": made.records.num_rows,
            "dagster/row_count": made.records.num_rows,
            "weighted": weight_of is not None,
            "mean_weight": round(sum(weights) / max(len(weights), 1), 4),
            "removed_by_stage_and_flag": dg.MetadataValue.json(flag_report(flags, ledger)),
            "per_language_label": dg.MetadataValue.json(_counts(made.records, "lang", "label")),
            "path": dg.MetadataValue.path(str(trainer)),
            "data_version": version,
            "train_sample": ui.kept_sample(
                made.records.rename_columns(
                    ["doc_id" if c == "id" else c for c in made.records.column_names]
                )
            ),
        },
    )
    checks = training_set_checks(
        made.records, cls, mt, task_pool_languages(home), task_config.domains
    )
    yield from ui.for_partition(checks, context.partition_key)


def training_set_checks(records: pa.Table, cls: pa.Table, mt: pa.Table, langs, labels):
    """No evaluation text in the training rows (exact after normalisation: near matches are
    what decontamination removed), and no empty (language, label) cell."""
    from quality_models.decontaminate import normalise_for_match

    _, texts = eval_texts_of(cls, mt)
    evaluation = {normalise_for_match(t) for t in texts if t}
    ids, train_texts = records.column("id").to_pylist(), records.column("text").to_pylist()
    leaked = [
        i for i, t in zip(ids, train_texts, strict=True) if normalise_for_match(t) in evaluation
    ]
    yield dg.AssetCheckResult(
        check_name="no_evaluation_text_in_train",
        passed=not leaked,
        metadata={"leaked": len(leaked), "examples": dg.MetadataValue.json(leaked[:10])},
    )
    cells = _counts(records, "lang", "label")
    empty = [f"{a}/{b}" for a in langs for b in labels if not cells.get(f"{a}/{b}")]
    yield dg.AssetCheckResult(
        check_name="every_cell_filled",
        passed=not empty,
        metadata={"empty_cells": dg.MetadataValue.json(empty), "cells": len(cells)},
    )


def file_version(path) -> str:
    """The content hash of a file (`sha256:…`, the trainer's own `data_version`): the data
    version of what a model trains on, the same in the asset's metadata and the run's summary."""
    from training.data import data_version

    return data_version(path)


def home_pool_flags(home: GovtuneHome) -> tuple[list[str], list[str]]:
    """(doc_id, builder flag) of every ingested task-pool document."""
    from quality_models.storage import read_published

    from .ingest import TASK_POOL_SOURCE

    pub = read_published(home.stage_dir("all", "raw_documents", TASK_POOL_SOURCE))
    table = pub.kept().select(["doc_id", "flag"])
    return table.column("doc_id").to_pylist(), table.column("flag").to_pylist()
