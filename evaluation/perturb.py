"""Orthographic perturbations for the robustness suite, each seeded and graded by severity.

Every perturbation has the signature ``(text, severity, rng) -> text`` and lives in
:data:`PERTURBATIONS`. ``severity`` in ``[0, 1]`` is the probability that each eligible unit
(a word, a letter with marks, a punctuation mark...) is changed; 0 returns the text unchanged.

Two properties make the severity curves comparable and smooth:

* **Deterministic**: the same text, severity and seed give the same output, in any process
  (``random.Random`` seeded with an int or str does not depend on ``PYTHONHASHSEED``).
* **Nested**: every unit draws the same two random numbers whatever the severity, so with one
  seed the units changed at severity 0.25 are a subset of those changed at 0.5, and they are
  changed the same way. A curve then measures more of the same noise, not new noise.

Script safety: no perturbation folds text to ASCII. Diacritic removal drops combining marks
only where they are optional diacritics (Latin, Greek, Cyrillic, and Arabic/Hebrew vowel
points); the vowel signs, viramas and nuktas of abugidas (Devanagari, Bengali, Thai...) are
spelling, not decoration, and are left alone. Only ``transliterate`` changes script, on purpose.
"""

from __future__ import annotations

import numbers
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence

import regex
from anyascii import anyascii

__all__ = [
    "PERTURBATIONS",
    "SEVERITIES",
    "Perturbation",
    "change_case",
    "flip_normalization",
    "homoglyphs",
    "keyboard_typos",
    "perturb",
    "perturb_batch",
    "punctuation_noise",
    "remove_diacritics",
    "transliterate",
]

Perturbation = Callable[[str, float, random.Random], str]

#: Default severity grid of the robustness table (0 is the clean input).
SEVERITIES: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)


def _draw(rng: random.Random) -> tuple[float, random.Random]:
    """One unit's coin and its private generator, drawn whatever the severity (nesting)."""
    return rng.random(), random.Random(rng.getrandbits(64))


_GRAPHEME = regex.compile(r"\X")
# A word: letters, digits and the combining marks inside them (Devanagari vowel signs, Arabic
# harakat), which the standard library's ``re`` would split words at.
_WORD = regex.compile(r"[\w\p{M}]+")
_NON_LATIN_LETTER = regex.compile(r"(?!\p{Latin})\p{L}")


def _clusters(text: str) -> Iterator[str]:
    """Extended grapheme clusters (a base with its marks; a Hangul syllable's jamo)."""
    return iter(_GRAPHEME.findall(text))


# --------------------------------------------------------------------------- diacritics

#: Scripts whose combining marks are optional diacritics (dropping them is a real spelling
#: variant: "resume" for "résumé", "е" for "ё", Greek without tonos, unvocalised Arabic).
DIACRITIC_SCRIPTS = ("Latin", "Greek", "Cyrillic", "Arabic", "Hebrew")
_DIACRITIC_BASE = regex.compile("[" + "".join(rf"\p{{{s}}}" for s in DIACRITIC_SCRIPTS) + "]")


def remove_diacritics(text: str, severity: float, rng: random.Random) -> str:
    """Drop the nonspacing marks (NFD, category Mn) of letters in :data:`DIACRITIC_SCRIPTS`,
    then recompose (NFC). A letter is never dropped: "й" becomes "и", not "i".

    Arabic hamza above/below is a combining mark after NFD, so "أ" becomes "ا", as in
    everyday informal writing. Abugidas keep every mark.
    """
    out: list[str] = []
    for cluster in _clusters(text):
        nfd = unicodedata.normalize("NFD", cluster)
        has_mark = any(unicodedata.category(c) == "Mn" for c in nfd[1:])
        if not (has_mark and _DIACRITIC_BASE.match(nfd[0])):
            out.append(cluster)
            continue
        u, _ = _draw(rng)
        if u < severity:
            bare = nfd[0] + "".join(c for c in nfd[1:] if unicodedata.category(c) != "Mn")
            out.append(unicodedata.normalize("NFC", bare))
        else:
            out.append(cluster)
    return "".join(out)


# --------------------------------------------------------------------------- case

_CASE_OPS: tuple[Callable[[str], str], ...] = (str.upper, str.lower, str.capitalize, str.swapcase)


def change_case(text: str, severity: float, rng: random.Random) -> str:
    """Recase words: upper, lower, capitalised or swapped, picking one that changes the word.
    Words of uncased scripts (Arabic, Devanagari, CJK) cannot change and are skipped."""

    def sub(m: regex.Match[str]) -> str:
        word = m.group(0)
        options = [op(word) for op in _CASE_OPS]
        options = [w for w in dict.fromkeys(options) if w != word]
        if not options:
            return word
        u, r = _draw(rng)
        return r.choice(options) if u < severity else word

    return _WORD.sub(sub, text)


# --------------------------------------------------------------------------- transliteration

# Scripts written without spaces: each character is its own unit, so severity stays graded.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
_TRANSLIT_UNIT = regex.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[\w\p{{M}}])+")


def transliterate(text: str, severity: float, rng: random.Random) -> str:
    """Romanise words (each CJK character on its own) that contain a letter outside the Latin
    script, with ``anyascii`` ("Привет" -> "Privet", "中" -> "Zhong"). Latin-script words are
    left alone: removing their accents is :func:`remove_diacritics`' job."""

    def sub(m: regex.Match[str]) -> str:
        word = m.group(0)
        if not _NON_LATIN_LETTER.search(word):
            return word
        u, _ = _draw(rng)
        if u >= severity:
            return word
        latin = anyascii(word)
        return latin if latin.strip() else word  # a unit of bare marks has no romanisation

    return _TRANSLIT_UNIT.sub(sub, text)


# --------------------------------------------------------------------------- keyboard typos

_LAYOUTS = {
    "qwerty": ("1234567890-=", "qwertyuiop[]", "asdfghjkl;'", "zxcvbnm,./"),
    "jcuken": ("1234567890-=", "йцукенгшщзхъ", "фывапролджэ", "ячсмитьбю."),
    "greek": ("1234567890-=", ";ςερτυθιοπ[]", "ασδφγηξκλ΄'", "ζχψωβνμ,./"),
}


def _neighbours(rows: Sequence[str]) -> dict[str, str]:
    """Keys physically next to each key on a staggered keyboard: left/right on the same row,
    the two keys above (same column and one right) and below (one left and same column)."""
    out: dict[str, str] = {}
    for r, row in enumerate(rows):
        for c, key in enumerate(row):
            near = []
            for rr, cc in (
                (r, c - 1),
                (r, c + 1),
                (r - 1, c),
                (r - 1, c + 1),
                (r + 1, c - 1),
                (r + 1, c),
            ):
                if 0 <= rr < len(rows) and 0 <= cc < len(rows[rr]):
                    near.append(rows[rr][cc])
            letters = "".join(k for k in near if k.isalpha())
            if key.isalpha() and letters:
                out[key] = out.get(key, "") + letters
    return out


KEYBOARD_NEIGHBOURS: dict[str, str] = {}
for _rows in _LAYOUTS.values():
    for _k, _v in _neighbours(_rows).items():
        KEYBOARD_NEIGHBOURS[_k] = KEYBOARD_NEIGHBOURS.get(_k, "") + _v


def _match_case(src: str, ch: str) -> str:
    return ch.upper() if src.isupper() else ch


def _typo(word: str, r: random.Random) -> str:
    """One keyboard slip in ``word``: hit a neighbouring key, add a neighbour's stroke, miss a
    key, swap two keys or press one twice. The unit is a grapheme cluster, so a Devanagari
    syllable or an accented letter is dropped, doubled or swapped whole; letters without a
    known layout only get those three, so no foreign-script letter is typed into a word."""
    g = _GRAPHEME.findall(word)
    pos = [i for i, c in enumerate(g) if c[0].isalpha()]
    i = r.choice(pos)
    ch = g[i]
    near = KEYBOARD_NEIGHBOURS.get(ch.lower(), "") if len(ch) == 1 else ""
    ops = ["delete", "double"] + (["swap"] if i + 1 < len(g) and g[i + 1][0].isalpha() else [])
    if near:
        ops += ["substitute", "substitute", "insert"]
    op = r.choice(ops)
    if op == "substitute":
        g[i] = _match_case(ch, r.choice(near))
    elif op == "insert":
        g[i] = ch + _match_case(ch, r.choice(near))
    elif op == "delete":
        g[i] = ""
    elif op == "double":
        g[i] = ch + ch
    else:
        g[i], g[i + 1] = g[i + 1], g[i]
    return "".join(g)


def keyboard_typos(text: str, severity: float, rng: random.Random) -> str:
    """One typo in each chosen word of at least two letters (QWERTY for Latin, ЙЦУКЕН for
    Cyrillic, the Greek layout for Greek; other scripts get layout-free slips)."""

    def sub(m: regex.Match[str]) -> str:
        word = m.group(0)
        if sum(c[0].isalpha() for c in _GRAPHEME.findall(word)) < 2:
            return word
        u, r = _draw(rng)
        return _typo(word, r) if u < severity else word

    return _WORD.sub(sub, text)


# --------------------------------------------------------------------------- normalisation


def flip_normalization(text: str, severity: float, rng: random.Random) -> str:
    """Flip chosen characters between composed (NFC) and decomposed (NFD) form: "é" becomes
    "e" + U+0301, a Hangul syllable its jamo. ``NFC(output) == NFC(input)``: lossless, but a
    model or tokenizer that does not normalise sees different bytes."""
    out: list[str] = []
    for cluster in _clusters(text):
        nfc = unicodedata.normalize("NFC", cluster)
        nfd = unicodedata.normalize("NFD", cluster)
        if nfc == nfd:
            out.append(cluster)
            continue
        u, _ = _draw(rng)
        out.append((nfc if cluster == nfd else nfd) if u < severity else cluster)
    return "".join(out)


# --------------------------------------------------------------------------- homoglyphs

# Latin letters and their look-alikes in Cyrillic and Greek (a subset of Unicode TR39
# confusables.txt restricted to letters that render the same in common fonts).
_LATIN_LOOKALIKES = {
    "a": "а", "c": "с", "d": "ԁ", "e": "е", "h": "һ", "i": "і", "j": "ј", "o": "оο",
    "p": "рρ", "q": "ԛ", "s": "ѕ", "v": "ν", "w": "ԝ", "x": "х", "y": "у",
    "A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "J": "Ј", "K": "КΚ",
    "M": "МΜ", "N": "Ν", "O": "ОΟ", "P": "РΡ", "S": "Ѕ", "T": "ТΤ", "X": "ХΧ", "Y": "ҮΥ",
    "Z": "Ζ",
}  # fmt: skip
HOMOGLYPHS: dict[str, str] = dict(_LATIN_LOOKALIKES)
for _latin, _alikes in _LATIN_LOOKALIKES.items():
    for _a in _alikes:
        HOMOGLYPHS[_a] = _latin  # Cyrillic/Greek -> Latin


def homoglyphs(text: str, severity: float, rng: random.Random) -> str:
    """Swap letters for look-alikes of another script (Latin "a" -> Cyrillic "а", Cyrillic
    "о" -> Latin "o"): the text looks the same and keeps its length, but its code points (and
    tokens) change."""
    out: list[str] = []
    for ch in text:
        alikes = HOMOGLYPHS.get(ch)
        if alikes is None:
            out.append(ch)
            continue
        u, r = _draw(rng)
        out.append(r.choice(alikes) if u < severity else ch)
    return "".join(out)


# --------------------------------------------------------------------------- punctuation

_PUNCT_OR_SPACE = regex.compile(r"\s+|\p{P}")
_NOISE_PUNCT = ",.;:!?"
_NOISE_SPACE = ("  ", "\t", "\u00a0")


def punctuation_noise(text: str, severity: float, rng: random.Random) -> str:
    """Noise on punctuation marks and whitespace runs, the letters untouched: a gap is dropped
    (words run together), widened, made a tab or a no-break space, or gets a stray mark; a
    mark is dropped, doubled, replaced or gets a space before it."""

    def sub(m: regex.Match[str]) -> str:
        unit = m.group(0)
        u, r = _draw(rng)
        if u >= severity:
            return unit
        if unit.isspace():
            op = r.randrange(4)
            if op == 0:
                return ""
            if op == 1:
                return unit + " "
            if op == 2:
                return r.choice(_NOISE_SPACE)
            return r.choice(_NOISE_PUNCT) + unit
        op = r.randrange(4)
        if op == 0:
            return ""
        if op == 1:
            return unit + unit
        if op == 2:
            return r.choice([p for p in _NOISE_PUNCT if p != unit] or [_NOISE_PUNCT[0]])
        return " " + unit

    return _PUNCT_OR_SPACE.sub(sub, text)


# --------------------------------------------------------------------------- registry

PERTURBATIONS: dict[str, Perturbation] = {
    "diacritics": remove_diacritics,
    "case": change_case,
    "transliterate": transliterate,
    "typos": keyboard_typos,
    "nfc_nfd": flip_normalization,
    "homoglyphs": homoglyphs,
    "punctuation": punctuation_noise,
}


def _check_args(name: str, severity: float) -> Perturbation:
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {sorted(PERTURBATIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Real):
        raise TypeError(f"severity must be a number in [0, 1], got {type(severity).__name__}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return PERTURBATIONS[name]


def perturb(text: str, name: str, severity: float, seed: int | str = 0) -> str:
    """Apply perturbation ``name`` at ``severity`` with a generator seeded by ``seed``."""
    fn = _check_args(name, severity)
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if severity == 0:
        return text
    return fn(text, float(severity), random.Random(f"{seed}/{name}"))


def perturb_batch(
    texts: Sequence[str], name: str, severity: float, seed: int | str = 0
) -> list[str]:
    """Perturb every text with its own stream (seed, name, index): the output of one example
    does not depend on the others, and the same example nests across severities."""
    fn = _check_args(name, severity)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        out.append(
            text
            if severity == 0
            else fn(text, float(severity), random.Random(f"{seed}/{name}/{i}"))
        )
    return out
