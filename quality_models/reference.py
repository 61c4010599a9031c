"""Reference text that the per-language KenLM models are trained on.

By default: the held-out part of the ``dataset_build`` running text (never part of the demo
corpus, so the filter is not trained on what it scores) plus the reference part of the rendered
Debian man pages (``manpages-<lang>``: real translated running text in 25 languages, 100k+
tokens in the 11 with large packages; rendered once by ``scripts/install_reference_text.sh``,
see ``render_reference_text``). A language with too little of both falls back to the translations
in the system's gettext catalogues, and any text files a user gives (a Wikipedia dump, one
paragraph per line) are added. A language that still has fewer than ``min_lines`` lines gets
``[]``: callers then train no model and let its documents pass.

The man pages' held-out part (``heldout_lines``) is never in the reference and never in the
demo corpus: real text for measuring a model on what it has not seen.
"""

from __future__ import annotations

import argparse
import bz2
import gettext
import gzip
import hashlib
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from .shipped_text import DATASET_BUILD_CODES, running_text
from .sources import locale_to_lang

DEFAULT_LOCALE_DIR = Path("/usr/share/locale")
CATALOGUE_MODES = ("fallback", "always", "never")

# printf/format placeholders, keyboard accelerators and markup in UI strings: not language
_PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlLqjzt]*[a-zA-Z%]|\{[^{}]*\}"
)
_MARKUP = re.compile(r"<[^<>]{1,40}>|&[a-z]+;")
_ACCEL = re.compile(r"(?<!\w)[_&](?=\w)")
_SPACES = re.compile(r"\s+")
_MIN_CATALOGUE_CHARS = 8
# what "enough reference text" means for reference_languages: tokens as the model counts them
ENOUGH_REFERENCE_TOKENS = 100_000


def reference_lines(
    lang: str,
    min_lines: int = 20,
    files: Sequence[str | Path] = (),
    *,
    min_tokens: int = 2_000,
    shipped: bool = True,
    manpages: bool = True,
    catalogues: str = "fallback",
    locale_dir: str | Path = DEFAULT_LOCALE_DIR,
    reference_dir: str | Path | None = None,
) -> list[str]:
    """Distinct reference lines for ``lang``, or ``[]`` when fewer than ``min_lines`` exist.

    ``shipped``: the held-out ``dataset_build`` paragraphs; ``manpages``: the reference part of
    the rendered man pages (``[]`` for a language without them or before they are rendered).
    ``catalogues``: ``"fallback"`` adds gettext translations only when those and ``files`` give
    fewer than ``min_lines`` lines or ``min_tokens`` tokens (what ``KenLMConfig`` needs to train
    a model; UI strings are a different register, so they are a last resort); ``"always"`` adds
    them; ``"never"`` does not.
    """
    if catalogues not in CATALOGUE_MODES:
        raise ValueError(f"catalogues must be one of {CATALOGUE_MODES}, not {catalogues!r}")
    if min_lines < 1:
        raise ValueError(f"min_lines must be at least 1, not {min_lines}")
    lines: list[str] = []
    if shipped:
        lines.extend(running_text(lang, "reference"))
    if manpages:
        lines.extend(manpage_text(lang, "reference", reference_dir))
    for path in files:
        lines.extend(read_text_file(path))
    if catalogues == "always" or (
        catalogues == "fallback" and _too_little(lines, lang, min_lines, min_tokens)
    ):
        lines.extend(catalogue_lines(lang, locale_dir))
    out = _distinct(lines)
    return out if len(out) >= min_lines else []


def _too_little(lines: list[str], lang: str, min_lines: int, min_tokens: int) -> bool:
    distinct = _distinct(lines)
    if len(distinct) < min_lines:
        return True
    unit, count = _unit(lang), 0
    for line in distinct:  # stops as soon as there are enough
        count += len(_lm_tokens(line, unit))
        if count >= min_tokens:
            return False
    return True


def heldout_lines(lang: str, reference_dir: str | Path | None = None) -> list[str]:
    """Real running text of ``lang`` that is in no reference and not in the demo corpus: the
    held-out man-page paragraphs (``[]`` when the language has no rendered man pages)."""
    return manpage_text(lang, "heldout", reference_dir)


def reference_tokens(lang: str, reference_dir: str | Path | None = None, **options: Any) -> int:
    """Tokens of ``lang``'s default reference as its KenLM model counts them (words and
    punctuation, or characters for zh/ja/th); 0 when it has none."""
    unit = _unit(lang)
    lines = reference_lines(lang, 1, reference_dir=reference_dir, **options)
    return sum(len(_lm_tokens(line, unit)) for line in lines)


def reference_languages(
    languages: Iterable[str] | None = None,
    min_tokens: int = ENOUGH_REFERENCE_TOKENS,
    reference_dir: str | Path | None = None,
) -> list[str]:
    """The languages (of ``languages``, default: every language with shipped running text or a
    man-page package) with at least ``min_tokens`` tokens of running text in their reference
    (``dataset_build`` prose and rendered man pages; catalogue strings do not count), sorted.

    What the ``kenlm_models`` asset can tell apart: a model of one of these languages was
    trained on real running text, the others on a few thousand tokens or UI strings.
    """
    candidates = sorted(set(languages) if languages is not None else _reference_candidates())
    return [
        lang
        for lang in candidates
        if reference_tokens(lang, reference_dir, catalogues="never") >= min_tokens
    ]


def _reference_candidates() -> set[str]:
    return set(DATASET_BUILD_CODES) | set(MANPAGE_PACKAGES)


def _distinct(lines: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        line = line.strip()
        if line:
            seen.setdefault(line, None)
    return list(seen)


def _open_text(path: Path) -> IO[bytes]:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rb")


def read_text_file(path: str | Path) -> Iterator[str]:
    """Non-empty lines of a UTF-8 text file (``.gz``/``.bz2``/``.xz`` too).

    Lines that are not valid UTF-8 are skipped with one warning per file: a large dump with a
    few broken lines should still train a model, and the warning says how many were lost.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference text file not found: {path}")
    bad = 0
    first_bad = 0
    with _open_text(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                bad += 1
                first_bad = first_bad or number
                continue
            if line:
                yield line
    if bad:
        warnings.warn(
            f"{path}: skipped {bad} line(s) that are not valid UTF-8 (first at line {first_bad})",
            stacklevel=2,
        )


def catalogue_locales(lang: str, locale_dir: str | Path = DEFAULT_LOCALE_DIR) -> list[Path]:
    """Locale folders whose language is ``lang`` (``zh_CN`` and ``zh_TW`` for ``zh``).

    Folders with an ``@`` modifier (``sr@latin``, ``en@quot``) are skipped: another script or
    a typographic variant, not plain text of the language.
    """
    root = Path(locale_dir)
    if not root.is_dir():
        return []
    return [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and "@" not in p.name and locale_to_lang(p.name) == lang
    ]


def clean_catalogue_string(text: str) -> str:
    """A UI translation without placeholders, accelerators and markup; ``""`` if too short."""
    text = _PLACEHOLDER.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    text = _ACCEL.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    letters = sum(ch.isalpha() for ch in text)
    return text if len(text) >= _MIN_CATALOGUE_CHARS and letters >= len(text) / 2 else ""


def catalogue_lines(lang: str, locale_dir: str | Path = DEFAULT_LOCALE_DIR) -> list[str]:
    """Translated messages of every gettext catalogue installed for ``lang``, cleaned."""
    out: list[str] = []
    for locale in catalogue_locales(lang, locale_dir):
        for mo in sorted((locale / "LC_MESSAGES").glob("*.mo")):
            try:
                with mo.open("rb") as fh:
                    catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001
            except (OSError, UnicodeDecodeError, ValueError, IndexError):
                continue  # an unreadable catalogue contributes nothing
            for key in sorted(catalog, key=str):
                msgid = key[0] if isinstance(key, tuple) else key
                if not msgid:  # the header entry
                    continue
                for part in str(catalog[key]).split("\n"):
                    cleaned = clean_catalogue_string(part)
                    if cleaned:
                        out.append(cleaned)
    return out


# --------------------------------------------------------------------------- man pages
#
# Debian's manpages-<lang> packages hold real translated running text (command and system
# documentation) in about 25 languages. scripts/install_reference_text.sh installs them and
# runs ``python -m quality_models.reference render`` once, which renders a bounded number of
# pages per language into ``reference_text_dir()``: ``<lang>.reference.txt.gz`` (added to the KenLM
# reference by ``reference_lines``) and ``<lang>.heldout.txt.gz`` (never in the reference, never
# in the demo corpus: for measuring a model on real text it has not seen), one paragraph a line.

REFERENCE_DIR_ENV = "GOVTUNE_REFERENCE_DIR"
REPO_REFERENCE_DIR = Path(__file__).resolve().parents[1] / ".tools" / "reference"
RENDER_VERSION = 3  # bump when rendering or paragraph selection changes: the cache is redone
MANIFEST = "manifest.json"
# per language: the Debian package and the man folders under /usr/share/man it fills ("" = the
# English man1..man8). zh: only zh_CN (zh_TW holds the same pages in traditional characters)
MANPAGE_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": ("manpages", ("",)), "cs": ("manpages-cs", ("cs",)), "da": ("manpages-da", ("da",)),
    "de": ("manpages-de", ("de",)), "el": ("manpages-el", ("el",)),
    "es": ("manpages-es", ("es",)), "fi": ("manpages-fi", ("fi",)),
    "fr": ("manpages-fr", ("fr",)), "hu": ("manpages-hu", ("hu",)),
    "id": ("manpages-id", ("id",)), "it": ("manpages-it", ("it",)),
    "ja": ("manpages-ja", ("ja",)), "mk": ("manpages-mk", ("mk",)),
    "no": ("manpages-nb", ("nb",)), "nl": ("manpages-nl", ("nl",)),
    "pl": ("manpages-pl", ("pl",)), "pt": ("manpages-pt-br", ("pt_BR",)),
    "ro": ("manpages-ro", ("ro",)), "ru": ("manpages-ru", ("ru",)),
    "sr": ("manpages-sr", ("sr",)), "sv": ("manpages-sv", ("sv",)),
    "tr": ("manpages-tr", ("tr",)), "uk": ("manpages-uk", ("uk",)),
    "vi": ("manpages-vi", ("vi",)), "zh": ("manpages-zh", ("zh_CN",)),
}  # fmt: skip


@dataclass(frozen=True)
class RenderBudget:
    """How much man-page text to render per language, in tokens as the KenLM model counts them
    (words and punctuation, or characters for zh/ja/th); ``render_language`` says how pages
    are chosen and held out."""

    reference_tokens: int = 150_000
    heldout_tokens: int = 15_000
    heldout_every: int = 5
    chunk: int = 16  # pages rendered between two budget checks
    batch: int = 8  # pages per groff run (both fixed: the text does not depend on the cores)
    boilerplate_pages: int = 3  # a paragraph opening seen on this many pages is boilerplate


_PAGE_NAME = re.compile(r"^/usr/share/man/(?:(?P<loc>[^/]+)/)?man[0-9][^/]*/(?P<name>[^/]+)$")
_TAG_GAP = re.compile(r"\s{3,}")  # a .TP/.IP tag and its text on one line: "-a, --all   text"
_OVERSTRIKE = re.compile(r".\x08")
_SGR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_END_PUNCT = tuple(".!?;:…。！？：；")
_CLOSERS = ")]\"'»”’」』）"
_CODE_CHARS = frozenset("/\\_=<>{}[]|$@#*~^`")
# characters of scripts written without spaces (as perplexity._NO_SPACE_CLASS)
_NO_SPACE = re.compile(
    r"[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
    r"\u4e00-\u9fff\uf900-\ufaff]"
)


def reference_text_dir(directory: str | Path | None = None) -> Path:
    """Where rendered reference text lives: the argument, else ``$GOVTUNE_REFERENCE_DIR``, else
    ``<repo>/.tools/reference``."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get(REFERENCE_DIR_ENV)
    return Path(env) if env else REPO_REFERENCE_DIR


def _unit(lang: str) -> str:
    from .perplexity import KenLMConfig

    return KenLMConfig().unit(lang)


def _lm_tokens(text: str, unit: str) -> list[str]:
    from .perplexity import normalize_for_lm, tokenize_for_lm

    return tokenize_for_lm(_SPACES.sub(" ", normalize_for_lm(text)).strip(), unit)


GROFF = ("groff", "-man", "-t", "-Tutf8", "-Kutf-8", "-P-cbou", "-rLL=4000n", "-rIN=7n")
_PAGE_MARK = "@@govtune-page-end@@"
# after each page of a batch: a break, then the mark alone at column 0 (pages are split there)
_PAGE_END = f"\n.nf\n.in 0\n.ti 0\n{_PAGE_MARK}\n.fi\n"
_PAGE_MARK_LINE = re.compile(rf"^\s*{re.escape(_PAGE_MARK)}\s*$", re.M)


def _groff(source: str, timeout: float) -> str:
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    try:
        proc = subprocess.run(
            GROFF, input=source.encode("utf-8"), capture_output=True, env=env, timeout=timeout
        )
    except FileNotFoundError:
        raise RuntimeError(
            "groff not found: scripts/install_reference_text.sh installs groff-base"
        ) from None
    text = proc.stdout.decode("utf-8", errors="replace")
    return _SGR.sub("", _OVERSTRIKE.sub("", text))


def render_manpage(source: str, timeout: float = 60.0) -> str:
    """troff source of a man page -> plain UTF-8 text (groff, one paragraph per line).

    ``-Kutf-8`` under ``LC_ALL=C.UTF-8`` (else umlauts turn into mojibake), ``-t`` for tables,
    a line length so wide that a paragraph is one line (so nothing is hyphenated or
    justified), and grotty without overstrikes, bold or underline (``-P-cbou``: what
    ``col -bx`` would strip); overstrikes and SGR escapes that slip through are removed too.
    Body text starts in column 7, section headings in column 0, subsection headings in 3.
    """
    return _groff(source, timeout)


def render_manpages(sources: Sequence[str], timeout: float = 120.0) -> list[str]:
    """``render_manpage`` of several pages in one groff run (groff's start-up is most of the
    cost of a small page): a mark after each page splits the output again. A batch whose
    marks do not all come back (a page that swallows what follows it) is rendered page by
    page instead."""
    if len(sources) <= 1:
        return [render_manpage(s, timeout) for s in sources]
    text = _groff("".join(s.rstrip("\n") + _PAGE_END for s in sources), timeout)
    parts = _PAGE_MARK_LINE.split(text)
    if len(parts) != len(sources) + 1:
        return [render_manpage(s, timeout) for s in sources]
    return parts[:-1]


def _is_prose(text: str, unit: str) -> bool:
    """Running text, not a synopsis, option tag, code line, path list or cross-reference."""
    if not text.rstrip(_CLOSERS).endswith(_END_PUNCT):
        return False
    chars = text.replace(" ", "")
    if unit == "char":
        if len(chars) < 12:
            return False
        script = sum(1 for ch in chars if _NO_SPACE.match(ch))
        return script >= 0.4 * len(chars)
    words = text.split()
    if len(words) < 6:
        return False
    if sum(ch.isalpha() for ch in chars) < 0.75 * len(chars):
        return False
    code = sum(1 for w in words if w[0] == "-" or not _CODE_CHARS.isdisjoint(w))
    return code <= 0.15 * len(words)


def manpage_paragraphs(rendered: str, unit: str = "word") -> list[str]:
    """The prose paragraphs of a rendered page (body lines, tags cut off, prose only)."""
    out = []
    for line in rendered.split("\n"):
        if not line.startswith("       "):  # title, footer, headings: columns 0-6
            continue
        text = _TAG_GAP.split(line.strip())[-1]
        text = _SPACES.sub(" ", text).strip()
        if text and _is_prose(text, unit):
            out.append(text)
    return out


def _dpkg(*args: str) -> str | None:
    try:
        proc = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def package_version(package: str, root: str | Path | None = None) -> str | None:
    """The installed version of a Debian package, or the one extracted under ``root``."""
    version = _dpkg("-W", "-f=${Version}", package)
    if version:
        return version.strip()
    if root is not None:
        stamp = Path(root) / package / "VERSION"
        if stamp.is_file():
            return stamp.read_text(encoding="utf-8").strip() or None
    return None


def manpage_files(lang: str, directory: str | Path | None = None) -> dict[str, Path]:
    """``page name -> file`` of the language's manpages package (``man1/ls.1.gz`` style names).

    Files come from ``dpkg-query -L`` (what the package installed); where an image excludes
    ``/usr/share/man`` (Debian slim), from the package that install_reference_text.sh unpacked
    under ``<reference dir>/debs/<package>/``. Symbolic links (aliases of another page) and
    ``.so`` stubs are not pages of their own and are left out.
    """
    if lang not in MANPAGE_PACKAGES:
        return {}
    package, locales = MANPAGE_PACKAGES[lang]
    listed = [(Path("/"), item) for item in (_dpkg("-L", package) or "").splitlines()]
    unpacked = reference_text_dir(directory) / "debs" / package
    listed += [(unpacked, f"/{p.relative_to(unpacked)}") for p in _walk(unpacked / "usr")]
    found: dict[str, Path] = {}
    for base, item in listed:
        m = _PAGE_NAME.match(item)
        if not m or (m.group("loc") or "") not in locales:
            continue
        name = f"{item.split('/')[-2]}/{m.group('name')}"
        path = base / item.lstrip("/")
        if name not in found and path.is_file() and not path.is_symlink():
            found[name] = path
    return dict(sorted(found.items()))


def _walk(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.is_dir() else []


def _page_source(path: Path) -> str | None:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix == ".xz":
        raw = lzma.decompress(raw)
    elif path.suffix == ".bz2":
        raw = bz2.decompress(raw)
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None  # every page of these packages is UTF-8; anything else is not rendered
    return None if source.lstrip().startswith(".so ") else source


def _page_rank(name: str) -> int:
    """A fixed pseudo-random order of pages (the same on every machine)."""
    return int(hashlib.sha1(f"govtune-manpage:{name}".encode()).hexdigest()[:12], 16)


def _key(text: str) -> str:
    """What two paragraphs share when they are the same text (case, digits, spacing aside)."""
    from .perplexity import normalize_for_lm

    return _SPACES.sub(" ", normalize_for_lm(text)).strip().rstrip(".:;!?。：；！？ ")


def _catalogue_keys(lang: str, locale_dir: str | Path = DEFAULT_LOCALE_DIR) -> set[str]:
    """Keys of every translated gettext line for ``lang``: the demo corpus draws catalogue
    messages, and help2man pages repeat ``--help`` texts, so such paragraphs are left out."""
    keys: set[str] = set()
    for locale in catalogue_locales(lang, locale_dir):
        for mo in sorted((locale / "LC_MESSAGES").glob("*.mo")):
            try:
                with mo.open("rb") as fh:
                    catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001
            except (OSError, UnicodeDecodeError, ValueError, IndexError, struct.error):
                continue
            for value in catalog.values():
                for part in str(value).split("\n"):
                    part = _TAG_GAP.split(part.strip())[-1]
                    if len(part) >= 12:
                        keys.add(_key(part))
    return keys


@dataclass
class _Page:
    """A rendered page: its prose paragraphs with their keys, openings and token counts."""

    name: str
    paragraphs: list[str]
    keys: list[str]
    openings: list[str]
    tokens: list[int]
    heldout: bool = False


def _rendered_pages(
    names: Sequence[str], files: Mapping[str, Path], unit: str
) -> list[_Page | None]:
    """Render a batch of pages in one groff run; ``None`` for a page that is not rendered."""
    sources = {name: _page_source(files[name]) for name in names}
    todo = [name for name in names if sources[name] is not None]
    texts = dict(zip(todo, render_manpages([sources[n] for n in todo]), strict=True))
    out: list[_Page | None] = []
    for name in names:
        if name not in texts:
            out.append(None)
            continue
        paras = manpage_paragraphs(texts[name], unit)
        keys = [_key(p) for p in paras]
        openings = [k[:12] if unit == "char" else " ".join(k.split()[:5]) for k in keys]
        out.append(_Page(name, paras, keys, openings, [len(_lm_tokens(p, unit)) for p in paras]))
    return out


def _select(
    pages: Sequence[_Page], boilerplate_pages: int, excluded: set[str]
) -> tuple[dict[bool, list[tuple[str, int]]], dict[str, int]]:
    """``{held out?: [(paragraph, tokens)]}`` of the rendered pages, after the filters.

    Dropped: boilerplate (a paragraph opening found on ``boilerplate_pages`` pages or more:
    licences, translator credits, bug-report addresses), gettext messages (``excluded``) and
    repeats; a held-out paragraph that also occurs on a reference page, or opens like a
    reference paragraph (a near copy: the same sentence for another command), is dropped too.
    """
    pages_with: Counter[str] = Counter()
    for page in pages:
        pages_with.update(set(page.openings))
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    reference_openings: set[str] = set()
    out: dict[bool, list[tuple[str, int]]] = {False: [], True: []}
    for heldout in (False, True):  # reference first: held-out text must not be in it
        for page in pages:
            if page.heldout != heldout:
                continue
            for text, key, opening, n in zip(
                page.paragraphs, page.keys, page.openings, page.tokens, strict=True
            ):
                if pages_with[opening] >= boilerplate_pages:
                    dropped["boilerplate"] += 1
                elif key in excluded:
                    dropped["gettext_message"] += 1
                elif key in seen:
                    dropped["repeated"] += 1
                elif heldout and opening in reference_openings:
                    dropped["heldout_near_reference"] += 1
                else:
                    seen.add(key)
                    out[heldout].append((text, n))
                    if not heldout:
                        reference_openings.add(opening)
    return out, dict(dropped)


def render_language(
    lang: str,
    directory: str | Path | None = None,
    budget: RenderBudget | None = None,
    jobs: int | None = None,
    locale_dir: str | Path = DEFAULT_LOCALE_DIR,
) -> dict[str, Any] | None:
    """Render ``lang``'s man pages into ``<lang>.reference.txt.gz`` and ``<lang>.heldout.txt.gz``
    under the reference folder until both budgets are met (or the pages run out); returns the
    manifest entry, ``None`` when the package is not installed.

    Pages go in a fixed pseudo-random order; every ``heldout_every``-th one (by a hash of its
    name) is held out while the held-out part is below its budget and below a quarter of the
    reference (so a language with few pages keeps most of its text for the model), the others
    go to the reference. Between two budget checks ``chunk`` pages are rendered in parallel.
    """
    budget = budget or RenderBudget()
    out_dir = reference_text_dir(directory)
    files = manpage_files(lang, out_dir)
    package = MANPAGE_PACKAGES[lang][0]
    if not files:
        return None
    start = time.perf_counter()
    unit = _unit(lang)
    excluded = _catalogue_keys(lang, locale_dir)
    order = sorted(files, key=_page_rank)
    pages: list[_Page] = []
    kept: dict[bool, list[tuple[str, int]]] = {False: [], True: []}
    dropped: dict[str, int] = {}
    have = {False: 0, True: 0}
    need = {False: budget.reference_tokens, True: budget.heldout_tokens}
    skipped = 0
    position = 0
    workers = max(1, jobs or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while position < len(order) and (have[False] < need[False] or have[True] < need[True]):
            chunk: list[tuple[str, bool]] = []
            while position < len(order) and len(chunk) < budget.chunk:
                name = order[position]
                position += 1
                held = (
                    _page_rank(name) % budget.heldout_every == 0
                    and have[True] < need[True]
                    and have[True] * 4 <= have[False]
                )
                if have[held] < need[held]:
                    chunk.append((name, held))
            names = [name for name, _ in chunk]
            batches = [names[i : i + budget.batch] for i in range(0, len(names), budget.batch)]
            results = [
                page
                for batch in pool.map(lambda b: _rendered_pages(b, files, unit), batches)
                for page in batch
            ]
            for (_, held), page in zip(chunk, results, strict=True):
                if page is None:
                    skipped += 1
                    continue
                page.heldout = held
                pages.append(page)
            kept, dropped = _select(pages, budget.boilerplate_pages, excluded)
            have = {side: sum(n for _, n in kept[side]) for side in (False, True)}
    for side, name in ((False, "reference"), (True, "heldout")):
        _write_lines_atomic(out_dir / f"{lang}.{name}.txt.gz", [t for t, _ in kept[side]])
    return {
        "package": package,
        "version": package_version(package, out_dir / "debs"),
        "unit": unit,
        "pages_available": len(files),
        "pages_rendered": len(pages),
        "pages_heldout": sum(p.heldout for p in pages),
        "pages_skipped": skipped,
        "reference_paragraphs": len(kept[False]),
        "reference_tokens": have[False],
        "heldout_paragraphs": len(kept[True]),
        "heldout_tokens": have[True],
        "dropped": dropped,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _write_lines_atomic(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mtime=0: the same text gives the same bytes on every machine
    with gzip.GzipFile(tmp, "wb", mtime=0) as fh:
        fh.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
    os.replace(tmp, path)


def read_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The render manifest (``{}`` when nothing was rendered or it is unreadable)."""
    try:
        data = json.loads((reference_text_dir(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render_reference_text(
    languages: Iterable[str] | None = None,
    directory: str | Path | None = None,
    budget: RenderBudget | None = None,
    jobs: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render every language whose package is installed, skipping those already rendered with
    the same package version, render version and budget; writes and returns the manifest."""
    budget = budget or RenderBudget()
    out_dir = reference_text_dir(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"render_version": RENDER_VERSION, "budget": asdict(budget)}
    old = read_manifest(out_dir)
    entries = (
        dict(old.get("languages", {})) if not force and old.get("settings") == settings else {}
    )
    start = time.perf_counter()
    rendered: list[str] = []
    for lang in sorted(languages or MANPAGE_PACKAGES):
        if lang not in MANPAGE_PACKAGES:
            raise ValueError(
                f"no man-page package known for {lang!r}; known: {sorted(MANPAGE_PACKAGES)}"
            )
        package = MANPAGE_PACKAGES[lang][0]
        current = entries.get(lang)
        version = package_version(package, out_dir / "debs")
        cached = all((out_dir / f"{lang}.{s}.txt.gz").is_file() for s in ("reference", "heldout"))
        if current and cached and current.get("version") == version:
            continue
        entry = render_language(lang, out_dir, budget, jobs)
        if entry is None:
            entries.pop(lang, None)
            for split in ("reference", "heldout"):  # text of a package no longer installed
                (out_dir / f"{lang}.{split}.txt.gz").unlink(missing_ok=True)
            if progress:
                print(f"[reference] {lang}: {package} not installed, skipped", flush=True)
            continue
        entries[lang] = entry
        rendered.append(lang)
        if progress:
            print(
                f"[reference] {lang}: {entry['pages_rendered']}/{entry['pages_available']} pages,"
                f" {entry['reference_tokens']} reference + {entry['heldout_tokens']} held-out"
                f" tokens in {entry['seconds']} s",
                flush=True,
            )
    manifest = {
        "settings": settings,
        "languages": dict(sorted(entries.items())),
        "last_run": {"rendered": rendered, "seconds": round(time.perf_counter() - start, 2)},
    }
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{MANIFEST}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def manpage_text(
    lang: str, split: str = "reference", directory: str | Path | None = None
) -> list[str]:
    """Rendered man-page paragraphs of ``lang``: ``split='reference'`` (goes into the KenLM
    reference) or ``'heldout'`` (never in it); ``[]`` when nothing was rendered for ``lang``."""
    if split not in ("reference", "heldout"):
        raise ValueError(f"split must be 'reference' or 'heldout', not {split!r}")
    path = reference_text_dir(directory) / f"{lang}.{split}.txt.gz"
    return list(read_text_file(path)) if path.is_file() else []


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quality_models.reference packages|render|sizes`` (install_reference_text.sh
    runs the first two)."""
    parser = argparse.ArgumentParser(prog="python -m quality_models.reference")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render the installed man pages (cached)")
    render.add_argument("--languages", help="comma-separated (default: every known package)")
    render.add_argument("--dir", help=f"output folder (default ${REFERENCE_DIR_ENV} or .tools)")
    render.add_argument("--jobs", type=int, help="groff processes at a time (default: cores)")
    render.add_argument("--force", action="store_true", help="render again even if cached")
    sub.add_parser("packages", help="the Debian man-page packages, one a line")
    sizes = sub.add_parser("sizes", help="reference and held-out tokens per language")
    sizes.add_argument("--dir")
    sizes.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "packages":
        print("\n".join(sorted(package for package, _ in MANPAGE_PACKAGES.values())))
        return 0
    if args.command == "render":
        langs = args.languages.split(",") if args.languages else None
        manifest = render_reference_text(langs, args.dir, jobs=args.jobs, force=args.force)
        done, run = manifest["languages"], manifest["last_run"]
        print(
            f"[reference] {len(done)} languages in {reference_text_dir(args.dir)}:"
            f" {len(run['rendered'])} rendered now, {len(done) - len(run['rendered'])} cached"
            f" ({run['seconds']} s)"
        )
        return 0 if done else 1
    rows = {}
    for lang in sorted(_reference_candidates()):
        rows[lang] = {
            "reference_tokens": reference_tokens(lang, args.dir),
            "manpage_reference_tokens": reference_tokens(
                lang, args.dir, shipped=False, catalogues="never"
            ),
            "heldout_tokens": sum(
                len(_lm_tokens(t, _unit(lang))) for t in heldout_lines(lang, args.dir)
            ),
        }
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("lang  reference  (man pages)  held-out")
        for lang, r in rows.items():
            print(
                f"{lang:<5} {r['reference_tokens']:>9}  {r['manpage_reference_tokens']:>11}"
                f"  {r['heldout_tokens']:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
