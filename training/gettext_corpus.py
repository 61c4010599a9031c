"""A parallel corpus from the gettext message catalogues installed with the operating system.

Every catalogue holds English source messages (``msgid``) and their human translation
(``msgstr``) for one program and one locale, so the catalogues under ``/usr/share/locale`` are
real multilingual parallel data with an exact label: the program a message belongs to (OPUS
builds its GNOME, KDE and Ubuntu corpora from the same kind of source).

The builder keeps every entry and *flags* what a curator has to look at rather than silently
dropping it: untranslated entries (``msgstr == msgid``), messages shared by several programs,
placeholder-only and junk messages, and placeholders that differ between source and
translation. What it cannot use (header entries, empty or fuzzy translations, unreadable files)
is counted in the manifest, one row per catalogue with its SHA-256 for lineage.

Catalogues are parsed with ``polib``, which, unlike the standard library's ``gettext``, keeps
``msgid_plural`` and every plural form.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polib
import pyarrow as pa
from tqdm.auto import tqdm

from quality_models.contract import write_parquet_atomic
from quality_models.sources import locale_to_lang

DEFAULT_LOCALE_DIR = Path("/usr/share/locale")

# When several locales map to one language, the one that names the language's main written
# standard wins (lid.176 calls both zh_CN and zh_TW "zh"; Simplified Chinese is the larger set).
PREFERRED_LOCALES: dict[str, tuple[str, ...]] = {
    "zh": ("zh_CN", "zh_Hans", "zh"),
    "pt": ("pt_BR", "pt"),
    "sr": ("sr",),
    "no": ("nb", "no", "nb_NO"),
}

# Catalogue file stem -> program domain. Several catalogues belong to one program (psql-15 and
# pg_dump-15 are both PostgreSQL; wget-gnulib ships with wget). Anything else keeps its stem.
DOMAIN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"^(postgres|psql|pg_\w+|initdb|libpq\d*|plpgsql|pgscripts|ecpg\w*)(-\d+(\.\d+)?)?$"
        ),
        "postgres",
    ),
    (re.compile(r"^iso_"), "iso-codes"),
    (re.compile(r"^gtk\d*(-properties)?$"), "gtk"),
    (re.compile(r"^(bfd|binutils|gas|gold|ld|opcodes|gprof)$"), "binutils"),
    (re.compile(r"^gnupg\d*$"), "gnupg"),
    (re.compile(r"^glib\d*$"), "glib"),
    (re.compile(r"^(apt|libapt-pkg[\d.]*|libapt-inst[\d.]*)$"), "apt"),
    (re.compile(r"^gnutls\d*$"), "gnutls"),
    (re.compile(r"^gettext-(runtime|tools)$"), "gettext"),
    (re.compile(r"^gstreamer-[\d.]+$"), "gstreamer"),
    (re.compile(r"^dpkg(-dev)?$"), "dpkg"),
    (re.compile(r"^(.+)-gnulib$"), r"\1"),
)

# Format placeholders, most specific first: Python %(name)s, C99 inttypes %<PRIu64>, printf
# (with positional %1$s; the rare space flag is left out, so "50% done" is no "% d"), Qt/KDE
# %1, and brace formats {0} / {name} / {}.
PLACEHOLDER_RE = re.compile(
    r"%\([A-Za-z0-9_]+\)[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
    r"|%<PRI[a-zA-Z0-9]+>"
    r"|%(?:\d+\$)?[-+#0']*(?:\*(?:\d+\$)?|\d+)?(?:\.(?:\*(?:\d+\$)?|\d+))?"
    r"(?:hh|h|ll|l|L|q|j|z|Z|t|I64|I32|I)?[diouxXeEfFgGaAcCsSpn]"
    r"|%[1-9]\d*(?![\d$])"
    r"|\{[A-Za-z0-9_]*(?:![rsa])?(?::[^{}]*)?\}"
)
_POSITIONAL = re.compile(r"^%\d+\$")
_LETTERS = re.compile(r"[^\W\d_]")
_WORD3 = re.compile(r"[^\W\d_]{3,}")
_IDENTIFIER = re.compile(r"^[\w.\-/=<>:@+\[\]]+$")
_MNEMONIC_START = re.compile(r"(?:^|[\s(])_[^\W_]")
_MNEMONIC_CJK = re.compile(r"\s*\(_[^\W_]\)")
_UNDERSCORE_LETTER = re.compile(r"_(?=[^\W_])")
MNEMONIC_SHARE = 0.05  # a catalogue whose msgids start a word with "_" this often uses mnemonics

PARALLEL_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # sha1 of msgctxt\x04msgid, 16 hex: stable across languages
        ("lang", pa.string()),
        ("locale", pa.string()),
        ("domain", pa.string()),
        ("catalogue", pa.string()),
        ("catalogue_sha256", pa.string()),
        ("msgctxt", pa.string()),
        ("msgid", pa.string()),
        ("msgid_plural", pa.string()),
        ("msgstr", pa.string()),  # the singular form for plural entries
        ("msgstr_plural", pa.list_(pa.string())),
        ("plural", pa.bool_()),
        ("placeholders", pa.list_(pa.string())),
        ("msgstr_placeholders", pa.list_(pa.string())),
        ("placeholder_mismatch", pa.bool_()),
        ("untranslated", pa.bool_()),
        ("junk", pa.string()),  # "" when the message is usable, else why it is not
        ("n_domains", pa.int32()),  # programs whose catalogues hold this msgid (of those read)
        ("mnemonics", pa.bool_()),  # the catalogue marks keyboard accelerators with "_"
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("catalogue", pa.string()),
        ("lang", pa.string()),
        ("locale", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("status", pa.string()),  # "ok" | "unreadable"
        ("error", pa.string()),
        ("entries", pa.int64()),
        ("skipped_header", pa.int64()),
        ("skipped_empty", pa.int64()),
        ("skipped_fuzzy", pa.int64()),
        ("skipped_obsolete", pa.int64()),
        ("plural_entries", pa.int64()),
        ("context_entries", pa.int64()),
        ("mnemonics", pa.bool_()),
    ]
)


class CatalogueError(ValueError):
    """A catalogue or locale folder cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class Catalogue:
    path: Path
    locale: str
    lang: str
    catalogue: str  # file stem, e.g. "psql-15"
    domain: str  # program, e.g. "postgres"
    format: str  # "mo" | "po"


@dataclass(frozen=True)
class Entry:
    msgctxt: str | None
    msgid: str
    msgid_plural: str | None
    msgstr: str
    msgstr_plural: tuple[str, ...] = ()


@dataclass
class CatalogueContents:
    entries: list[Entry]
    sha256: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ParallelCorpus:
    """The parallel table (``PARALLEL_SCHEMA``), the manifest and counts of what was set aside."""

    table: pa.Table
    manifest: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)


def domain_of(catalogue: str) -> str:
    """Program domain of a catalogue file stem (``psql-15`` -> ``postgres``)."""
    for pattern, domain in DOMAIN_RULES:
        m = pattern.match(catalogue)
        if m:
            return m.expand(domain)
    return catalogue


def message_key(msgid: str, msgctxt: str | None = None) -> str:
    """Stable key of a source message, the same in every language's catalogue."""
    raw = msgid if not msgctxt else f"{msgctxt}\x04{msgid}"
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def find_placeholders(text: str) -> list[str]:
    """Format placeholders in order of appearance (``%%`` is a literal percent, not one)."""
    return [m.group(0) for m in PLACEHOLDER_RE.finditer(text.replace("%%", "\x00\x00"))]


def placeholder_signature(placeholders: Iterable[str]) -> tuple[str, ...]:
    """What a translation must preserve: conversions as a multiset, positions dropped.

    ``%1$s %2$d`` may legally become ``%2$d ... %1$s`` in a translation; the conversions are
    what must survive, so ``%1$s`` and ``%s`` count as the same ``%s``.
    """
    return tuple(sorted(_POSITIONAL.sub("%", p) for p in placeholders))


def strip_placeholders(text: str, replacement: str = " ") -> str:
    return PLACEHOLDER_RE.sub(replacement, text.replace("%%", "%"))


def junk_reason(msgid: str) -> str:
    """Why a source message is no usable text ("" when it is): the builder's own rule."""
    body = strip_placeholders(msgid).strip()
    if not _LETTERS.search(body):
        return "placeholder_only" if find_placeholders(msgid) else "no_letters"
    if not _WORD3.search(body):
        return "too_short"
    if " " not in body and _IDENTIFIER.match(body) and re.search(r"[_.\-/=<>:@\d]", body):
        return "identifier"
    return ""


def uses_mnemonics(msgids: Sequence[str]) -> bool:
    """Whether a catalogue marks keyboard accelerators with ``_`` (GTK's ``_Open``).

    Decided per catalogue from its own messages, because an underscore in a message of another
    program is usually part of an identifier (``max_connections``, ``O_DIRECT``).
    """
    if not msgids:
        return False
    return sum(bool(_MNEMONIC_START.search(m)) for m in msgids) / len(msgids) >= MNEMONIC_SHARE


def strip_mnemonics(text: str) -> str:
    """Remove an accelerator mark: ``Save _As`` -> ``Save As``, ``開く(_O)`` -> ``開く``.

    Only a single ``_`` before a letter is taken as a mark; two or more are left alone.
    """
    text = _MNEMONIC_CJK.sub("", text)
    if len(_UNDERSCORE_LETTER.findall(text)) == 1:
        text = _UNDERSCORE_LETTER.sub("", text)
    return text


def _choose_locales(by_lang: dict[str, list[str]]) -> dict[str, str]:
    chosen = {}
    for lang, locales in by_lang.items():
        prefs = [p for p in PREFERRED_LOCALES.get(lang, ()) if p in locales]
        if prefs:
            chosen[lang] = prefs[0]
        elif lang in locales:
            chosen[lang] = lang
        else:
            chosen[lang] = sorted(locales, key=lambda s: (("@" in s), len(s), s))[0]
    return chosen


def find_catalogues(
    locale_dir: str | Path | None = None,
    languages: Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
    locales: str = "preferred",
    exclude_domains: Sequence[str] = (),
) -> list[Catalogue]:
    """Catalogues under ``<locale_dir>/<locale>/LC_MESSAGES/*.mo`` (and ``*.po``).

    ``languages`` are lid.176 codes (``zh``, not ``zh_CN``); English locales are skipped, since
    English is the source side. ``locales="preferred"`` keeps one locale per language (see
    ``PREFERRED_LOCALES``), ``"all"`` keeps every regional variant.
    """
    root = Path(locale_dir) if locale_dir is not None else DEFAULT_LOCALE_DIR
    if not root.is_dir():
        raise CatalogueError(
            f"gettext locale directory not found: {root} "
            "(pass locale_dir= a folder holding <locale>/LC_MESSAGES/*.mo)"
        )
    if locales not in ("preferred", "all"):
        raise CatalogueError(f"locales must be 'preferred' or 'all', not {locales!r}")
    paths = sorted(p for ext in ("mo", "po") for p in root.glob(f"*/LC_MESSAGES/*.{ext}"))
    if not paths:
        raise CatalogueError(f"no gettext catalogues (*/LC_MESSAGES/*.mo) under {root}")
    by_lang: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        locale = p.parent.parent.name
        lang = locale_to_lang(locale)
        if lang != "en" and locale not in by_lang[lang]:
            by_lang[lang].append(locale)
    if languages is not None:
        missing = sorted(set(languages) - set(by_lang) - {"en"})
        if missing:
            raise CatalogueError(
                f"no catalogues for language(s) {', '.join(missing)} under {root}; "
                f"available: {', '.join(sorted(by_lang))}"
            )
    keep_lang = set(languages) if languages is not None else set(by_lang)
    chosen = _choose_locales(by_lang) if locales == "preferred" else None
    wanted_domains = set(domains) if domains is not None else None
    out = []
    for p in paths:
        locale = p.parent.parent.name
        lang = locale_to_lang(locale)
        if lang == "en" or lang not in keep_lang:
            continue
        if chosen is not None and chosen[lang] != locale:
            continue
        domain = domain_of(p.stem)
        if (wanted_domains is not None and domain not in wanted_domains) or (
            domain in exclude_domains
        ):
            continue
        out.append(Catalogue(p, locale, lang, p.stem, domain, p.suffix[1:]))
    return out


def read_catalogue(path: str | Path) -> CatalogueContents:
    """Entries of one ``.mo`` or ``.po`` catalogue, with counts of what was skipped.

    Skipped: the header (``msgid ""``), entries without translation, and, in ``.po`` files,
    fuzzy and obsolete entries (``msgfmt`` leaves fuzzy entries out of ``.mo`` files already).
    Raises ``CatalogueError`` naming the file when it is unreadable, truncated or not a
    catalogue at all.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read catalogue ({exc.strerror or exc})") from None
    sha = hashlib.sha256(data).hexdigest()
    fmt = path.suffix.lower()
    try:
        if fmt == ".mo":
            parsed = polib.mofile(data)
        elif fmt == ".po":
            parsed = polib.pofile(data.decode("utf-8"))
        else:
            raise CatalogueError(f"{path}: not a gettext catalogue (expected .mo or .po)")
    except CatalogueError:
        raise
    except UnicodeDecodeError as exc:
        raise CatalogueError(
            f"{path}: text is not valid in the catalogue's declared charset "
            f"(byte {exc.start}: {exc.reason})"
        ) from None
    except (OSError, struct.error, ValueError, IndexError, KeyError) as exc:
        raise CatalogueError(
            f"{path}: not a valid {fmt[1:]} catalogue (corrupt or truncated: {exc})"
        ) from None
    # polib moves the header entry (msgid "") into ``metadata``
    counts = Counter(header=int(bool(parsed.metadata)), empty=0, fuzzy=0, obsolete=0)
    counts.update(plural=0, context=0)
    entries = []
    for e in parsed:
        if getattr(e, "obsolete", False):
            counts["obsolete"] += 1
            continue
        if e.msgid == "" and not e.msgctxt:
            counts["header"] += 1
            continue
        if "fuzzy" in getattr(e, "flags", ()):
            counts["fuzzy"] += 1
            continue
        if e.msgid_plural:
            forms = tuple(e.msgstr_plural[k] for k in sorted(e.msgstr_plural))
            if not forms or not all(forms):
                counts["empty"] += 1
                continue
            entries.append(Entry(e.msgctxt, e.msgid, e.msgid_plural, forms[0], forms))
            counts["plural"] += 1
        else:
            if not e.msgstr:
                counts["empty"] += 1
                continue
            entries.append(Entry(e.msgctxt, e.msgid, None, e.msgstr))
        if e.msgctxt:
            counts["context"] += 1
    return CatalogueContents(entries, sha, dict(counts))


def _manifest_row(cat: Catalogue, sha: str, status: str, error: str, counts: dict, n: int):
    return {
        "domain": cat.domain,
        "catalogue": cat.catalogue,
        "lang": cat.lang,
        "locale": cat.locale,
        "path": cat.path.as_posix(),
        "sha256": sha,
        "format": cat.format,
        "status": status,
        "error": error,
        "entries": n,
        "skipped_header": counts.get("header", 0),
        "skipped_empty": counts.get("empty", 0),
        "skipped_fuzzy": counts.get("fuzzy", 0),
        "skipped_obsolete": counts.get("obsolete", 0),
        "plural_entries": counts.get("plural", 0),
        "context_entries": counts.get("context", 0),
    }


def build_parallel_corpus(
    locale_dir: str | Path | None = None,
    languages: Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
    locales: str = "preferred",
    progress: bool = True,
    exclude_domains: Sequence[str] = (),
) -> ParallelCorpus:
    """English ``msgid`` <-> ``msgstr`` per language, labelled with the program domain.

    An unreadable catalogue does not stop the build: it gets a manifest row with
    ``status="unreadable"`` and the error. ``n_domains`` counts the programs (among the
    catalogues read) whose catalogues hold the same ``msgid``: above 1 the label is ambiguous
    and the message is a duplicate across packages.
    """
    cats = find_catalogues(locale_dir, languages, domains, locales, exclude_domains)
    rows: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    source_info: dict[str, tuple[list[str], tuple[str, ...], str]] = {}
    for cat in tqdm(cats, desc="gettext catalogues", unit="file", disable=not progress):
        try:
            contents = read_catalogue(cat.path)
        except CatalogueError as exc:
            try:
                sha = hashlib.sha256(cat.path.read_bytes()).hexdigest()
            except OSError:
                sha = ""
            row = _manifest_row(cat, sha, "unreadable", str(exc), {}, 0)
            manifest.append({**row, "mnemonics": False})
            continue
        mnemonics = uses_mnemonics([e.msgid for e in contents.entries])
        row = _manifest_row(cat, contents.sha256, "ok", "", contents.counts, len(contents.entries))
        manifest.append({**row, "mnemonics": mnemonics})
        for e in contents.entries:
            src = source_info.get(e.msgid)
            if src is None:
                ph = find_placeholders(e.msgid)
                src = source_info[e.msgid] = (ph, placeholder_signature(ph), junk_reason(e.msgid))
            tgt_ph = find_placeholders(e.msgstr)
            rows.append(
                {
                    "key": message_key(e.msgid, e.msgctxt),
                    "lang": cat.lang,
                    "locale": cat.locale,
                    "domain": cat.domain,
                    "catalogue": cat.catalogue,
                    "catalogue_sha256": contents.sha256,
                    "msgctxt": e.msgctxt,
                    "msgid": e.msgid,
                    "msgid_plural": e.msgid_plural,
                    "msgstr": e.msgstr,
                    "msgstr_plural": list(e.msgstr_plural),
                    "plural": e.msgid_plural is not None,
                    "placeholders": src[0],
                    "msgstr_placeholders": tgt_ph,
                    "placeholder_mismatch": src[1]
                    != (placeholder_signature(tgt_ph) if tgt_ph else ()),
                    "untranslated": e.msgstr.strip() == e.msgid.strip(),
                    "junk": src[2],
                    "mnemonics": mnemonics,
                }
            )
    domains_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        domains_of[r["msgid"]].add(r["domain"])
    for r in rows:
        r["n_domains"] = len(domains_of[r["msgid"]])
    rows.sort(
        key=lambda r: (r["lang"], r["domain"], r["catalogue"], r["msgctxt"] or "", r["msgid"])
    )
    table = pa.Table.from_pylist(rows, schema=PARALLEL_SCHEMA)
    man = pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA)
    return ParallelCorpus(table, man, corpus_stats(table, man))


def corpus_stats(table: pa.Table, manifest: pa.Table) -> dict[str, Any]:
    """Counts of what the corpus holds and what a curator must look at, per language."""
    cols = table.select(["lang", "untranslated", "junk", "n_domains", "placeholder_mismatch"])
    per_lang: dict[str, Counter] = defaultdict(Counter)
    for lang, untr, junk, nd, mism in zip(*(c.to_pylist() for c in cols.columns), strict=True):
        c = per_lang[lang]
        c["entries"] += 1
        c["untranslated"] += bool(untr)
        c["junk"] += bool(junk)
        c["shared_across_domains"] += nd > 1
        c["placeholder_mismatch"] += bool(mism)
    man = manifest.to_pylist()
    return {
        "catalogues": len(man),
        "unreadable_catalogues": sum(m["status"] != "ok" for m in man),
        "entries": table.num_rows,
        "skipped_header": sum(m["skipped_header"] for m in man),
        "skipped_empty": sum(m["skipped_empty"] for m in man),
        "skipped_fuzzy": sum(m["skipped_fuzzy"] for m in man),
        "skipped_obsolete": sum(m["skipped_obsolete"] for m in man),
        "plural_entries": sum(m["plural_entries"] for m in man),
        "context_entries": sum(m["context_entries"] for m in man),
        "languages": sorted(per_lang),
        "domains": sorted(set(table.column("domain").to_pylist())),
        "per_language": {k: dict(v) for k, v in sorted(per_lang.items())},
    }


def write_parallel_corpus(corpus: ParallelCorpus, out_dir: str | Path) -> dict[str, Path]:
    """``parallel_corpus.parquet`` and ``manifest.parquet`` under ``out_dir`` (atomic writes)."""
    out = Path(out_dir)
    return {
        "parallel_corpus": write_parquet_atomic(corpus.table, out / "parallel_corpus.parquet"),
        "manifest": write_parquet_atomic(corpus.manifest, out / "manifest.parquet"),
    }
