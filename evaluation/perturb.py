"""Orthographic perturbations for the robustness suite: spelling changes, never word changes.

Every perturbation lists the edits it could make to a text (one per eligible unit: a letter
with marks, a word, a punctuation mark, a gap), each with the replacement it would write, and
:func:`perturb_measured` applies them in a seeded order until the measured share of characters
changed reaches the target ``severity``:

* **Severity is measured corruption.** ``severity`` in ``[0, 1]`` is the target share of
  characters (grapheme clusters) changed: the edit distance between the clean and the perturbed
  text over the longer one's length. Edits are taken in a seeded random order while they bring
  the estimated share closer to the target (at least one when there is one to make); a perturbation
  that runs out of edits stops short (French has few accents), and the corruption it actually
  reached is measured (:func:`corruption`) and recorded per item, so a table compares like with
  like. Severity 1 applies every edit.
* **Deterministic and nested**: the same text, language, severity and seed give the same output
  in any process, and a higher severity applies a superset of the edits of a lower one (the
  order and each edit's replacement depend on the seed only): a curve measures more of the same
  noise, not new noise.
* **Protected spans**: placeholders and format specifiers (``%s``, ``%1$d``, ``%(name)s``,
  ``{0}``, ``%<PRIu64>``, the task's ``<var>`` mask), URLs, e-mail addresses, option names
  (``--output=FILE``, ``-v``), identifiers (``pg_ctl``, ``GtkWindow``, ``PGDATA``, ``utf8``,
  ``apt.conf``, paths, ``$HOME``) are never changed, nor is a unit touching one
  (:func:`protected_spans`): in this task they are label cues, and a model that reads them must
  see them whole.
* **Per language** (``lang``): diacritic removal strips only the marks that language may omit and
  writes letters the way it spells without them (:data:`DIACRITIC_RULES`: German "Größe" ->
  "Groesse", Russian "ё" -> "е" but "й" kept, Ukrainian "ї", "й" kept, Spanish "ñ" kept,
  Polish "ł" -> "l"); transliteration follows the language (Russian and Ukrainian national
  tables, Japanese through kana readings with ``pykakasi``, Chinese pinyin syllables, other
  scripts ``anyascii``) and leaves Latin-script text alone. Without ``lang`` the script of each
  letter picks a conservative default.
"""

from __future__ import annotations

import functools
import numbers
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import regex
from anyascii import anyascii

__all__ = [
    "DIACRITIC_RULES",
    "PERTURBATIONS",
    "SEVERITIES",
    "Edit",
    "Perturbed",
    "change_case",
    "corruption",
    "edit_distance",
    "flip_normalization",
    "homoglyphs",
    "keyboard_typos",
    "perturb",
    "perturb_batch",
    "perturb_measured",
    "protected_spans",
    "punctuation_noise",
    "remove_diacritics",
    "transliterate",
]

#: Default severity grid of the robustness table: target shares of characters changed.
SEVERITIES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` by ``new``; ``order`` is the edit's seeded rank (smaller
    first), ``cost`` its edit distance in characters; ``pad`` puts a space on the sides where
    the new text would otherwise run into a word (romanised CJK)."""

    start: int
    end: int
    new: str
    order: float
    cost: int
    pad_left: bool = False
    pad_right: bool = False
    grow: int = 0  # characters added (negative: removed)


@dataclass(frozen=True)
class Perturbed:
    """A perturbed text and what was done to it: ``corruption`` is the measured share of
    characters changed, ``edits`` how many edits were applied, ``available`` how many the
    perturbation could have made."""

    text: str
    corruption: float
    edits: int
    available: int


def _draw(rng: random.Random) -> tuple[float, random.Random]:
    """One unit's rank and its private generator, drawn whatever the severity (nesting)."""
    return rng.random(), random.Random(rng.getrandbits(64))


_GRAPHEME = regex.compile(r"\X")
# A word: letters, digits and the combining marks inside them (Devanagari vowel signs, Arabic
# harakat), which the standard library's ``re`` would split words at.
_WORD = regex.compile(r"[\w\p{M}]+")


def _graphemes(text: str) -> list[str]:
    return _GRAPHEME.findall(text)


# --------------------------------------------------------------------------- measuring


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two sequences (unit costs), row by row in numpy: the
    insertion chain of a row is a running minimum of ``D - j`` plus ``j``."""
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    a, b = a[i:], b[i:]
    j = 0
    while j < len(a) and j < len(b) and a[-1 - j] == b[-1 - j]:
        j += 1
    if j:
        a, b = a[:-j], b[:-j]
    if not a or not b:
        return max(len(a), len(b))
    if len(a) > len(b):
        a, b = b, a
    codes: dict[str, int] = {}
    ca = np.array([codes.setdefault(x, len(codes)) for x in a])
    cb = np.array([codes.setdefault(x, len(codes)) for x in b])
    cols = np.arange(len(cb) + 1)
    prev = cols.copy()
    cur = np.empty_like(prev)
    for k, x in enumerate(ca, 1):
        cur[0] = k
        np.minimum(prev[1:] + 1, prev[:-1] + (cb != x), out=cur[1:])
        prev = np.minimum.accumulate(cur - cols) + cols
    return int(prev[-1])


def corruption(clean: str, perturbed: str) -> float:
    """The share of characters changed, in ``[0, 1]``: the edit distance between the two texts'
    grapheme clusters over the longer one's length (a romanised kanji pair "拒否" -> "kyohi" is
    5 of 5, not 5 of 2)."""
    a, b = _graphemes(clean), _graphemes(perturbed)
    if not a and not b:
        return 0.0
    return edit_distance(a, b) / max(len(a), len(b))


# --------------------------------------------------------------------------- protected spans

# printf (%s, %1$d, %-10.3f, %lu), Python (%(name)s), inttypes (%<PRIu64>), Qt (%1), brace
# formats ({0}, {name}, {}), the literal %%, and the task builder's masks (<var>, <tok>) and
# usage metavariables (<FILE>)
_FORMAT = (
    r"%%"
    r"|%\([A-Za-z0-9_]+\)[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
    r"|%<PRI[a-zA-Z0-9]+>"
    r"|%(?:\d+\$)?[-+#0']*(?:\*(?:\d+\$)?|\d+)?(?:\.(?:\*(?:\d+\$)?|\d+))?"
    r"(?:hh|h|ll|l|L|q|j|z|Z|t|I64|I32|I)?[diouxXeEfFgGaAcCsSpnm]"
    r"|%[1-9]\d*(?![\d$])"
    r"|\{[A-Za-z0-9_]*(?:![rsa])?(?::[^{}]*)?\}"
    r"|<[A-Za-z][\w.:-]*>"
)
_URL = r"(?:[A-Za-z][A-Za-z0-9+.-]*://|www\.)[^\s<>\"'«»“”‘’]+[^\s<>\"'«»“”‘’.,;:!?)\]]"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_OPTION = r"(?<![\w-])--?[A-Za-z0-9][\w-]*(?:=[^\s,;)\]]*)?"
_IDENTIFIER = (
    r"\$\{?\w+\}?"  # $HOME, ${VAR}
    r"|(?:~|\.{1,2})?/[\w.+-]+(?:/[\w.+-]*)*"  # /etc/apt, ~/.bashrc, ./configure
    r"|\w+(?:/\w+)+"  # lib/x86_64
    r"|\w*_\w*"  # snake_case, _private
    r"|\w+(?:\.\w+)+"  # apt.conf, sources.list, v1.2
    r"|(?<![\w])\p{Ll}+\p{Lu}\w*"  # camelCase
    r"|(?<![\w])\p{Lu}+\p{Ll}+\p{Lu}\w*"  # GtkWindow, PostgreSQL
    r"|(?<![\w])(?=[A-Z0-9]*[A-Z][A-Z0-9]*[A-Z])[A-Z0-9]{2,}(?![\w])"  # PGDATA, SQL, UTF8
    r"|(?<![\w])(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]+(?![\w])"  # utf8, md5sum, ipv6
)
PROTECTED = regex.compile(
    "|".join(f"(?:{p})" for p in (_URL, _EMAIL, _FORMAT, _OPTION, _IDENTIFIER)), regex.V0
)


def protected_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` code-point spans no perturbation may change or touch: format
    placeholders and masks, URLs, e-mail addresses, option names and identifiers."""
    spans: list[tuple[int, int]] = []
    for m in PROTECTED.finditer(text):
        if m.end() > m.start():
            spans.append((m.start(), m.end()))
    return spans


def _eligibility(text: str) -> Callable[[int, int], bool]:
    """Whether the unit ``[start, end)`` neither overlaps nor touches a protected span."""
    spans = protected_spans(text)
    if not spans:
        return lambda start, end: True
    blocked = np.zeros(len(text) + 2, dtype=bool)
    for a, b in spans:
        blocked[a : b + 2] = True  # the span, shifted by one: [a - 1, b] touches it
    prefix = np.concatenate([[0], np.cumsum(blocked)])

    def ok(start: int, end: int) -> bool:
        return prefix[end + 1] - prefix[start + 1] == 0  # no blocked position in the unit

    return ok


# --------------------------------------------------------------------------- the engine

Candidates = Callable[[str, str | None, random.Random], list[Edit]]


def _edit(start: int, end: int, old: str, new: str, order: float, pads=(False, False)) -> Edit:
    pad_l, pad_r = pads
    old_g, new_g = _graphemes(old), _graphemes(new) + [" "] * (pad_l + pad_r)
    cost = edit_distance(old_g, new_g)
    return Edit(start, end, new, order, cost, pad_l, pad_r, len(new_g) - len(old_g))


def _select(edits: list[Edit], severity: float, total: int) -> list[Edit]:
    """The seeded-order prefix whose estimated corruption (summed edit costs over the longer
    length) comes closest to ``severity``: an edit is taken while it brings the estimate nearer
    the target (the first one always). Severity 1 takes every edit."""
    chosen: list[Edit] = []
    cost = grow = 0
    for e in sorted(edits, key=lambda e: (e.order, e.start)):
        if chosen and severity < 1.0:
            now = cost / max(total, total + grow)
            then = (cost + e.cost) / max(total, total + grow + e.grow)
            if abs(then - severity) >= abs(now - severity):
                break
        chosen.append(e)
        cost, grow = cost + e.cost, grow + e.grow
    return chosen


def _apply(text: str, edits: list[Edit]) -> str:
    out: list[str] = []
    pos = 0
    prev_end, prev_pad = -1, False
    for e in sorted(edits, key=lambda e: e.start):
        gap = text[pos : e.start]
        out.append(gap)
        joined = e.start == prev_end and prev_pad  # the previous edit's pad is this one's
        if e.pad_left and not joined:
            out.append(" ")
        out.append(e.new)
        if e.pad_right:
            out.append(" ")
        pos, prev_end, prev_pad = e.end, e.end, e.pad_right
    out.append(text[pos:])
    return "".join(out)


def _run(fn: Candidates, text: str, severity: float, rng: random.Random, lang: str | None):
    if severity <= 0 or not text:
        return Perturbed(text, 0.0, 0, 0)
    edits = fn(text, _lang(lang), rng)
    if not edits:
        return Perturbed(text, 0.0, 0, 0)
    chosen = _select(edits, severity, len(_graphemes(text)))
    out = _apply(text, chosen)
    return Perturbed(out, corruption(text, out) if out != text else 0.0, len(chosen), len(edits))


def _lang(lang: str | None) -> str | None:
    """``"pt-BR"`` / ``"zh_Hans"`` -> ``"pt"`` / ``"zh"``."""
    if not lang:
        return None
    return regex.split(r"[-_]", str(lang).lower(), maxsplit=1)[0]


def _units(pattern: regex.Pattern[str], text: str) -> Iterator[tuple[int, int, str]]:
    for m in pattern.finditer(text):
        yield m.start(), m.end(), m.group(0)


# --------------------------------------------------------------------------- diacritics


@dataclass(frozen=True)
class DiacriticRule:
    """How a language writes without its optional diacritics: ``letters`` maps a letter to
    its spelling without marks (lower case; upper case follows), ``strip`` the combining marks
    that may go (``None``: every mark on a letter of ``script``), ``keep`` the letters that
    must stay as they are."""

    script: str
    strip: frozenset[int] | None = None
    letters: tuple[tuple[str, str], ...] = ()
    keep: frozenset[str] = frozenset()


_STRESS = frozenset({0x301, 0x300})  # acute and grave stress marks of Cyrillic dictionaries
# short vowels, tanwin, shadda, sukun, superscript alef, Quranic marks; not the hamza and
# madda (U+0653-U+0655), which are spelling on waw and yeh (the bare alef forms are mapped)
_HARAKAT = frozenset(
    c for c in (*range(0x64B, 0x660), 0x670, *range(0x6D6, 0x6EE)) if c not in (0x653, 0x654, 0x655)
)
_NIQQUD = frozenset(c for c in range(0x591, 0x5C8) if unicodedata.category(chr(c)) == "Mn")
_LATIN = DiacriticRule("Latin")

#: Per language: which diacritics may be dropped and how the letters are then spelled.
DIACRITIC_RULES: dict[str, DiacriticRule] = {
    # German without umlauts: ae, oe, ue, ss (Muenchen, Groesse); other accents (Café) go
    "de": DiacriticRule("Latin", letters=(("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss"))),
    # Spanish drops accents informally but ñ is its own letter (año is not ano)
    "es": DiacriticRule("Latin", keep=frozenset("ñÑ")),
    "pl": DiacriticRule("Latin", letters=(("ł", "l"),)),
    "da": DiacriticRule("Latin", letters=(("å", "aa"), ("æ", "ae"), ("ø", "oe"))),
    "nb": DiacriticRule("Latin", letters=(("å", "aa"), ("æ", "ae"), ("ø", "oe"))),
    "no": DiacriticRule("Latin", letters=(("å", "aa"), ("æ", "ae"), ("ø", "oe"))),
    "tr": DiacriticRule("Latin", letters=(("ı", "i"),)),
    # Russian: ё is optional (е), stress marks are; й is a letter of its own
    "ru": DiacriticRule("Cyrillic", strip=_STRESS, letters=(("ё", "е"),)),
    # Ukrainian and Belarusian: ї, й, ё, ў are letters; only dictionary stress marks go
    "uk": DiacriticRule("Cyrillic", strip=_STRESS),
    "be": DiacriticRule("Cyrillic", strip=_STRESS),
    "bg": DiacriticRule("Cyrillic", strip=_STRESS),  # ѝ -> и
    "sr": DiacriticRule("Cyrillic", strip=_STRESS),
    "mk": DiacriticRule("Cyrillic", strip=_STRESS),
    "el": DiacriticRule("Greek"),  # tonos and dialytika: monotonic text without accents
    "ar": DiacriticRule("Arabic", strip=_HARAKAT, letters=(("أ", "ا"), ("إ", "ا"), ("آ", "ا"))),
    "fa": DiacriticRule("Arabic", strip=_HARAKAT),
    "ur": DiacriticRule("Arabic", strip=_HARAKAT),
    "he": DiacriticRule("Hebrew", strip=_NIQQUD),
    "yi": DiacriticRule("Hebrew", strip=_NIQQUD),
    "hi": DiacriticRule("Devanagari", strip=frozenset({0x93C})),  # nukta: ज़ -> ज
    "mr": DiacriticRule("Devanagari", strip=frozenset({0x93C})),
    # marks that are spelling: dakuten (が is not か), Hangul, Thai and Indic vowel signs
    **{lang: DiacriticRule("") for lang in ("ja", "zh", "ko", "th", "bn", "ta", "te", "km")},
}
# without a language: each letter's script decides, conservatively (Cyrillic: stress marks)
_SCRIPT_DEFAULTS = {
    "Latin": _LATIN,
    "Greek": DIACRITIC_RULES["el"],
    "Cyrillic": DiacriticRule("Cyrillic", strip=_STRESS),
    "Arabic": DIACRITIC_RULES["ar"],
    "Hebrew": DIACRITIC_RULES["he"],
}
_SCRIPT_OF = {s: regex.compile(rf"\p{{{s}}}") for s in (*_SCRIPT_DEFAULTS, "Devanagari")}


def _rule_for(cluster: str, lang: str | None) -> DiacriticRule | None:
    if lang is not None:
        rule = DIACRITIC_RULES.get(lang, _LATIN)
        script = _SCRIPT_OF.get(rule.script)
        return rule if script is not None and script.match(cluster) else None
    for script, pattern in _SCRIPT_OF.items():
        if pattern.match(cluster):
            return _SCRIPT_DEFAULTS.get(script)  # Devanagari without a language: spelling
    return None


def _cased(src: str, repl: str, word_upper: bool) -> str:
    """``repl`` in the case of the letter it replaces (Ä -> Ae, in an all-caps word AE)."""
    if word_upper:
        return repl.upper()
    return repl[:1].upper() + repl[1:] if src[:1].isupper() else repl


def _strip_marks(chars: str, rule: DiacriticRule) -> str:
    return "".join(
        c
        for c in chars
        if unicodedata.category(c) != "Mn" or (rule.strip is not None and ord(c) not in rule.strip)
    )


def _without_marks(cluster: str, rule: DiacriticRule, word_upper: bool) -> str:
    """The cluster as the language writes it without optional marks (itself if none)."""
    nfc = unicodedata.normalize("NFC", cluster)
    if nfc in rule.keep:
        return cluster
    head, tail = nfc[0], nfc[1:]  # the (precomposed) letter and any marks left over
    letters = dict(rule.letters)
    if head.lower() in letters:
        new = _cased(head, letters[head.lower()], word_upper) + _strip_marks(tail, rule)
    else:
        nfd = unicodedata.normalize("NFD", nfc)
        new = unicodedata.normalize("NFC", nfd[0] + _strip_marks(nfd[1:], rule))
    return new if new != nfc else cluster


def _diacritic_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    ok = _eligibility(text)
    upper = np.zeros(len(text), dtype=bool)
    for start, end, word in _units(_WORD, text):
        cased = [c for c in word if c.isupper() or c.islower()]
        upper[start:end] = len(cased) > 1 and all(c.isupper() or c == "ß" for c in cased)
    edits = []
    for m in _GRAPHEME.finditer(text):
        cluster = m.group(0)
        if cluster.isascii():
            continue
        rule = _rule_for(cluster, lang)
        if rule is None:
            continue
        new = _without_marks(cluster, rule, bool(upper[m.start()]))
        if new == cluster or not ok(m.start(), m.end()):
            continue
        u, _ = _draw(rng)
        edits.append(_edit(m.start(), m.end(), cluster, new, u))
    return edits


# --------------------------------------------------------------------------- case

_CASE_OPS: tuple[Callable[[str], str], ...] = (str.upper, str.lower, str.capitalize, str.swapcase)


def _case_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """Recase words: upper, lower, capitalised or swapped, picking one that changes the word
    (words of uncased scripts cannot change and are skipped)."""
    ok = _eligibility(text)
    edits = []
    for start, end, word in _units(_WORD, text):
        options = [w for w in dict.fromkeys(op(word) for op in _CASE_OPS) if w != word]
        # a recasing that changes the length (ß -> SS) is a spelling change of its own
        options = [w for w in options if len(w) == len(word)]
        if not options or not ok(start, end):
            continue
        u, r = _draw(rng)
        edits.append(_edit(start, end, word, r.choice(options), u))
    return edits


# --------------------------------------------------------------------------- transliteration

_RU = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "a b v g d e yo zh z i y k l m n o p r s t u f kh ts ch sh shch _ y _ e yu ya".split(),
        strict=True,
    )
)
_RU = {k: ("" if v == "_" else v) for k, v in _RU.items()}
# Ukrainian national transliteration (2010): г -> h, и -> y, і -> i; є ї й ю я are ye yi y yu ya
# at the start of a word and ie i i iu ia elsewhere; зг -> zgh; the apostrophe is dropped
_UK = dict(
    zip(
        "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя",
        "a b v h g d e ie zh z y i i i k l m n o p r s t u f kh ts ch sh shch _ iu ia".split(),
        strict=True,
    )
)
_UK = {k: ("" if v == "_" else v) for k, v in _UK.items()}
_UK_INITIAL = {"є": "ye", "ї": "yi", "й": "y", "ю": "yu", "я": "ya"}
_APOSTROPHES = "'’ʼ"


def _table_romanise(word: str, table: dict[str, str], initial: dict[str, str]) -> str:
    cased = [c for c in word if c.isupper() or c.islower()]
    word_upper = len(cased) > 1 and all(c.isupper() for c in cased)
    out: list[str] = []
    first = True
    prev = ""
    for ch in unicodedata.normalize("NFC", word):
        low = ch.lower()
        if ch in _APOSTROPHES or unicodedata.category(ch) == "Mn":
            continue  # the apostrophe (м'ясо -> miaso) and stress marks are not transliterated
        if low in table:
            rep = initial.get(low, table[low]) if first else table[low]
            if table is _UK and low == "г" and prev == "з":
                rep = "gh"
            out.append(_cased(ch, rep, word_upper) if rep else "")
        else:
            out.append(ch)
        first = not (ch.isalpha() or unicodedata.category(ch) == "Mn")
        prev = low
    return "".join(out)


_CJK_CHAR = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}ー]")
_KANA = regex.compile(r"[\p{Hiragana}\p{Katakana}]")
_HANGUL = regex.compile(r"\p{Hangul}")
_NON_LATIN_LETTER = regex.compile(r"(?!\p{Latin})\p{L}")
# a word with inner apostrophes (Ukrainian м'ясо, French aujourd'hui); CJK characters apart
_TRANSLIT_WORD = regex.compile(
    r"(?:(?![\p{Han}\p{Hiragana}\p{Katakana}ー])[\w\p{M}])+"
    r"(?:['’ʼ](?:(?![\p{Han}\p{Hiragana}\p{Katakana}ー])[\w\p{M}])+)*"
)
_JA_RUN = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}ー々〆]+")


@functools.lru_cache(maxsize=1)
def _kakasi():
    import pykakasi

    return pykakasi.kakasi()


def _japanese_segments(run: str) -> list[tuple[int, int, str]]:
    """(start, end, Hepburn romaji) of each word pykakasi finds in a run of kana/kanji, by the
    word's kana reading (拒否 -> kyohi); empty when its segments do not tile the run."""
    segments = _kakasi().convert(run)
    out, pos = [], 0
    for seg in segments:
        orig = seg["orig"]
        if run[pos : pos + len(orig)] != orig:
            return []
        romaji = seg.get("hepburn") or ""
        if romaji and _CJK_CHAR.search(orig) and not _CJK_CHAR.search(romaji):
            out.append((pos, pos + len(orig), romaji))
        pos += len(orig)
    return out if pos == len(run) else []


def _pads(text: str, start: int, end: int) -> tuple[bool, bool]:
    return (start > 0 and bool(_WORD.match(text[start - 1]))), (
        end < len(text) and bool(_WORD.match(text[end]))
    )


def _romanise_word(word: str, lang: str | None) -> str:
    if lang == "ru":
        return _table_romanise(word, _RU, {})
    if lang == "uk":
        return _table_romanise(word, _UK, _UK_INITIAL)
    latin = anyascii(word)
    if _HANGUL.search(word):  # Hangul is uncased: anyascii's capitals mark syllables only
        latin = latin.lower()
    return latin


def _translit_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """Romanise words written in a non-Latin script: Japanese words by their kana reading
    (pykakasi; Han characters in Japanese text are never read as Mandarin), Chinese characters
    one pinyin syllable each, Russian and Ukrainian by their national tables, other scripts with
    ``anyascii``. Latin-script text has nothing to romanise."""
    ok = _eligibility(text)
    spans: list[tuple[int, int, str, bool]] = []  # start, end, romanised, padded
    japanese = lang == "ja" or (lang is None and bool(_KANA.search(text)))
    if japanese:
        for m in _JA_RUN.finditer(text):
            for a, b, romaji in _japanese_segments(m.group(0)):
                spans.append((m.start() + a, m.start() + b, romaji, True))
    elif lang in (None, "zh", "yue"):
        for m in regex.finditer(r"\p{Han}", text):
            syllable = anyascii(m.group(0)).lower()
            if syllable.strip():
                spans.append((m.start(), m.end(), syllable, True))
    for start, end, word in _units(_TRANSLIT_WORD, text):
        if not _NON_LATIN_LETTER.search(word) or _CJK_CHAR.search(word):
            continue
        latin = _romanise_word(word, lang)
        if latin.strip() and latin != word:
            spans.append((start, end, latin, False))
    edits = []
    for start, end, new, padded in sorted(spans):
        if not ok(start, end):
            continue
        u, _ = _draw(rng)
        pads = _pads(text, start, end) if padded else (False, False)
        edits.append(_edit(start, end, text[start:end], new, u, pads))
    return edits


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
    ops = ["delete", "double"] + (
        ["swap"] if i + 1 < len(g) and g[i + 1][0].isalpha() and g[i + 1] != ch else []
    )
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


def _typo_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """One typo in each chosen word of at least two letters (QWERTY for Latin, ЙЦУКЕН for
    Cyrillic, the Greek layout for Greek; other scripts get layout-free slips)."""
    ok = _eligibility(text)
    edits = []
    for start, end, word in _units(_WORD, text):
        if sum(c[0].isalpha() for c in _GRAPHEME.findall(word)) < 2 or not ok(start, end):
            continue
        u, r = _draw(rng)
        new = _typo(word, r)
        if new != word:
            edits.append(_edit(start, end, word, new, u))
    return edits


# --------------------------------------------------------------------------- normalisation


def _nfc_nfd_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """Flip characters between composed (NFC) and decomposed (NFD) form: "é" becomes "e" +
    U+0301, a Hangul syllable its jamo. ``NFC(output) == NFC(input)``: lossless, but a model or
    tokenizer that does not normalise sees different code points."""
    ok = _eligibility(text)
    edits = []
    for m in _GRAPHEME.finditer(text):
        cluster = m.group(0)
        nfc = unicodedata.normalize("NFC", cluster)
        nfd = unicodedata.normalize("NFD", cluster)
        if nfc == nfd or not ok(m.start(), m.end()):
            continue
        u, _ = _draw(rng)
        edits.append(_edit(m.start(), m.end(), cluster, nfc if cluster == nfd else nfd, u))
    return edits


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


def _homoglyph_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """Swap letters for look-alikes of another script (Latin "a" -> Cyrillic "а", Cyrillic
    "о" -> Latin "o"): the text looks the same and keeps its length, but its code points (and
    tokens) change."""
    ok = _eligibility(text)
    edits = []
    for i, ch in enumerate(text):
        alikes = HOMOGLYPHS.get(ch)
        if alikes is None or not ok(i, i + 1):
            continue
        if i + 1 < len(text) and unicodedata.category(text[i + 1]) == "Mn":
            continue  # a base with marks is one character: swapping it would split the cluster
        u, r = _draw(rng)
        edits.append(Edit(i, i + 1, r.choice(alikes), u, 1))  # one letter for one
    return edits


# --------------------------------------------------------------------------- punctuation

_PUNCT_OR_SPACE = regex.compile(r"\s+|\p{P}")
_NOISE_PUNCT = ",.;:!?"
_NOISE_SPACE = ("  ", "\t", "\u00a0")


def _punctuation_edits(text: str, lang: str | None, rng: random.Random) -> list[Edit]:
    """Noise on punctuation marks and whitespace runs, the letters untouched: a gap is dropped
    (words run together), widened, made a tab or a no-break space, or gets a stray mark; a
    mark is dropped, doubled, replaced or gets a space before it. Marks and gaps inside or next
    to a protected span (``%s``, ``--help``, a URL) are left alone."""
    ok = _eligibility(text)
    edits = []
    for start, end, unit in _units(_PUNCT_OR_SPACE, text):
        if not ok(start, end):
            continue
        u, r = _draw(rng)
        op = r.randrange(4)
        if unit.isspace():
            if start == 0 or end == len(text):
                new = unit + " " if op == 0 else r.choice(_NOISE_SPACE)  # no edge-gap removal
            else:
                new = ("", unit + " ", r.choice(_NOISE_SPACE), r.choice(_NOISE_PUNCT) + unit)[op]
        else:
            other = r.choice([p for p in _NOISE_PUNCT if p != unit])
            new = ("", unit + unit, other, " " + unit)[op]
        if new != unit:
            edits.append(_edit(start, end, unit, new, u))
    return edits


# --------------------------------------------------------------------------- registry

_CANDIDATES: dict[str, Candidates] = {
    "diacritics": _diacritic_edits,
    "case": _case_edits,
    "transliterate": _translit_edits,
    "typos": _typo_edits,
    "nfc_nfd": _nfc_nfd_edits,
    "homoglyphs": _homoglyph_edits,
    "punctuation": _punctuation_edits,
}

Perturbation = Callable[..., str]


def _public(name: str) -> Perturbation:
    fn = _CANDIDATES[name]

    def perturbation(
        text: str, severity: float, rng: random.Random, lang: str | None = None
    ) -> str:
        return _run(fn, text, severity, rng, lang).text

    perturbation.__name__ = fn.__name__.removeprefix("_").removesuffix("_edits")
    perturbation.__doc__ = fn.__doc__
    return perturbation


remove_diacritics = _public("diacritics")
change_case = _public("case")
transliterate = _public("transliterate")
keyboard_typos = _public("typos")
flip_normalization = _public("nfc_nfd")
homoglyphs = _public("homoglyphs")
punctuation_noise = _public("punctuation")

#: name -> ``(text, severity, rng, lang=None) -> text``
PERTURBATIONS: dict[str, Perturbation] = {
    "diacritics": remove_diacritics,
    "case": change_case,
    "transliterate": transliterate,
    "typos": keyboard_typos,
    "nfc_nfd": flip_normalization,
    "homoglyphs": homoglyphs,
    "punctuation": punctuation_noise,
}


def _check_args(name: str, severity: float) -> Candidates:
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {sorted(PERTURBATIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Real):
        raise TypeError(f"severity must be a number in [0, 1], got {type(severity).__name__}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return _CANDIDATES[name]


def perturb_measured(
    text: str, name: str, severity: float, seed: int | str = 0, lang: str | None = None
) -> Perturbed:
    """Apply perturbation ``name`` aiming at ``severity`` (share of characters changed), with a
    generator seeded by ``seed``; returns the text and the corruption it reached."""
    fn = _check_args(name, severity)
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return _run(fn, text, float(severity), random.Random(f"{seed}/{name}"), lang)


def perturb(
    text: str, name: str, severity: float, seed: int | str = 0, lang: str | None = None
) -> str:
    """The text of :func:`perturb_measured`."""
    return perturb_measured(text, name, severity, seed, lang).text


def perturb_batch(
    texts: Sequence[str],
    name: str,
    severity: float,
    seed: int | str = 0,
    langs: Sequence[str | None] | str | None = None,
) -> list[str]:
    """Perturb every text with its own stream (seed, name, index): the output of one example
    does not depend on the others, and the same example nests across severities."""
    fn = _check_args(name, severity)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if langs is None or isinstance(langs, str):
        langs = [langs] * len(texts)
    if len(langs) != len(texts):
        raise ValueError(f"{len(langs)} languages for {len(texts)} texts")
    out = []
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        rng = random.Random(f"{seed}/{name}/{i}")
        out.append(_run(fn, text, float(severity), rng, lang).text)
    return out
