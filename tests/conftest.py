"""Shared fixtures: the demo corpus and one governance run over it (built once per session)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from quality_models.demo_corpus import build_demo_corpus

    out = tmp_path_factory.mktemp("demo")
    build_demo_corpus(out, seed=0)
    return out


@pytest.fixture(scope="session")
def planted(demo_dir):
    return {r["doc_id"]: r for r in pq.read_table(demo_dir / "planted.parquet").to_pylist()}


@pytest.fixture(scope="session")
def governance_run(demo_dir):
    """Ingest -> normalize -> LID of the demo corpus, plus the full curate() result."""
    from quality_models.config import load_governance_config
    from quality_models.demo_corpus import DEMO_NAMESPACE
    from quality_models.pipeline import curate
    from quality_models.sources import ingest_sources

    config = load_governance_config(None)
    raw = ingest_sources([demo_dir / "sources"], config.ingest, namespace=DEMO_NAMESPACE)
    result = curate(raw, config, workers=1)
    return {"config": config, "raw": raw, "result": result}
