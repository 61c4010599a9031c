"""Readers and ingest: every record becomes a document or a ledger row with a reason."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quality_models.config import IngestConfig
from quality_models.sources import (
    SourceError,
    expand_inputs,
    ingest_sources,
    locale_to_lang,
    read_hf,
    read_mo,
)


def _reasons(result):
    return dict(zip(result.rejected.column("doc_id").to_pylist(),
                    result.rejected.column("reason").to_pylist(), strict=True))  # fmt: skip


def test_jsonl_bad_records_are_quarantined_with_reasons(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "Ein ganz normaler deutscher Satz.", "lang": "de"}).encode(),
        b'{"text": "caf\xe9 \xff broken"}',
        b'{"text": "unterminated',
        b"[1, 2, 3]",
        b'{"text": 42}',
        b'{"text": ["a", "list"]}',
        b'{"no_text": "x"}',
        b'{"text": "   "}',
        json.dumps({"text": "x" * (10 * 1024 * 1024)}).encode(),
        json.dumps({"text": "mit\u0000NUL"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    result = ingest_sources([path], IngestConfig(max_doc_chars=1_000_000))
    reasons = sorted(_reasons(result).values())
    assert reasons == sorted([
        "invalid_utf8", "malformed_json", "not_an_object", "wrong_field_type",
        "wrong_field_type", "missing_text", "empty_text", "oversize",
    ])  # fmt: skip
    assert result.kept.num_rows == 2  # the clean one and the NUL one (normalisation cleans it)
    assert result.n_in == 10
    oversize = result.rejected.filter(pa.compute.equal(result.rejected["reason"], "oversize"))
    assert len(oversize["text"][0].as_py()) == 10 * 1024 * 1024  # kept whole, not truncated
    assert result.kept["declared_lang"].to_pylist()[0] == "de"


def test_doc_ids_are_stable_and_positional(tmp_path: Path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "eins zwei drei"}\n{"text": "eins zwei drei"}\n')
    a = ingest_sources([path]).kept["doc_id"].to_pylist()
    b = ingest_sources([path]).kept["doc_id"].to_pylist()
    assert a == b and len(set(a)) == 2  # same text, different records, different ids


def test_parquet_and_text_sources(tmp_path: Path):
    pq.write_table(pa.table({"text": ["hello world", None, "x"], "lang": ["en", "en", None]}),
                   tmp_path / "p.parquet")  # fmt: skip
    (tmp_path / "t.txt").write_bytes("erste Zeile\n\nzweite Zeile\n\xff\xfe\n".encode("latin-1"))
    result = ingest_sources([tmp_path])
    assert result.kept.num_rows == 4
    assert sorted(_reasons(result).values()) == ["invalid_utf8", "missing_text"]


def test_parquet_without_text_column_is_a_clear_error(tmp_path: Path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(SourceError, match="no column 'text'"):
        ingest_sources([tmp_path / "p.parquet"])


def test_missing_input_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SourceError, match="input not found"):
        ingest_sources([tmp_path / "nope.jsonl"])


def test_gettext_catalogue_reader():
    mos = sorted(Path("/usr/share/locale/de/LC_MESSAGES").glob("*.mo"))
    assert mos, "the system gettext catalogues are expected on Debian"
    records = list(read_mo(mos[0], IngestConfig()))
    assert records and all(r.declared_lang == "de" for r in records)
    assert len({r.doc_id for r in records}) == len(records)


def test_corrupt_catalogue_is_one_ledger_row(tmp_path: Path):
    bad = tmp_path / "locale" / "fr" / "LC_MESSAGES" / "broken.mo"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xde\x12\x04\x95" + b"\x00" * 7)
    result = ingest_sources([bad])
    assert result.kept.num_rows == 0
    assert list(_reasons(result).values()) == ["unreadable_catalog"]


def test_hugging_face_reader_on_local_files(tmp_path: Path):
    path = tmp_path / "hub.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": f"document {i}", "lang": "en"}) for i in range(5))
    )
    records = list(read_hf("json", IngestConfig(), data_files=str(path), limit=3))
    assert [r.text for r in records] == ["document 0", "document 1", "document 2"]
    assert all(r.source == "hf:json@train" for r in records)


def test_locale_mapping_and_expansion(tmp_path: Path):
    assert locale_to_lang("zh_CN") == "zh" and locale_to_lang("pt_BR.UTF-8") == "pt"
    assert locale_to_lang("nb") == "no"
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(SourceError, match="unsupported format"):
        expand_inputs([tmp_path / "x.csv"])
    with pytest.raises(SourceError, match="no supported files"):
        expand_inputs([tmp_path])
