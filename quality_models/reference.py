"""Reference text that the per-language KenLM models are trained on.

By default: the held-out part of the ``dataset_build`` running text (never part of the demo
corpus, so the filter is not trained on what it scores). A language with too little of it falls
back to the translations in the system's gettext catalogues, and any text files a user gives
(a Wikipedia dump, one paragraph per line) are added. A language that still has fewer than
``min_lines`` lines gets ``[]``: callers then train no model and let its documents pass.
"""

from __future__ import annotations

import bz2
import gettext
import gzip
import lzma
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from .shipped_text import running_text
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


def reference_lines(
    lang: str,
    min_lines: int = 20,
    files: Sequence[str | Path] = (),
    *,
    shipped: bool = True,
    catalogues: str = "fallback",
    locale_dir: str | Path = DEFAULT_LOCALE_DIR,
) -> list[str]:
    """Distinct reference lines for ``lang``, or ``[]`` when fewer than ``min_lines`` exist.

    ``catalogues``: ``"fallback"`` adds gettext translations only when the running text and
    ``files`` give fewer than ``min_lines`` lines (UI strings are a different register, so they
    are a last resort); ``"always"`` adds them; ``"never"`` does not.
    """
    if catalogues not in CATALOGUE_MODES:
        raise ValueError(f"catalogues must be one of {CATALOGUE_MODES}, not {catalogues!r}")
    if min_lines < 1:
        raise ValueError(f"min_lines must be at least 1, not {min_lines}")
    lines: list[str] = []
    if shipped:
        lines.extend(running_text(lang, "reference"))
    for path in files:
        lines.extend(read_text_file(path))
    if catalogues == "always" or (catalogues == "fallback" and len(_distinct(lines)) < min_lines):
        lines.extend(catalogue_lines(lang, locale_dir))
    out = _distinct(lines)
    return out if len(out) >= min_lines else []


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
