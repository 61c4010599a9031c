"""Published stage outputs: a stage's kept rows and its ledger rows appear together or not at all.

A stage writes its outputs into one folder per partition (``stages/<variant>/<stage>/<name>/``):
content-addressed Parquet files (``kept.<lang>.<hash>.parquet``, ``rejected.<hash>.parquet``)
first, then ``manifest.json`` last, with one atomic rename. Readers open only the files the
manifest names, so a run killed half-way leaves the previous publication intact (its files are
still there: superseded files are deleted only after the new manifest is in place) and can never
pair a new kept file with an old ledger. The manifest also carries the counts and the content
hash that Dagster reports as the data version.

Kept rows may be split by language (``language_id`` writes one file per language, so each
per-language stage reads only its own): ``kept`` maps a name to a table.

**Several part files per split.** An engine that works in shards (``quality_models/engine.py``)
writes each shard's kept and ledger rows as their own content-addressed part files
(:func:`write_part`, from any process or Ray worker that sees the folder), and the driver then
publishes them all with one manifest (:func:`publish_parts`), still written last. A manifest
entry then lists its ``parts`` in row order (``file`` names the first, for older readers);
readers concatenate them. A one-part entry looks exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .contract import REJECTED_SCHEMA

MANIFEST = "manifest.json"
ALL = "all"  # the name of an unsplit kept table


class NotPublished(FileNotFoundError):
    """A stage output that was never published (or not yet): the message says which."""


@dataclass(frozen=True)
class Published:
    """One published stage output, read through its manifest."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def data_version(self) -> str:
        return self.manifest["data_version"]

    @property
    def kept_names(self) -> list[str]:
        return sorted(self.manifest["kept"])

    def _read(self, entry: Mapping[str, Any]) -> pa.Table:
        tables = [pq.read_table(self.folder / p["file"]) for p in parts_of(entry)]
        return tables[0] if len(tables) == 1 else _concat(tables)

    def kept(self, name: str | None = None) -> pa.Table:
        """The kept rows: of one split (a language), or all splits concatenated."""
        files = self.manifest["kept"]
        if name is not None:
            if name not in files:
                return _empty_like(self, files)
            return self._read(files[name])
        tables = [self._read(files[k]) for k in sorted(files)]
        return _concat(tables) if tables else pa.table({})

    def kept_files(self, name: str) -> list[Path]:
        """The part files of one split, in row order (none for a split nobody kept)."""
        entry = self.manifest["kept"].get(name)
        return [self.folder / p["file"] for p in parts_of(entry)] if entry else []

    def files(self) -> list[Path]:
        """Every kept and ledger part file the manifest names."""
        out = [self.folder / p["file"] for k in sorted(self.manifest["kept"])
               for p in parts_of(self.manifest["kept"][k])]  # fmt: skip
        return out + [self.folder / p["file"] for p in parts_of(self.manifest["rejected"])]

    def rows_on_disk(self) -> tuple[int, int]:
        """``(kept, rejected)`` row counts read from the Parquet footers themselves."""
        kept = sum(pq.read_metadata(self.folder / p["file"]).num_rows
                   for e in self.manifest["kept"].values() for p in parts_of(e))  # fmt: skip
        rej = sum(pq.read_metadata(self.folder / p["file"]).num_rows
                  for p in parts_of(self.manifest["rejected"]))  # fmt: skip
        return kept, rej

    def rejected(self) -> pa.Table:
        return self._read(self.manifest["rejected"])

    def kept_rows(self, name: str | None = None) -> int:
        files = self.manifest["kept"]
        if name is not None:
            return files[name]["rows"] if name in files else 0
        return sum(v["rows"] for v in files.values())

    @property
    def rejected_rows(self) -> int:
        return self.manifest["rejected"]["rows"]


def parts_of(entry: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The part files of a manifest entry (``{"file", "rows", "sha1"}`` each), in row order."""
    if not entry:
        return []
    return list(entry["parts"]) if "parts" in entry else [entry]


def _empty_like(pub: Published, files: Mapping[str, Any]) -> pa.Table:
    if not files:
        return pa.table({})
    first = pub.folder / files[sorted(files)[0]]["file"]
    return pq.read_schema(first).empty_table()


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Tables from several sources may carry different pass-through columns: missing ones are
    filled with nulls rather than being an error."""
    return pa.concat_tables(tables, promote_options="permissive")


def concat_tables(tables: list[pa.Table]) -> pa.Table:
    """Concatenate stage tables whose pass-through columns may differ (nulls fill the gaps)."""
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    return _concat(tables)


def _write_hashed(table: pa.Table, folder: Path, stem: str) -> tuple[str, str]:
    """Write ``table`` as ``<stem>.<sha>.parquet`` (written to a temp file, then renamed)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        digest = hashlib.sha1(Path(tmp).read_bytes()).hexdigest()
        name = f"{stem}.{digest[:16]}.parquet"
        os.replace(tmp, folder / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return name, digest


def write_part(folder: str | os.PathLike, table: pa.Table, stem: str) -> dict[str, Any]:
    """Write one part file (``<stem>.<sha>.parquet``, atomically) into ``folder``; what
    :func:`publish_parts` needs to name it. Nothing reads it before a manifest names it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file, sha = _write_hashed(table, folder, stem)
    return {"file": file, "rows": table.num_rows, "sha1": sha}


def _entry(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    if len(parts) == 1:
        return dict(parts[0])
    sha = hashlib.sha1("".join(p["sha1"] for p in parts).encode()).hexdigest()
    return {"file": parts[0]["file"], "rows": sum(p["rows"] for p in parts), "sha1": sha,
            "parts": [dict(p) for p in parts]}  # fmt: skip


def publish(
    folder: str | os.PathLike,
    kept: pa.Table | Mapping[str, pa.Table],
    rejected: pa.Table,
    *,
    input_rows: int,
    info: Mapping[str, Any] | None = None,
) -> Published:
    """Write kept and ledger rows, then the manifest (the one atomic step), then delete what
    the previous manifest named and this one does not."""
    folder = Path(folder)
    parts = dict(kept) if isinstance(kept, Mapping) else {ALL: kept}
    if rejected.num_rows == 0 and rejected.schema != REJECTED_SCHEMA:
        rejected = REJECTED_SCHEMA.empty_table()
    kept_parts = {name: [write_part(folder, parts[name], f"kept.{name}")] for name in parts}
    return publish_parts(
        folder, kept_parts, [write_part(folder, rejected, "rejected")],
        input_rows=input_rows, info=info,
    )  # fmt: skip


def publish_parts(
    folder: str | os.PathLike,
    kept: Mapping[str, list[Mapping[str, Any]]],
    rejected: list[Mapping[str, Any]],
    *,
    input_rows: int,
    info: Mapping[str, Any] | None = None,
) -> Published:
    """Publish part files already in ``folder`` (:func:`write_part`): kept parts per split and
    ledger parts, each list in row order. The manifest is written last, in one rename; then
    every Parquet file it does not name is deleted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not rejected:
        rejected = [write_part(folder, REJECTED_SCHEMA.empty_table(), "rejected")]
    digest = hashlib.sha1()
    kept_files: dict[str, dict[str, Any]] = {}
    for name in sorted(kept):
        if not kept[name]:
            continue
        kept_files[name] = _entry(list(kept[name]))
        digest.update(f"{name}:{kept_files[name]['sha1']};".encode())
    rej = _entry(list(rejected))
    digest.update(f"rejected:{rej['sha1']}".encode())
    manifest = {
        "input": int(input_rows),
        "kept": kept_files,
        "rejected": rej,
        "data_version": digest.hexdigest()[:16],
        "published_at": time.time(),
        **(dict(info) if info else {}),
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True, default=str)
    os.replace(tmp, folder / MANIFEST)
    pub = Published(folder, manifest)
    named = {p.name for p in pub.files()} | {MANIFEST}
    for path in folder.iterdir():  # superseded outputs and leftovers of killed runs
        if path.name not in named and path.suffix in (".parquet", ".tmp"):
            path.unlink(missing_ok=True)
    return pub


def read_published(folder: str | os.PathLike, what: str = "") -> Published:
    """The published output in ``folder``; :class:`NotPublished` (with ``what`` in the message)
    when none was published yet."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise NotPublished(f"{what or folder} has not been published yet (no {path})")
    return Published(folder, json.loads(path.read_text(encoding="utf-8")))


def is_published(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST).is_file()
