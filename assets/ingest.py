"""Raw inputs: the bundled demo corpus (built from shipped text), and the ingest of each source.

`raw_documents` is partitioned by source (a dynamic partition per input): `demo` is the
bundled corpus, `task_pool` the training side of the gettext task (written by the
`task_pool` asset, with its label/group/split columns, which travel through every stage), and
every file dropped into `<data root>/inbox/` becomes its own partition (the inbox sensor adds
it), so a new file is ingested alone and appears as its own run.
"""

import dagster as dg
import pyarrow.parquet as pq

from quality_models.contract import reason_counts
from quality_models.demo_corpus import DEMO_NAMESPACE, build_demo_corpus
from quality_models.sources import ingest_sources

from .resources import GovtuneHome
from .stage_io import (
    GovernanceSettings,
    finish_stage,
    governance_stage,
)

DEMO_SOURCE = DEMO_NAMESPACE
TASK_POOL_SOURCE = "task_pool"
source_partitions = dg.DynamicPartitionsDefinition(name="sources")


class DemoCorpusConfig(dg.Config):
    seed: int = 0


@dg.asset(
    group_name="governance",
    code_version="1",
    kinds={"python", "parquet"},
    owners=["team:governance"],
)
def demo_corpus(config: DemoCorpusConfig, home: GovtuneHome) -> dg.MaterializeResult:
    """Real text from installed packages and system catalogues, with seeded planted noise."""
    paths = build_demo_corpus(home.path("raw", "demo"), seed=config.seed)
    planted = pq.read_table(paths["planted"])
    kinds: dict[str, int] = {}
    for k in planted.column("kind").to_pylist():
        kinds[k] = kinds.get(k, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "documents": planted.num_rows,
            "planted": dg.MetadataValue.json(dict(sorted(kinds.items()))),
            "folder": dg.MetadataValue.path(str(home.path("raw", "demo"))),
        }
    )


def source_namespace(source: str) -> str:
    """The prefix of every `source` (and so of every id) of a source partition: the built-in
    sources are named after themselves, inbox files after the inbox they were dropped into."""
    return source if source in (DEMO_SOURCE, TASK_POOL_SOURCE) else "inbox"


def source_input(home: GovtuneHome, source: str) -> str:
    """The file or folder behind a source partition key."""
    if source == DEMO_SOURCE:
        return str(home.path("raw", "demo", "sources"))
    if source == TASK_POOL_SOURCE:
        return str(home.path("raw", "task_pool"))
    return str(home.path("inbox", source))


@governance_stage(
    "raw_documents",
    deps=[demo_corpus, dg.AssetKey("task_pool")],
    kinds={"parquet"},
    partitions_def=source_partitions,
    refresh=False,
)
def raw_documents(
    context: dg.AssetExecutionContext, home: GovtuneHome, governance: GovernanceSettings
):
    """One source's records with a stable `doc_id` (its path relative to the source's
    folder + position, namespaced by the source key); unusable records are quarantined."""
    source = context.partition_key
    result = ingest_sources(
        [source_input(home, source)], governance.load().ingest, namespace=source_namespace(source)
    )
    yield from finish_stage(
        result,
        result.n_in,
        home.stage_dir("all", "raw_documents", source),
        partition=source,
        sources=result.metadata["sources"],
        quarantined=reason_counts(result.rejected),
    )
