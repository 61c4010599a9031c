"""Readers for raw inputs: JSONL, Parquet, plain text, gettext ``.mo`` catalogues and Hugging Face
datasets by name (streaming).

Every reader yields one ``RawRecord`` per input record. A record that cannot be used (invalid
UTF-8, malformed JSON, a wrong field type, empty or oversize text) still yields a record, with
``reason`` set, so ingest can quarantine it in the ledger: nothing is silently lost.

Stable ids (DESIGN §2): a record's ``source`` is its file's path *relative to the input root*
it was found under (the folder given, or the file's own folder), prefixed by an optional
namespace (the Dagster source partition), and ``doc_id`` hashes that plus the record's position.
The same data gives the same ids wherever the data root lives.

Pass-through columns: a Parquet source's columns other than the text and language fields (a
task's ``label``, ``split``, ``group``...) travel through every stage untouched and arrive in the
curated files. A column whose name is a contract column is renamed ``src_<name>``.
"""

from __future__ import annotations

import gettext
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import IngestConfig
from .contract import StageResult, documents_from_records, empty_rejected, make_doc_id

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".txt", ".mo")


class SourceError(ValueError):
    """An input cannot be opened at all (missing file, unknown format): a clear, early error."""


@dataclass
class RawRecord:
    doc_id: str
    source: str
    text: str
    declared_lang: str | None = None
    reason: str | None = None  # set when the record must be quarantined
    details: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] | None = None  # pass-through columns (Parquet sources)


def locale_to_lang(locale: str) -> str:
    """Locale folder name -> language code as lid.176 names it (``zh_CN`` -> ``zh``)."""
    base = re.split(r"[_.@-]", locale, maxsplit=1)[0].lower()
    return {"nb": "no", "nn": "no", "iw": "he", "in": "id"}.get(base, base)


def _decode(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", errors="replace"), f"byte {exc.start}: {exc.reason}"


def _record_from_value(
    uri: str, pos: int, value: Any, lang: Any, config: IngestConfig,
    extra: dict[str, Any] | None = None,
) -> RawRecord:  # fmt: skip
    doc_id = make_doc_id(uri, pos)
    lang = lang if isinstance(lang, str) and lang else None
    if value is None:
        return RawRecord(doc_id, uri, "", lang, "missing_text", {"field": config.text_field})
    if not isinstance(value, str):
        return RawRecord(
            doc_id,
            uri,
            json.dumps(value, ensure_ascii=False, default=str)[:10_000],
            lang,
            "wrong_field_type",
            {"field": config.text_field, "type": type(value).__name__},
        )
    return _checked(RawRecord(doc_id, uri, value, lang, extra=extra), config)


def _checked(rec: RawRecord, config: IngestConfig) -> RawRecord:
    if rec.reason is None:
        if not rec.text.strip():
            rec.reason = "empty_text"
        elif len(rec.text) > config.max_doc_chars:
            rec.reason = "oversize"
            rec.details = {"chars": len(rec.text), "max_doc_chars": config.max_doc_chars}
    return rec


def read_jsonl(path: Path, config: IngestConfig, uri: str | None = None) -> Iterator[RawRecord]:
    uri = uri or path.as_posix()
    with path.open("rb") as fh:
        for pos, raw in enumerate(fh):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            line, err = _decode(raw)
            if err:
                yield RawRecord(
                    make_doc_id(uri, pos), uri, line, None, "invalid_utf8", {"error": err}
                )
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRecord(
                    make_doc_id(uri, pos), uri, line, None, "malformed_json", {"error": str(exc)}
                )
                continue
            if not isinstance(obj, dict):
                yield RawRecord(
                    make_doc_id(uri, pos), uri, line, None, "not_an_object",
                    {"type": type(obj).__name__},
                )  # fmt: skip
                continue
            yield _record_from_value(
                uri, pos, obj.get(config.text_field), obj.get(config.lang_field), config
            )


def read_text(path: Path, config: IngestConfig, uri: str | None = None) -> Iterator[RawRecord]:
    """One document per non-empty line."""
    uri = uri or path.as_posix()
    with path.open("rb") as fh:
        for pos, raw in enumerate(fh):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            text, err = _decode(raw)
            rec = RawRecord(make_doc_id(uri, pos), uri, text)
            if err:
                rec.reason, rec.details = "invalid_utf8", {"error": err}
            yield _checked(rec, config)


def passthrough_name(column: str) -> str:
    """The curated-table name of a source column the stages do not use."""
    from .contract import DOCUMENT_SCHEMA

    return f"src_{column}" if column in DOCUMENT_SCHEMA.names else column


def passthrough_schema(path: Path, config: IngestConfig) -> pa.Schema:
    """The pass-through columns of a Parquet source, under their curated names."""
    schema = pq.read_schema(path)
    return pa.schema(
        [
            pa.field(passthrough_name(f.name), f.type)
            for f in schema
            if f.name not in (config.text_field, config.lang_field)
        ]
    )


def read_parquet(path: Path, config: IngestConfig, uri: str | None = None) -> Iterator[RawRecord]:
    uri = uri or path.as_posix()
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if config.text_field not in names:
        raise SourceError(f"{path}: no column {config.text_field!r} (columns: {names})")
    others = [n for n in names if n not in (config.text_field, config.lang_field)]
    pos = 0
    for batch in pf.iter_batches(batch_size=10_000):
        texts = batch.column(config.text_field).to_pylist()
        langs = (
            batch.column(config.lang_field).to_pylist()
            if config.lang_field in names
            else [None] * len(texts)
        )
        extras = {passthrough_name(n): batch.column(n).to_pylist() for n in others}
        for i, (value, lang) in enumerate(zip(texts, langs, strict=True)):
            extra = {k: v[i] for k, v in extras.items()} if extras else None
            yield _record_from_value(uri, pos, value, lang, config, extra)
            pos += 1


def read_mo(path: Path, config: IngestConfig, uri: str | None = None) -> Iterator[RawRecord]:
    """Translated messages of a gettext catalogue; the language comes from the locale folder."""
    uri = uri or path.as_posix()
    parts = path.parts
    lang = locale_to_lang(parts[-3]) if len(parts) >= 3 and parts[-2] == "LC_MESSAGES" else None
    try:
        with path.open("rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001 - documented recipe
    except (OSError, UnicodeDecodeError, ValueError, IndexError, struct.error) as exc:
        # the whole file is unusable: one quarantine row stands for it
        yield RawRecord(
            make_doc_id(uri, "file"), uri, "", lang, "unreadable_catalog",
            {"error": f"{type(exc).__name__}: {exc}"},
        )  # fmt: skip
        return
    keys = sorted(catalog, key=lambda k: (str(k[0]), k[1]) if isinstance(k, tuple) else (k, -1))
    for key in keys:
        msgid, form = key if isinstance(key, tuple) else (key, -1)
        if msgid == "" or form > 0:  # header entry; keep only the first plural form
            continue
        pos = f"{msgid}" if form < 0 else f"{msgid}[0]"
        rec = RawRecord(make_doc_id(uri, pos), uri, catalog[key], lang)
        yield _checked(rec, config)


def read_hf(
    name: str,
    config: IngestConfig,
    *,
    subset: str | None = None,
    split: str = "train",
    data_files: str | list[str] | None = None,
    streaming: bool = True,
    limit: int | None = None,
) -> Iterator[RawRecord]:
    """A Hugging Face dataset by name (or a builder such as ``json`` with ``data_files``)."""
    import datasets  # heavy import, only when used

    uri = f"hf:{name}" + (f":{subset}" if subset else "") + f"@{split}"
    try:
        ds = datasets.load_dataset(
            name, subset, split=split, data_files=data_files, streaming=streaming
        )
    except Exception as exc:  # datasets raises many types; report them as one clear error
        raise SourceError(f"cannot load dataset {name!r}: {type(exc).__name__}: {exc}") from None
    for pos, row in enumerate(ds):
        if limit is not None and pos >= limit:
            break
        yield _record_from_value(
            uri, pos, row.get(config.text_field), row.get(config.lang_field), config
        )


def parse_hf_spec(spec: str) -> dict[str, Any]:
    """``hf:NAME[:SUBSET][@SPLIT]`` -> keyword arguments of :func:`read_hf`."""
    body = spec[3:]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, subset = body.partition(":")
    if not name:
        raise SourceError(f"bad Hugging Face source {spec!r}; expected hf:NAME[:SUBSET][@SPLIT]")
    return {"name": name, "subset": subset or None, "split": split}


def input_files(inputs: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Files and folders -> ``(path, relative name)`` of every supported file, sorted. The
    relative name is the path below the folder it was found in (a file given directly: its
    own name), so ids do not depend on where the data root lives. ``hf:`` specs pass through."""
    out: list[tuple[str, str]] = []
    for item in inputs:
        s = str(item)
        if s.startswith("hf:"):
            out.append((s, s))
            continue
        path = Path(s)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in SUPPORTED_SUFFIXES)
            if not files:
                raise SourceError(f"{path}: folder holds no supported files {SUPPORTED_SUFFIXES}")
            out.extend((p.as_posix(), p.relative_to(path).as_posix()) for p in files)
        elif path.is_file():
            if path.suffix not in SUPPORTED_SUFFIXES:
                raise SourceError(f"{path}: unsupported format; use one of {SUPPORTED_SUFFIXES}")
            out.append((path.as_posix(), path.name))
        else:
            raise SourceError(f"input not found: {path}")
    names = [name for _, name in out]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(
            f"inputs share relative names {clash}: ids would collide; give their common folder"
        )
    return out


def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Files and folders -> the list of supported files, sorted; ``hf:`` specs pass through."""
    return [path for path, _ in input_files(inputs)]


def source_uri(namespace: str | None, relative: str) -> str:
    """A record's ``source``: ``<namespace>:<relative path>`` (or the relative path alone)."""
    return f"{namespace}:{relative}" if namespace else relative


def probe_source(path: str | Path, config: IngestConfig | None = None) -> str | None:
    """Why a file cannot be ingested at all (``None`` when it can): the inbox sensor quarantines
    such files with this reason instead of retrying them. Bad *records* inside a readable file
    are not a reason: ingest puts them in the ledger."""
    config = config or IngestConfig()
    path = Path(path)
    if not path.is_file():
        return "not a file"
    if path.suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported format {path.suffix or '(none)'}; use one of {SUPPORTED_SUFFIXES}"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        next(iter(read_source(str(path), config)), None)
    except SourceError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc}"
    return None


def read_source(spec: str, config: IngestConfig, uri: str | None = None) -> Iterator[RawRecord]:
    if spec.startswith("hf:"):
        yield from read_hf(config=config, **parse_hf_spec(spec))
        return
    path = Path(spec)
    if not path.is_file():
        raise SourceError(f"input not found: {path}")
    reader = {
        ".jsonl": read_jsonl, ".json": read_jsonl, ".ndjson": read_jsonl,
        ".parquet": read_parquet, ".txt": read_text, ".mo": read_mo,
    }.get(path.suffix)  # fmt: skip
    if reader is None:
        raise SourceError(f"{path}: unsupported format; use one of {SUPPORTED_SUFFIXES}")
    yield from reader(path, config, uri)


def _documents(good: list[RawRecord]) -> pa.Table:
    """Contract columns plus the records' pass-through columns (types inferred per column)."""
    kept = documents_from_records(
        {"doc_id": r.doc_id, "source": r.source, "text": r.text, "declared_lang": r.declared_lang}
        for r in good
    )
    names = sorted({k for r in good if r.extra for k in r.extra})
    for name in names:
        kept = kept.append_column(name, pa.array([(r.extra or {}).get(name) for r in good]))
    return kept


def ingest(records: Iterable[RawRecord]) -> StageResult:
    """Records -> contract table; quarantined records -> ledger rows of stage ``ingest``."""
    good, bad = [], []
    seen: set[str] = set()
    for rec in records:
        if rec.doc_id in seen:  # the same record given twice: the second copy is a ledger row
            rec.reason, rec.details = "duplicate_doc_id", {"doc_id": rec.doc_id}
        seen.add(rec.doc_id)
        (bad if rec.reason else good).append(rec)
    kept = _documents(good)
    if bad:
        rejected = pa.table(
            {
                "doc_id": [r.doc_id for r in bad],
                "source": [r.source for r in bad],
                "stage": ["ingest"] * len(bad),
                "reason": [r.reason for r in bad],
                "details": [json.dumps(r.details, ensure_ascii=False, sort_keys=True) for r in bad],
                "lang": [r.declared_lang or "" for r in bad],
                "text": [r.text for r in bad],
            },
            schema=empty_rejected().schema,
        )
    else:
        rejected = empty_rejected()
    return StageResult(kept, rejected, {"sources": sorted({r.source for r in good + bad})})


def ingest_sources(
    specs: Iterable[str | Path],
    config: IngestConfig | None = None,
    namespace: str | None = None,
) -> StageResult:
    """Ingest files, folders and ``hf:`` datasets. ``namespace`` (the Dagster source partition)
    prefixes every ``source`` so two inputs with the same relative path keep distinct ids."""
    config = config or IngestConfig()
    files = input_files(specs)

    def records() -> Iterator[RawRecord]:
        for spec, relative in files:
            uri = spec if spec.startswith("hf:") else source_uri(namespace, relative)
            yield from read_source(spec, config, uri)

    return ingest(records())
