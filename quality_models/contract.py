"""The data contract shared by every governance stage (see shared/DESIGN.md §2).

One Arrow table shape flows through the stages; every document a stage drops becomes a
ledger row in ``REJECTED_SCHEMA`` so that ``input = kept + rejected`` can be checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

QUALITY_SIGNALS_TYPE = pa.string()  # JSON-encoded dict: flexible per rule set, readable anywhere

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        # language the source claims (catalogue locale, file name); routes documents when the
        # LID stage is ablated away, and lets tests measure LID against it.
        ("declared_lang", pa.string()),
        ("lang", pa.string()),
        ("script", pa.string()),
        ("lang_score", pa.float32()),
        ("lid_decision", pa.string()),  # why `lang` is what it is (langid.LID_DECISIONS)
        ("content_hash", pa.string()),
        ("dup_cluster", pa.string()),
        ("dup_cluster_size", pa.int32()),
        ("perplexity", pa.float32()),
        ("quality_bucket", pa.string()),
        ("quality_signals", QUALITY_SIGNALS_TYPE),
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("details", pa.string()),  # JSON
        ("lang", pa.string()),  # best language known at the time of rejection ("" if none)
        ("text", pa.string()),
    ]
)


def make_doc_id(source_uri: str, position: int | str) -> str:
    """Stable id from where a record came from, never from its text (DESIGN §2)."""
    return hashlib.sha1(f"{source_uri}#{position}".encode()).hexdigest()[:20]


def content_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def empty_documents() -> pa.Table:
    return DOCUMENT_SCHEMA.empty_table()


def empty_rejected() -> pa.Table:
    return REJECTED_SCHEMA.empty_table()


def documents_from_records(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a contract table from dicts; missing columns become nulls."""
    rows = list(records)
    columns = {name: [r.get(name) for r in rows] for name in DOCUMENT_SCHEMA.names}
    return pa.table(columns, schema=DOCUMENT_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """Add missing contract columns as nulls and order/cast them to the contract."""
    arrays = []
    for fld in DOCUMENT_SCHEMA:
        if fld.name in table.column_names:
            arrays.append(table.column(fld.name).cast(fld.type))
        else:
            arrays.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(arrays, schema=DOCUMENT_SCHEMA)


def rejected_rows(
    table: pa.Table,
    stage: str,
    reasons: Iterable[str],
    details: Iterable[Mapping[str, Any] | None] | None = None,
) -> pa.Table:
    """Ledger rows for every document of ``table`` (already filtered to the dropped ones)."""
    reasons = list(reasons)
    if len(reasons) != table.num_rows:
        raise ValueError("one reason per rejected document is required")
    det = list(details) if details is not None else [None] * table.num_rows
    lang = (
        table.column("lang").to_pylist()
        if "lang" in table.column_names
        else [None] * table.num_rows
    )
    declared = (
        table.column("declared_lang").to_pylist()
        if "declared_lang" in table.column_names
        else [None] * table.num_rows
    )
    return pa.table(
        {
            "doc_id": table.column("doc_id"),
            "source": table.column("source"),
            "stage": [stage] * table.num_rows,
            "reason": reasons,
            "details": [json.dumps(d or {}, ensure_ascii=False, sort_keys=True) for d in det],
            "lang": [a or b or "" for a, b in zip(lang, declared, strict=True)],
            "text": table.column("text"),
        },
        schema=REJECTED_SCHEMA,
    )


@dataclass
class StageResult:
    """What a stage returns: the documents it kept, the ledger rows, and its metadata."""

    kept: pa.Table
    rejected: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_in(self) -> int:
        return self.kept.num_rows + self.rejected.num_rows

    def summary(self) -> dict[str, Any]:
        n_in = self.n_in
        return {
            "input": n_in,
            "kept": self.kept.num_rows,
            "rejected": self.rejected.num_rows,
            "keep_rate": round(self.kept.num_rows / n_in, 4) if n_in else 1.0,
            "reasons": reason_counts(self.rejected),
        }


def split_by_mask(
    table: pa.Table,
    keep: np.ndarray,
    stage: str,
    reasons: list[str],
    details: list[Mapping[str, Any] | None] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Split ``table`` by a boolean keep mask; ``reasons``/``details`` are per-row (full length)."""
    keep = np.asarray(keep, dtype=bool)
    drop_idx = np.flatnonzero(~keep)
    dropped = table.take(pa.array(drop_idx, type=pa.int64()))
    rej = rejected_rows(
        dropped,
        stage,
        [reasons[i] for i in drop_idx],
        [details[i] for i in drop_idx] if details is not None else None,
    )
    kept = table.filter(pa.array(keep))
    return kept, rej


def reason_counts(rejected: pa.Table) -> dict[str, int]:
    if rejected.num_rows == 0:
        return {}
    counts: dict[str, int] = {}
    for r in rejected.column("reason").to_pylist():
        counts[r] = counts.get(r, 0) + 1
    return dict(sorted(counts.items()))


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write Parquet to a temp file in the same folder, then rename: no half files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def read_parquet(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path)
