"""The gettext parallel corpus: catalogue discovery, .mo/.po reading (plurals, contexts,
fuzzy/empty entries), placeholders, the manifest, and clear errors for bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polib
import pytest

from training.gettext_corpus import (
    DEFAULT_LOCALE_DIR,
    PARALLEL_SCHEMA,
    CatalogueError,
    build_parallel_corpus,
    domain_of,
    find_catalogues,
    find_placeholders,
    junk_reason,
    message_key,
    placeholder_signature,
    read_catalogue,
    strip_mnemonics,
    uses_mnemonics,
)


def _catalogue(path: Path, entries: list[polib.POEntry], lang: str, po: bool = False) -> Path:
    cat = polib.POFile()
    cat.metadata = {
        "Content-Type": "text/plain; charset=UTF-8",
        "Language": lang,
        "Plural-Forms": "nplurals=2; plural=(n != 1);",
    }
    for e in entries:
        cat.append(e)
    path.parent.mkdir(parents=True, exist_ok=True)
    if po:
        cat.save(str(path))
    else:
        cat.save_as_mofile(str(path))
    return path


GERMAN = [
    polib.POEntry(msgid="cannot open file %s", msgstr="Datei %s kann nicht geöffnet werden"),
    polib.POEntry(
        msgid="%d file removed",
        msgid_plural="%d files removed",
        msgstr_plural={0: "%d Datei entfernt", 1: "%d Dateien entfernt"},
    ),
    polib.POEntry(msgctxt="menu", msgid="_Open", msgstr="Ö_ffnen"),
    polib.POEntry(msgctxt="verb", msgid="Open", msgstr="Öffnen"),
    polib.POEntry(msgid="%1$s copied to %2$s", msgstr="nach %2$s kopiert: %1$s"),
    polib.POEntry(msgid="invalid user %s", msgstr="ungültiger Benutzer"),  # lost placeholder
    polib.POEntry(msgid="Server", msgstr="Server"),  # untranslated
    polib.POEntry(msgid="%s: %s", msgstr="%s: %s"),  # placeholder only
    polib.POEntry(msgid="not translated yet", msgstr=""),  # empty: msgfmt drops it
]


@pytest.fixture()
def locale_dir(tmp_path: Path) -> Path:
    root = tmp_path / "locale"
    _catalogue(root / "de/LC_MESSAGES/coreutils.mo", GERMAN, "de")
    _catalogue(
        root / "de/LC_MESSAGES/wget-gnulib.mo",
        [polib.POEntry(msgid="cannot open file %s", msgstr="Datei %s nicht zu öffnen")],
        "de",
    )
    _catalogue(
        root / "zh_CN/LC_MESSAGES/coreutils.mo",
        [polib.POEntry(msgid="cannot open file %s", msgstr="无法打开文件 %s")],
        "zh_CN",
    )
    _catalogue(
        root / "zh_TW/LC_MESSAGES/coreutils.mo",
        [polib.POEntry(msgid="cannot open file %s", msgstr="無法開啟檔案 %s")],
        "zh_TW",
    )
    _catalogue(
        root / "en_GB/LC_MESSAGES/coreutils.mo",
        [polib.POEntry(msgid="color", msgstr="colour")],
        "en_GB",
    )
    fuzzy = polib.POEntry(msgid="Loading", msgstr="Laden", flags=["fuzzy"])
    obsolete = polib.POEntry(msgid="Old", msgstr="Alt", obsolete=True)
    good = polib.POEntry(msgid="Saving the file", msgstr="Datei wird gespeichert")
    _catalogue(root / "de/LC_MESSAGES/psql-15.po", [fuzzy, obsolete, good], "de", po=True)
    # a truncated catalogue: the first 40 bytes of a real one
    broken = root / "ru/LC_MESSAGES/wget.mo"
    broken.parent.mkdir(parents=True)
    broken.write_bytes((root / "de/LC_MESSAGES/coreutils.mo").read_bytes()[:40])
    return root


def test_read_mo_keeps_plurals_and_contexts(locale_dir: Path) -> None:
    contents = read_catalogue(locale_dir / "de/LC_MESSAGES/coreutils.mo")
    by_key = {(e.msgctxt, e.msgid): e for e in contents.entries}
    plural = by_key[(None, "%d file removed")]
    assert plural.msgid_plural == "%d files removed"
    assert plural.msgstr_plural == ("%d Datei entfernt", "%d Dateien entfernt")
    assert plural.msgstr == "%d Datei entfernt"
    # the same msgid under two contexts stays two entries with two keys
    assert by_key[("menu", "_Open")].msgstr == "Ö_ffnen"
    assert by_key[("verb", "Open")].msgstr == "Öffnen"
    assert message_key("Open", "verb") != message_key("Open")
    assert contents.counts["plural"] == 1 and contents.counts["context"] == 2
    assert (None, "not translated yet") not in by_key  # empty translations are not entries
    assert contents.counts["header"] == 1


def test_read_po_skips_fuzzy_and_obsolete_with_counts(locale_dir: Path) -> None:
    contents = read_catalogue(locale_dir / "de/LC_MESSAGES/psql-15.po")
    assert [e.msgid for e in contents.entries] == ["Saving the file"]
    assert contents.counts["fuzzy"] == 1
    assert contents.counts["obsolete"] == 1


def test_corrupt_catalogue_gives_clear_error(locale_dir: Path) -> None:
    bad = locale_dir / "ru/LC_MESSAGES/wget.mo"
    with pytest.raises(CatalogueError, match=r"wget\.mo: not a valid mo catalogue"):
        read_catalogue(bad)
    junk = locale_dir / "ru/LC_MESSAGES/random.mo"
    junk.write_bytes(b"\x00not a catalogue at all, just bytes" * 3)
    with pytest.raises(CatalogueError, match="random.mo"):
        read_catalogue(junk)
    with pytest.raises(CatalogueError, match="cannot read"):
        read_catalogue(locale_dir / "ru/LC_MESSAGES/missing.mo")


def test_unknown_locale_dir_and_language(tmp_path: Path, locale_dir: Path) -> None:
    with pytest.raises(CatalogueError, match="locale directory not found"):
        find_catalogues(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogueError, match="no gettext catalogues"):
        find_catalogues(empty)
    with pytest.raises(CatalogueError, match=r"language\(s\) xx.*available: de, ru, zh"):
        find_catalogues(locale_dir, languages=["de", "xx"])


def test_build_corpus_flags_problems_and_records_manifest(locale_dir: Path) -> None:
    corpus = build_parallel_corpus(locale_dir, progress=False)
    t = corpus.table
    assert t.schema == PARALLEL_SCHEMA
    rows = t.to_pylist()
    # zh_CN is preferred over zh_TW; en_GB is not a target language
    assert {r["locale"] for r in rows if r["lang"] == "zh"} == {"zh_CN"}
    assert "en" not in {r["lang"] for r in rows}
    de = {(r["catalogue"], r["msgctxt"], r["msgid"]): r for r in rows if r["lang"] == "de"}
    assert de[("coreutils", None, "Server")]["untranslated"] is True
    assert de[("coreutils", None, "%s: %s")]["junk"] == "placeholder_only"
    assert de[("coreutils", None, "invalid user %s")]["placeholder_mismatch"] is True
    # reordered positional placeholders are a correct translation
    moved = de[("coreutils", None, "%1$s copied to %2$s")]
    assert moved["placeholders"] == ["%1$s", "%2$s"]
    assert moved["msgstr_placeholders"] == ["%2$s", "%1$s"]
    assert moved["placeholder_mismatch"] is False
    # the same msgid in coreutils and wget (gnulib) is a duplicate across packages
    shared = de[("coreutils", None, "cannot open file %s")]
    assert shared["n_domains"] == 2
    assert de[("wget-gnulib", None, "cannot open file %s")]["domain"] == "wget"
    assert de[("psql-15", None, "Saving the file")]["domain"] == "postgres"
    # the manifest: one row per catalogue, checksums of the real files, the broken one kept
    man = {(m["lang"], m["catalogue"]): m for m in corpus.manifest.to_pylist()}
    path = locale_dir / "de/LC_MESSAGES/coreutils.mo"
    assert man[("de", "coreutils")]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert man[("ru", "wget")]["status"] == "unreadable"
    assert "not a valid mo catalogue" in man[("ru", "wget")]["error"]
    assert man[("de", "psql-15")]["skipped_fuzzy"] == 1
    assert corpus.stats["unreadable_catalogues"] == 1
    assert corpus.stats["per_language"]["de"]["untranslated"] >= 1


def test_placeholders() -> None:
    text = "%s: %1$d of %(count)s in %<PRIu64> {0} {name} 100%% %ld %.*s %-10s %3$s %1 and %2"
    assert find_placeholders(text) == [
        "%s", "%1$d", "%(count)s", "%<PRIu64>", "{0}", "{name}", "%ld", "%.*s", "%-10s",
        "%3$s", "%1", "%2",
    ]  # fmt: skip
    assert find_placeholders("50% done, 100%% sure") == []
    assert placeholder_signature(["%1$s", "%2$d"]) == placeholder_signature(["%d", "%s"])
    assert placeholder_signature(["%s"]) != placeholder_signature(["%d"])
    assert junk_reason("%s: %s") == "placeholder_only"
    assert junk_reason("OK") == "too_short"
    assert junk_reason("max_wal_senders") == "identifier"
    assert junk_reason("cannot stat %s") == ""


def test_domains_and_mnemonics() -> None:
    assert domain_of("psql-15") == "postgres"
    assert domain_of("libpq5-15") == "postgres"
    assert domain_of("wget-gnulib") == "wget"
    assert domain_of("gtk20-properties") == "gtk"
    assert domain_of("libapt-pkg6.0") == "apt"
    assert domain_of("coreutils") == "coreutils"
    assert strip_mnemonics("Save _As") == "Save As"
    assert strip_mnemonics("開く(_O)") == "開く"
    assert strip_mnemonics("Ö_ffnen") == "Öffnen"
    assert strip_mnemonics("a_b and c_d") == "a_b and c_d"  # two underscores: identifiers
    assert uses_mnemonics(["_Open", "_Save", "Quit"]) is True
    assert uses_mnemonics(["max_connections is %d", "O_DIRECT failed"]) is False


@pytest.mark.skipif(
    not (DEFAULT_LOCALE_DIR / "ja/LC_MESSAGES/wget.mo").exists(),
    reason="the system's wget catalogues are not installed",
)
def test_system_catalogues() -> None:
    corpus = build_parallel_corpus(languages=["de", "ja"], domains=["wget"], progress=False)
    rows = corpus.table.to_pylist()
    assert {r["lang"] for r in rows} == {"de", "ja"}
    assert sum(r["plural"] for r in rows) > 0
    ja = [r for r in rows if r["lang"] == "ja" and not r["untranslated"]]
    assert len(ja) > 300
    assert all(r["domain"] == "wget" for r in rows)
    for m in corpus.manifest.to_pylist():
        assert m["status"] == "ok"
        assert m["sha256"] == hashlib.sha256(Path(m["path"]).read_bytes()).hexdigest()
