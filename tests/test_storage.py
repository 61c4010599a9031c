"""Published stage outputs: kept and ledger files appear together or not at all, and the same
data gives the same ids wherever its folder lives."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quality_models.config import load_governance_config
from quality_models.contract import REJECTED_SCHEMA, empty_rejected
from quality_models.langid import language_id_stage
from quality_models.normalize import normalize_stage
from quality_models.pipeline import dedup_or_skip, quality_or_skip
from quality_models.sources import SourceError, ingest_sources
from quality_models.storage import NotPublished, is_published, publish, read_published


def _rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"doc_id": [f"d{i}" for i in range(start, start + n)], "lang": ["de"] * n})


def _ledger(ids: list[str]) -> pa.Table:
    return pa.table(
        {
            name: [f"x{i}" for i in ids] if name != "doc_id" else ids
            for name in REJECTED_SCHEMA.names
        },
        schema=REJECTED_SCHEMA,
    )


def test_publish_then_read_and_supersede(tmp_path: Path):
    folder = tmp_path / "stage" / "de"
    with pytest.raises(NotPublished, match="not been published"):
        read_published(folder)
    first = publish(folder, _rows(3), _ledger(["r1"]), input_rows=4)
    pub = read_published(folder)
    assert pub.kept().num_rows == 3 and pub.rejected().num_rows == 1
    assert pub.manifest["input"] == 4 and pub.data_version == first.data_version
    second = publish(folder, {"de": _rows(2), "fr": _rows(1, 9)}, empty_rejected(), input_rows=3)
    assert second.data_version != first.data_version
    assert read_published(folder).kept("fr").column("doc_id").to_pylist() == ["d9"]
    assert read_published(folder).kept("ru").num_rows == 0  # a split nobody kept: empty
    # superseded files are gone; only what the manifest names remains
    named = {f["file"] for f in second.manifest["kept"].values()}
    named |= {second.manifest["rejected"]["file"], "manifest.json"}
    assert {p.name for p in folder.iterdir()} == named
    # the same content publishes to the same data version
    again = publish(folder, {"de": _rows(2), "fr": _rows(1, 9)}, empty_rejected(), input_rows=3)
    assert again.data_version == second.data_version


def test_a_killed_publication_leaves_the_previous_one_intact(tmp_path: Path, monkeypatch):
    folder = tmp_path / "stage"
    old = publish(folder, _rows(5), _ledger(["r1", "r2"]), input_rows=7)

    def killed(src, dst):  # the process dies at the step that would publish the manifest
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        publish(folder, _rows(1), _ledger([]), input_rows=1)
    monkeypatch.undo()
    pub = read_published(folder)  # readers still see the old, matching pair
    assert pub.data_version == old.data_version
    assert pub.kept().num_rows == 5 and pub.rejected().num_rows == 2
    # the next publication cleans up what the killed one left behind
    publish(folder, _rows(1), _ledger([]), input_rows=1)
    assert len(list(folder.glob("*.parquet"))) == 2
    assert is_published(folder) and not is_published(tmp_path / "never")


def test_ids_do_not_depend_on_where_the_data_lives(tmp_path: Path):
    a = tmp_path / "root_a" / "corpus"
    a.mkdir(parents=True)
    (a / "part.jsonl").write_text('{"text": "Ein Satz.", "lang": "de"}\n{"text": "Noch einer."}\n')
    b = tmp_path / "elsewhere" / "deeper" / "corpus"
    shutil.copytree(a, b)
    ids_a = ingest_sources([a], namespace="src").kept.column("doc_id").to_pylist()
    ids_b = ingest_sources([b], namespace="src").kept.column("doc_id").to_pylist()
    assert ids_a == ids_b and len(set(ids_a)) == 2
    assert ingest_sources([a], namespace="src").kept.column("source").to_pylist()[0] == (
        "src:part.jsonl"
    )
    other = ingest_sources([a], namespace="other").kept.column("doc_id").to_pylist()
    assert not set(other) & set(ids_a)  # a namespace keeps two sources' ids apart
    (tmp_path / "x").mkdir()
    shutil.copy(a / "part.jsonl", tmp_path / "x" / "part.jsonl")
    with pytest.raises(SourceError, match="share relative names"):
        ingest_sources([a / "part.jsonl", tmp_path / "x" / "part.jsonl"])


def test_pass_through_columns_survive_every_stage(tmp_path: Path):
    """A Parquet source's own columns (a label, an id, a column named like a contract column)
    reach the curated rows untouched."""
    texts = [
        "Die Datei konnte nicht geöffnet werden, weil der Speicherplatz auf dem Gerät voll ist.",
        "Das Programm wurde beendet, nachdem die Verbindung zum Server unterbrochen wurde.",
        "Die Datei konnte nicht geöffnet werden, weil der Speicherplatz auf dem Gerät voll ist.",
    ]
    path = tmp_path / "src" / "labelled.parquet"
    path.parent.mkdir()
    pq.write_table(
        pa.table({"text": texts, "lang": ["de"] * 3, "label": ["disk", "net", "disk"],
                  "source": ["a", "b", "c"], "score": [0.5, 1.5, 2.5]}),
        path,
    )  # fmt: skip
    config = load_governance_config(None)
    raw = ingest_sources([path.parent], config.ingest, namespace="t").kept
    assert {"label", "src_source", "score"} <= set(raw.column_names)
    assert raw.column("source").to_pylist()[0] == "t:labelled.parquet"
    table = normalize_stage(raw, config.normalize).kept
    table = language_id_stage(table, config).kept
    dedup = dedup_or_skip(table, config, "de")
    kept = quality_or_skip(dedup.kept, config).kept
    assert dedup.rejected.num_rows == 1  # the exact copy
    assert kept.num_rows >= 1
    by_id = {r["doc_id"]: r for r in raw.to_pylist()}
    for row in kept.to_pylist():
        assert row["label"] == by_id[row["doc_id"]]["label"]
        assert row["src_source"] == by_id[row["doc_id"]]["src_source"]
        assert row["score"] == by_id[row["doc_id"]]["score"]
    assert json.loads(dedup.rejected.column("details")[0].as_py())["duplicate_of"] in set(
        kept.column("doc_id").to_pylist()
    )
