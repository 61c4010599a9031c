"""Label-free heuristic quality rules with datatrove's semantics: GopherRepetitionFilter,
GopherQualityFilter, C4QualityFilter and FineWebQualityFilter, applied in that order (the order of
datatrove's FineWeb pipeline), configured per profile and language.

Why datatrove's definitions: FineWeb, FineWeb-2 and many open corpora were filtered with them, so
a threshold read in their papers means the same thing here. Each rule is stated below the way
datatrove computes it; ``tests/test_quality_rules.py`` pins the behaviour at the thresholds, and
``docs/governance.md`` (Quality rules) lists every rule with its thresholds and source. A document
is rejected by the first failing rule, as ``<rule set>:<datatrove's reason>``; unlike datatrove,
every enabled filter is still measured, so ``quality_signals`` shows all of them.

**Words.** datatrove counts the tokens of spaCy's tokenizer for the language, so punctuation marks
are words of their own. govtune has no spaCy; :func:`tokenize` follows spaCy's rules: each
whitespace chunk loses leading and trailing punctuation (a final ``.`` after a digit or a lowercase
or caseless letter, ``'s``, brackets, quotes, ``,;:!?``) as separate tokens and splits at ``...``,
digit-digit hyphens, commas between letters, ``:<>=/`` before a letter and, where the language's
spaCy rules do (``split_hyphens``: not de, fr, es, el), hyphens between letters; ``sysctl.conf``,
``--help``, ``/etc``, ``20th`` and URLs stay whole. On 150 shipped paragraphs in each of en, de, fr,
es, pl, tr, ru, uk, el and ar, the mean absolute difference of the alpha-word ratio from spaCy's is
at most 0.008, and at most 0.02 on whole man pages. Where we differ: abbreviations are not kept
whole (``z.B.`` is ``z.B`` + ``.``), spaCy's emoticon exceptions (``):``) are two tokens, English
contractions split after the apostrophe (``don'`` + ``t``, as many tokens as spaCy's ``do`` +
``n't``). Scripts written without spaces (Han, Kana, Thai, Lao, Khmer, Myanmar) count every letter
as a word, where datatrove uses jieba, SudachiPy or PyThaiNLP segmenters that govtune does not
install; their settings (``configs/languages.yaml``) switch the mean-word-length rule off, join
letter n-grams without spaces (the space datatrove puts between words is not in such text) and
count repeated n-grams of 10 to 20 letters (a letter is about half a word there).

**Gopher quality.** Tokens with a character that is not punctuation are words ("non-symbol words";
punctuation is every Unicode punctuation, symbol or control character, where datatrove lists ASCII
punctuation, common CJK and typographic marks and the sentence terminals: ``€`` or ``°`` alone is a
symbol here, a word there). ``gopher_short_doc`` / ``gopher_long_doc``: fewer than
``min_doc_words`` / more than ``max_doc_words`` non-symbol words. ``gopher_below_avg_threshold`` /
``gopher_above_avg_threshold``: their mean length outside [``min_avg_word_length``,
``max_avg_word_length``]. ``gopher_too_many_hashes`` / ``gopher_too_many_ellipsis``: the count of
``#``, and of ``...`` plus ``…``, each over all tokens, above ``max_symbol_word_ratio``.
``gopher_too_many_bullets``: more than ``max_bullet_lines_ratio`` of the lines (``str.splitlines``,
empty lines included) start with ``•`` or ``-`` after leading spaces.
``gopher_too_many_end_ellipsis``: more than ``max_ellipsis_lines_ratio`` end with ``...`` or ``…``.
``gopher_below_alpha_threshold``: fewer than ``min_alpha_words_ratio`` of all tokens contain a
letter (datatrove names it ``max_non_alpha_words_ratio``, default 0.8, but it is a minimum of
alphabetic tokens: 40% numeric tokens are rejected). ``gopher_enough_stop_words``: fewer than
``min_stop_words`` *distinct* stop words among the tokens (exact, case-sensitive). Stop words: the
Gopher paper's eight for English (the, be, to, of, and, that, have, with: datatrove's default), a
language's ``stop_words`` in ``configs/languages.yaml``, otherwise ``stopwordsiso`` (entries with a
letter). datatrove has no default for other languages and FineWeb-2 ships about 15 frequent words
per language, so the longer stopwordsiso lists make the rule more lenient there.

**Gopher repetition.** Paragraphs are ``text.strip()`` split on two or more newlines, lines the
text split on newlines; an element is a duplicate when it appeared before (the first copy does not
count). ``dup_para_frac`` / ``dup_line_frac``: duplicates over elements, above 0.3;
``dup_para_char_frac`` / ``dup_line_char_frac``: their characters over the text's, above 0.2.
``top_{n}_gram`` (n = 2, 3, 4; 0.20, 0.18, 0.16): the most frequent token n-gram (joined by spaces)
times its count, in characters, over the text's characters; it counts even when it occurs once, as
in datatrove, so a text under about 25 words always fails ``top_4_gram``.
``duplicated_{n}_n_grams`` (n = 5..10; 0.15 down to 0.10): scanning left to right, an n-gram
(joined without spaces) seen before adds its characters and the scan jumps n tokens, otherwise it
is remembered and the scan moves one token; the total over the text's characters.

**C4** (line filters change the text). Lines are ``str.splitlines()``, each stripped. In order: a
line with a word (whitespace split; tokens for scripts without spaces) longer than
``c4_max_word_length`` is removed (``too_long_word``); citations (``[1]``, ``[edit]``,
``[citation needed]``) are deleted; with ``c4_filter_no_terminal_punct`` a line not ending with one
of ``c4_end_punctuation`` (datatrove: ``. ? ! " '``), or ending with ``...``, is removed
(``no_terminal_punct``); a line of fewer than ``c4_min_words_per_line`` words is removed
(``too_few_words``); ``lorem ipsum`` in a remaining line rejects the document (``c4:lorem_ipsum``);
a line with ``javascript`` is removed; ``{`` in a remaining line rejects the document
(``c4:curly_bracket``); a line with a cookie or terms-of-use phrase is removed (``policy``). The
sentences of the kept lines are counted (a sentence starts at the first non-punctuation token after
a sentence-terminal token, as spaCy's sentencizer splits); fewer than ``c4_min_num_sentences``
rejects (``c4:too_few_sentences``). The kept lines, joined by newlines and stripped, become the
text. A document left empty is rejected as ``c4:no_lines_left`` (datatrove says
``too_few_sentences``, or FineWeb's ``empty`` when the sentence minimum is off).
``quality_signals["c4"]`` records the lines and characters removed per reason.

**FineWeb** (on the text C4 left). Lines are ``text.split("\\n")`` without blank ones, unstripped.
``fineweb:empty``: no line. ``line_punct_ratio``: lines ending with a sentence terminal (Unicode
``Sentence_Terminal`` plus three Khmer signs: datatrove's ``TERMINAL_PUNCTUATION`` up to characters
of later Unicode versions; not ``:``, ``)``, quotes or ``…``) over lines, below
``fineweb_line_punct_thr`` (unless 0 with ``fineweb_line_punct_exclude_zero``).
``short_line_ratio``: lines of at most ``fineweb_short_line_length`` characters, above
``fineweb_short_line_thr``. ``char_dup_ratio``: characters of duplicated lines over the characters
of the text without newlines, above ``fineweb_char_dup_ratio``. ``list_ratio``: newlines over
tokens, above ``fineweb_new_line_ratio``.

**govtune's own rule.** ``gopher:replacement_chars``: U+FFFD (encoding damage normalisation could
not repair) over characters, above ``max_replacement_char_ratio``.

**Profiles.** ``web`` holds datatrove's defaults for every rule. ``short`` (the default: the demo,
the catalogue messages and the task pool are messages, dialogue lines and paragraphs) keeps the
definitions and relaxes the minimums: 2 words, a mean word length of 2 to 14, 40% alphabetic tokens
(clean messages and paragraphs with quotes and brackets go below 50%; junk is near 0), no C4
terminal-punctuation, words-per-line or 5-sentence minimums (1 sentence) and no curly-bracket rule
(message placeholders). It applies the line ratios (bullets, end ellipsis, all of FineWeb) only to
documents of at least 3 lines, the stop-word rule to documents of at least 25 words and the top
n-gram rule to documents of at least 50 words (web's minimum): on a one-line message every line
ratio is 0 or 1, and no text under 25 words can pass ``top_4_gram``.

Settings are merged in this order: the profile, ``configs/languages.yaml`` (``default`` and the
language's entry), ``QualityConfig.overrides`` (an unknown key is an error). ``None`` disables a
threshold; as in datatrove, 0 also disables a Gopher threshold and -1 a C4 minimum.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate
from typing import Any

import numpy as np
import pyarrow as pa
import regex
import stopwordsiso

from .config import ConfigError, GovernanceConfig, QualityConfig
from .contract import StageResult, split_by_mask

_GOPHER_WEB: dict[str, Any] = {
    # GopherQualityFilter defaults
    "min_doc_words": 50, "max_doc_words": 100_000, "min_avg_word_length": 3,
    "max_avg_word_length": 10, "max_symbol_word_ratio": 0.1, "max_bullet_lines_ratio": 0.9,
    "max_ellipsis_lines_ratio": 0.3, "min_alpha_words_ratio": 0.8, "min_stop_words": 2,
    "stop_words": None,
    # GopherRepetitionFilter defaults (Gopher paper, Table A1)
    "dup_line_frac": 0.3, "dup_para_frac": 0.3, "dup_line_char_frac": 0.2,
    "dup_para_char_frac": 0.2, "top_n_grams": [[2, 0.2], [3, 0.18], [4, 0.16]],
    "dup_n_grams": [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.1]],
    "max_replacement_char_ratio": 0.0,
}  # fmt: skip

_C4_WEB: dict[str, Any] = {  # C4QualityFilter defaults
    "c4_remove_citations": True, "c4_filter_no_terminal_punct": True,
    "c4_end_punctuation": ".?!\"'", "c4_min_num_sentences": 5, "c4_min_words_per_line": 3,
    "c4_max_word_length": 1000, "c4_lorem_ipsum": True, "c4_javascript": True,
    "c4_curly_bracket": True, "c4_policy": True,
}  # fmt: skip

_FINEWEB_WEB: dict[str, Any] = {  # FineWebQualityFilter defaults
    "fineweb_line_punct_thr": 0.12, "fineweb_line_punct_exclude_zero": False,
    "fineweb_stop_chars": None, "fineweb_short_line_thr": 0.67, "fineweb_short_line_length": 30,
    "fineweb_char_dup_ratio": 0.01, "fineweb_new_line_ratio": 0.3,
}  # fmt: skip

# govtune's gates (0 = always apply, as datatrove does) and the word unit of a language
_GATES_WEB: dict[str, Any] = {
    "line_rules_min_lines": 0, "stop_words_min_doc_words": 0, "top_ngram_min_words": 0,
    "fineweb_min_lines": 0, "word_unit": "space", "split_hyphens": True,
    "split_apostrophes": False,
}  # fmt: skip

PROFILES: dict[str, dict[str, Any]] = {
    "web": {**_GOPHER_WEB, **_C4_WEB, **_FINEWEB_WEB, **_GATES_WEB},
    "short": {
        **_GOPHER_WEB, **_C4_WEB, **_FINEWEB_WEB, **_GATES_WEB,
        "min_doc_words": 2, "min_avg_word_length": 2, "max_avg_word_length": 14,
        "min_alpha_words_ratio": 0.4,
        "c4_filter_no_terminal_punct": False, "c4_min_num_sentences": 1,
        "c4_min_words_per_line": -1, "c4_curly_bracket": False,
        "line_rules_min_lines": 3, "stop_words_min_doc_words": 25, "top_ngram_min_words": 50,
        "fineweb_min_lines": 3,
    },
}  # fmt: skip

# The rule sets of QualityConfig.rule_sets and the filters each one runs, in pipeline order.
RULE_SETS: dict[str, tuple[str, ...]] = {
    "gopher": ("gopher_repetition", "gopher_quality"),
    "c4": ("c4",),
    "fineweb": ("fineweb",),
}

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies")  # fmt: skip

_SPACELESS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_URL = regex.compile(r"(?:https?://|ftp://|www\.)\S+")
# spaCy-style affixes: what is peeled off the start / end of a whitespace-separated chunk
_OPEN = r"\p{Ps}\p{Pi}\p{Pf}\p{Sc}\p{So}§%=—–\"'`´«»„“”‘’‚‹›¿¡<*#&_,:;!?…。，、；：？！·।،۔؛؟٪"
_PREFIX = regex.compile(rf"\.{{2,}}|\+(?![0-9])|[{_OPEN}]")
_CLOSE = r"\p{Pe}\p{Pi}\p{Pf}\p{So}\"'`´«»„“”‘’‚‹›,:;!?…%—–。，、；：？！·।،۔؛؟٪>"
_SUFFIX = regex.compile(
    rf"(?:\.{{2,}}|['’][sS]|(?<=[0-9])\+|(?<=[0-9\p{{Ll}}\p{{Lo}}\p{{M}}%\"'”’»)\]])\.|(?<=\p{{Lu}}\p{{Lu}})\."
    rf"|[{_CLOSE}])$"
)
_INFIX_COMMON = (
    r"\.{2,}|…"
    r"|(?<=[0-9])[+\-*^](?=[0-9-])"  # 2024-01-01, 3+4
    r"|(?<=[\p{Ll}\"'”’])\.(?=[\p{Lu}\"'“‘])"  # end.Next
    r"|(?<=\p{L}),(?=\p{L})"  # a,b
    r"|(?<=[\p{L}0-9])[:<>=/](?=\p{L})"  # and/or, key=value
)
_INFIX_HYPHEN = r"|(?<=[\p{L}0-9])(?:---|--|-|–|—|~)(?=\p{L})"  # well-known
_APOSTROPHE = regex.compile(r"(?<=\p{L}['’])(?=\p{L})")
_INFIX_CHARS = regex.compile(r"[.…,:<>=/\-–—~+*^]")
_PLAIN = regex.compile(rf"(?:(?![{_SPACELESS}])[\p{{L}}\p{{M}}\p{{N}}])+")
_SPACELESS_RUN = regex.compile(rf"[{_SPACELESS}]")
_SPACELESS_SPLIT = regex.compile(
    rf"[{_SPACELESS}]\p{{M}}*|(?:(?![{_SPACELESS}])[\p{{L}}\p{{M}}\p{{N}}_])+|\.{{2,}}|\S"
)


@cache
def _infix(split_hyphens: bool) -> regex.Pattern:
    return regex.compile(_INFIX_COMMON + (_INFIX_HYPHEN if split_hyphens else ""))


def _split_core(core: str, split_hyphens: bool, split_apostrophes: bool) -> list[str]:
    if _SPACELESS_RUN.search(core):  # one token per letter of Han, Kana, Thai, ...
        return _SPACELESS_SPLIT.findall(core)
    parts: list[str] = []
    start = 0
    if _INFIX_CHARS.search(core):
        for m in _infix(split_hyphens).finditer(core):
            parts += [core[start : m.start()], m.group()]
            start = m.end()
    parts.append(core[start:])
    if split_apostrophes and ("'" in core or "’" in core):  # l'|homme, don'|t as in spaCy
        parts = [p for part in parts for p in _APOSTROPHE.split(part)]
    return [p for p in parts if p]


_SYMBOL_ONLY = regex.compile(r"[\p{P}\p{S}\p{C}\s]+")
_PUNCT_ONLY = regex.compile(r"\p{P}+")
_LETTER = regex.compile(r"\p{L}")
_KHMER_TERMINALS = (
    "\u17d6\u17d9\u17da"  # in datatrove's TERMINAL_PUNCTUATION, not Sentence_Terminal
)
_STERM = regex.compile(r"\p{Sentence_Terminal}")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


@cache
def terminal_punctuation() -> tuple[str, ...]:
    """FineWeb's line-ending marks: every Unicode ``Sentence_Terminal`` character (``.``, ``!``,
    ``?``, ``。``, ``।``, ``؟``, …) plus the Khmer signs datatrove adds (a tuple, for
    ``str.endswith``)."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    return tuple(sorted(set(_STERM.findall(every)) | set(_KHMER_TERMINALS)))


@cache
def _terminal_set() -> frozenset[str]:
    return frozenset(terminal_punctuation())


def tokenize(text: str, split_hyphens: bool = True, split_apostrophes: bool = False) -> list[str]:
    """Words as datatrove counts them: spaCy's tokenizer, approximated. Each whitespace-separated
    chunk loses its leading and trailing punctuation (brackets, quotes, ``,;:!?``, a final ``.``
    after a digit or lowercase letter, ``'s``) as tokens of their own, then splits at ``...``,
    digit-digit hyphens, commas between letters, ``:<>=/`` before a letter and, with
    ``split_hyphens``, hyphens between letters; ``sysctl.conf``, ``--help``, ``/etc`` and URLs stay
    whole, as in spaCy. Letters of scripts written without spaces are one token each.
    ``split_apostrophes`` splits after an inner apostrophe (spaCy's French and English rules)."""
    tokens: list[str] = []
    chunks = text.split()
    for chunk, plain in zip(chunks, map(_PLAIN.fullmatch, chunks), strict=True):
        if plain:  # most chunks: letters and digits only
            tokens.append(chunk)
            continue
        head: list[str] = []
        while chunk and not _URL.match(chunk) and (m := _PREFIX.match(chunk)):
            head.append(m.group())
            chunk = chunk[m.end() :]
        tail: list[str] = []
        while chunk and (m := _SUFFIX.search(chunk)) and m.start() > 0:
            tail.append(m.group())
            chunk = chunk[: m.start()]
        if chunk and len(chunk) == 1 and _SUFFIX.search(chunk):
            tail.append(chunk)
            chunk = ""
        tokens += head
        if chunk:
            tokens += (
                [chunk]
                if _URL.match(chunk)
                else _split_core(chunk, split_hyphens, split_apostrophes)
            )
        tokens += reversed(tail)
    return tokens


def words_for(text: str, s: dict[str, Any]) -> list[str]:
    """:func:`tokenize` with a language's settings."""
    return tokenize(text, s.get("split_hyphens", True), s.get("split_apostrophes", False))


def is_symbol_word(word: str) -> bool:
    """A token made only of punctuation, symbols or control characters: Gopher does not count it
    as a word for the length rules."""
    return _SYMBOL_ONLY.fullmatch(word) is not None


@cache
def default_stop_words(lang: str | None) -> frozenset[str]:
    """The Gopher list for English, stopwordsiso's list (entries with a letter) otherwise; empty
    when stopwordsiso has none (the stop-word rule is then skipped, not failed)."""
    if lang == "en":
        return frozenset(GOPHER_STOP_WORDS)
    if not lang or not stopwordsiso.has_lang(lang):
        return frozenset()
    try:
        words = stopwordsiso.stopwords(lang)
    except (KeyError, ValueError, TypeError):
        return frozenset()
    return frozenset(w for w in words if _LETTER.search(w))


def stop_words_for(lang: str | None, settings: dict[str, Any]) -> frozenset[str]:
    """The configured ``stop_words`` list when a language has one, else the default."""
    configured = settings.get("stop_words")
    return frozenset(configured) if configured else default_stop_words(lang)


def settings_for(lang: str, config: GovernanceConfig) -> dict[str, Any]:
    """Profile, then ``languages.yaml`` (``default`` + the language), then overrides. Unknown keys
    in the overrides are an error, so a typo cannot silently leave a rule at its default."""
    profile = PROFILES[config.quality.profile]
    merged = dict(profile)
    lang_settings = config.language_settings()
    own = lang_settings.get(lang, lang_settings.get("default", {}))
    merged.update({k: v for k, v in own.items() if k in profile})
    unknown = sorted(set(config.quality.overrides) - set(profile))
    if unknown:
        raise ConfigError(
            f"config.quality.overrides: unknown rule(s) {', '.join(unknown)}; "
            f"valid rules are {', '.join(sorted(profile))}"
        )
    merged.update(config.quality.overrides)
    return merged


def _on(threshold: Any) -> bool:
    """datatrove's Gopher filters skip a rule whose threshold is falsy (None or 0)."""
    return bool(threshold)


def _duplicates(elements: list[str]) -> tuple[int, int]:
    """(number, characters) of elements equal to an earlier one."""
    seen: set[str] = set()
    n = chars = 0
    for el in elements:
        if el in seen:
            n += 1
            chars += len(el)
        else:
            seen.add(el)
    return n, chars


def _top_ngram_chars(words: list[str], n: int, sep: str = " ") -> int | None:
    """Characters of the most frequent n-gram (joined by ``sep``) times its count (None: none)."""
    grams = [sep.join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _duplicated_ngram_chars(
    words: list[str], n: int, joined: str | None = None, offsets: list[int] | None = None
) -> int:
    """Characters covered by repeated n-grams (joined without spaces), skipping over each repeat.
    ``joined`` / ``offsets``: the words concatenated and their start offsets, when known."""
    if joined is None or offsets is None:
        joined, offsets = "".join(words), [0, *accumulate(map(len, words))]
    last = len(words) - n + 1
    grams = [joined[offsets[i] : offsets[i + n]] for i in range(max(last, 0))]
    if len(set(grams)) == len(grams):  # nothing repeats (most documents): no scan needed
        return 0
    seen: set[str] = set()
    chars, i = 0, 0
    while i < last:
        gram = grams[i]
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def _n_lines(text: str) -> int:
    return sum(1 for ln in text.split("\n") if ln.strip())


def gopher_repetition(
    text: str, words: list[str], s: dict[str, Any], top_ngrams: bool = True
) -> tuple[str, dict]:
    """GopherRepetitionFilter: (first failing reason or '', measurements). ``top_ngrams=False``
    measures but does not apply the top n-gram rules (the ``short`` gate)."""
    n_chars = max(len(text), 1)
    paragraphs = _PARAGRAPHS.split(text.strip())
    para_dups, para_chars = _duplicates(paragraphs)
    lines = _LINES.split(text)
    line_dups, line_chars = _duplicates(lines)
    sig: dict[str, Any] = {
        "dup_para_frac": para_dups / len(paragraphs),
        "dup_para_char_frac": para_chars / n_chars,
        "dup_line_frac": line_dups / len(lines),
        "dup_line_char_frac": line_chars / n_chars,
    }
    checks = [(name, sig[name] > s[name]) for name in
              ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac")
              if _on(s[name])]  # fmt: skip
    for n, frac in s["top_n_grams"] or ():
        top = _top_ngram_chars(words, int(n), "" if s.get("word_unit") == "char" else " ")
        if top is None:
            continue
        sig[f"top_{n}_gram"] = top / n_chars
        checks.append((f"top_{n}_gram", top_ngrams and sig[f"top_{n}_gram"] > frac))
    joined, offsets = "".join(words), [0, *accumulate(map(len, words))]
    for n, frac in s["dup_n_grams"] or ():
        dup = _duplicated_ngram_chars(words, int(n), joined, offsets)
        sig[f"duplicated_{n}_n_grams"] = dup / n_chars
        checks.append((f"duplicated_{n}_n_grams", sig[f"duplicated_{n}_n_grams"] > frac))
    return next((name for name, failed in checks if failed), ""), sig


def gopher_quality(
    text: str, words: list[str], lang: str, s: dict[str, Any], line_rules: bool = True
) -> tuple[str, dict]:
    """GopherQualityFilter (+ govtune's replacement-character rule): (reason or '', signals).
    ``line_rules=False`` skips the bullet and end-ellipsis line ratios (the ``short`` gate)."""
    n_tokens = len(words)
    content = [
        w for w, sym in zip(words, map(_SYMBOL_ONLY.fullmatch, words), strict=True) if not sym
    ]
    n_words = len(content)
    avg = float(np.mean([len(w) for w in content])) if content else 0.0
    lines = text.splitlines() or [""]
    stops = stop_words_for(lang, s)
    sig: dict[str, Any] = {
        "n_tokens": n_tokens,
        "n_words": n_words,
        "avg_word_length": avg,
        "hash_word_ratio": text.count("#") / max(n_tokens, 1),
        "ellipsis_word_ratio": (text.count("...") + text.count("…")) / max(n_tokens, 1),
        "bullet_lines_ratio": sum(ln.lstrip().startswith(("•", "-")) for ln in lines) / len(lines),
        "ellipsis_lines_ratio": sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
        / len(lines),
        "alpha_words_ratio": sum(map(bool, map(_LETTER.search, words))) / max(n_tokens, 1),
        "stop_words": len(stops.intersection(words)),
        "replacement_char_ratio": text.count("\ufffd") / max(len(text), 1),
    }
    # no stop-word list for the language: the rule cannot measure anything, so it is skipped
    stop_gate = bool(stops) and n_words >= (s["stop_words_min_doc_words"] or 0)
    checks = [
        ("gopher_short_doc", _on(s["min_doc_words"]) and n_words < s["min_doc_words"]),
        ("gopher_long_doc", _on(s["max_doc_words"]) and n_words > s["max_doc_words"]),
        ("gopher_below_avg_threshold", bool(content) and _on(s["min_avg_word_length"])
         and avg < s["min_avg_word_length"]),
        ("gopher_above_avg_threshold", bool(content) and _on(s["max_avg_word_length"])
         and avg > s["max_avg_word_length"]),
        ("gopher_too_many_hashes", _on(s["max_symbol_word_ratio"])
         and sig["hash_word_ratio"] > s["max_symbol_word_ratio"]),
        ("gopher_too_many_ellipsis", _on(s["max_symbol_word_ratio"])
         and sig["ellipsis_word_ratio"] > s["max_symbol_word_ratio"]),
        ("gopher_too_many_bullets", line_rules and _on(s["max_bullet_lines_ratio"])
         and sig["bullet_lines_ratio"] > s["max_bullet_lines_ratio"]),
        ("gopher_too_many_end_ellipsis", line_rules and _on(s["max_ellipsis_lines_ratio"])
         and sig["ellipsis_lines_ratio"] > s["max_ellipsis_lines_ratio"]),
        ("gopher_below_alpha_threshold", _on(s["min_alpha_words_ratio"])
         and sig["alpha_words_ratio"] < s["min_alpha_words_ratio"]),
        ("gopher_enough_stop_words", stop_gate and _on(s["min_stop_words"])
         and sig["stop_words"] < s["min_stop_words"]),
        ("replacement_chars", s["max_replacement_char_ratio"] is not None
         and sig["replacement_char_ratio"] > s["max_replacement_char_ratio"]),
    ]  # fmt: skip
    if not stop_gate:
        sig["stop_words_rule"] = "skipped"
    return next((name for name, failed in checks if failed), ""), sig


def count_sentences(line: str, tokens: list[str] | None = None) -> int:
    """Sentences as spaCy's sentencizer splits them: a new one starts at the first token that is
    not punctuation after a sentence-terminal token (``tokens``: the line's, if known)."""
    terminals = _terminal_set()
    n, seen_terminal = 0, False
    for i, tok in enumerate(tokenize(line) if tokens is None else tokens):
        if i == 0:
            n = 1
        is_terminal = tok in terminals
        if seen_terminal and not is_terminal and not _PUNCT_ONLY.fullmatch(tok):
            n += 1
            seen_terminal = False
        elif is_terminal:
            seen_terminal = True
    return n


def c4_filter(
    text: str, s: dict[str, Any], tok: Callable[[str], list[str]] | None = None
) -> tuple[str, str, dict]:
    """C4QualityFilter: (reason or '', the text with the removed lines gone, signals with the lines
    and characters removed per reason). ``tok`` tokenizes a line (a cache, in :func:`evaluate`)."""
    tok = tok or (lambda line: words_for(line, s))
    end_punct = tuple(s["c4_end_punctuation"])
    char_unit = s.get("word_unit") == "char"
    removed: Counter[str] = Counter()
    removed_chars: Counter[str] = Counter()
    reason, citations, sentences = "", 0, 0
    kept: list[str] = []
    lines = text.splitlines()
    for raw in lines:
        line = raw.strip()
        words = tok(line) if char_unit else line.split()
        why = ""
        if s["c4_max_word_length"] != -1 and any(len(w) > s["c4_max_word_length"] for w in words):
            why = "too_long_word"
        else:
            if s["c4_remove_citations"]:
                line, k = _CITATION.subn("", line)
                citations += k
            lower = line.lower()
            if s["c4_filter_no_terminal_punct"] and (
                not line.endswith(end_punct) or line.endswith("...")
            ):
                why = "no_terminal_punct"
            elif len(words) < s["c4_min_words_per_line"]:
                why = "too_few_words"
            elif s["c4_lorem_ipsum"] and "lorem ipsum" in lower:
                reason = reason or "lorem_ipsum"
            elif s["c4_javascript"] and "javascript" in lower:
                why = "javascript"
            elif s["c4_curly_bracket"] and "{" in line:
                reason = reason or "curly_bracket"
            elif s["c4_policy"] and any(p in lower for p in POLICY_PHRASES):
                why = "policy"
        if why:
            removed[why] += 1
            removed_chars[why] += len(raw)
            continue
        if s["c4_min_num_sentences"] != -1:
            sentences += count_sentences(line, tok(line))
        kept.append(line)
    new_text = "\n".join(kept).strip()
    sig: dict[str, Any] = {
        "lines": len(lines),
        "lines_removed": dict(sorted(removed.items())),
        "chars_removed": dict(sorted(removed_chars.items())),
        "citations_removed": citations,
        "sentences": sentences,
        "text_changed": new_text != text,
    }
    if not reason and not new_text:
        reason = "no_lines_left"
    if not reason and sentences < s["c4_min_num_sentences"]:
        reason = "too_few_sentences"
    return reason, new_text, sig


def fineweb_quality(text: str, words: list[str], s: dict[str, Any]) -> tuple[str, dict]:
    """FineWebQualityFilter: (reason or '', signals)."""
    lines = [ln for ln in text.split("\n") if ln.strip() != ""]
    if not lines:
        return "empty", {"n_lines": 0}
    stop_chars = tuple(s["fineweb_stop_chars"] or terminal_punctuation())
    sig = {
        "n_lines": len(lines),
        "line_punct_ratio": sum(ln.endswith(stop_chars) for ln in lines) / len(lines),
        "short_line_ratio": sum(len(ln) <= s["fineweb_short_line_length"] for ln in lines)
        / len(lines),
        "char_dup_ratio": _duplicates(lines)[1] / max(len(text.replace("\n", "")), 1),
        "new_line_ratio": text.count("\n") / max(len(words), 1),
    }
    punct_thr = s["fineweb_line_punct_thr"]
    checks = [
        ("line_punct_ratio", punct_thr is not None and sig["line_punct_ratio"] < punct_thr
         and not (sig["line_punct_ratio"] == 0 and s["fineweb_line_punct_exclude_zero"])),
        ("short_line_ratio", s["fineweb_short_line_thr"] is not None
         and sig["short_line_ratio"] > s["fineweb_short_line_thr"]),
        ("char_dup_ratio", s["fineweb_char_dup_ratio"] is not None
         and sig["char_dup_ratio"] > s["fineweb_char_dup_ratio"]),
        ("list_ratio", s["fineweb_new_line_ratio"] is not None
         and sig["new_line_ratio"] > s["fineweb_new_line_ratio"]),
    ]  # fmt: skip
    return next((name for name, failed in checks if failed), ""), sig


@dataclass
class Verdict:
    """One document's outcome: ``reason`` ('' = kept), the text to keep (C4 may have removed
    lines) and every measurement behind the decision."""

    reason: str
    text: str
    signals: dict[str, Any] = field(default_factory=dict)


def evaluate(
    text: str, lang: str, s: dict[str, Any], rule_sets: list[str] | tuple[str, ...]
) -> Verdict:
    """Run the enabled rule sets in datatrove's FineWeb order (Gopher repetition, Gopher quality,
    C4, FineWeb). Every enabled filter is measured, so the signals show all rules; the reason is
    the first failing rule as ``<rule set>:<datatrove's reason>``."""
    cache: dict[str, list[str]] = {}

    def tok(line: str) -> list[str]:  # whitespace never joins lines: text = its lines' tokens
        if line not in cache:
            cache[line] = words_for(line, s)
        return cache[line]

    words = [w for line in text.split("\n") for w in tok(line)]
    n_lines = _n_lines(text)
    n_words = len(words) - sum(map(bool, map(_SYMBOL_ONLY.fullmatch, words)))
    signals: dict[str, Any] = {}
    skipped: list[str] = []
    reason = ""

    def fail(rule_set: str, why: str) -> None:
        nonlocal reason
        if why and not reason:
            reason = f"{rule_set}:{why}"

    if "gopher" in rule_sets:
        top_ngrams = n_words >= (s["top_ngram_min_words"] or 0)
        if not top_ngrams:
            skipped.append("gopher_top_n_grams")
        why, signals["gopher_repetition"] = gopher_repetition(text, words, s, top_ngrams)
        fail("gopher", why)
        line_rules = n_lines >= (s["line_rules_min_lines"] or 0)
        if not line_rules:
            skipped.append("gopher_line_ratios")
        why, signals["gopher_quality"] = gopher_quality(text, words, lang, s, line_rules)
        if signals["gopher_quality"].pop("stop_words_rule", None):
            skipped.append("gopher_stop_words")
        fail("gopher", why)
    out = text
    if "c4" in rule_sets:
        why, out, signals["c4"] = c4_filter(text, s, tok)
        fail("c4", why)
    if "fineweb" in rule_sets:
        if _n_lines(out) >= (s["fineweb_min_lines"] or 0):
            fw_words = words if out == text else [w for ln in out.split("\n") for w in tok(ln)]
            why, signals["fineweb"] = fineweb_quality(out, fw_words, s)
            fail("fineweb", why)
        else:
            skipped.append("fineweb")
    if skipped:
        signals["skipped"] = skipped
    return Verdict(reason, out, signals)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def quality_stage(table: pa.Table, config: GovernanceConfig) -> StageResult:
    """Apply the configured rule sets; failing documents go to the ledger (stage ``quality``) with
    their original text, kept documents carry the text the C4 line filters left. Columns beyond
    the contract pass through untouched."""
    qc: QualityConfig = config.quality
    texts = table.column("text").to_pylist()
    langs = table.column("lang").to_pylist()
    settings_cache: dict[str, dict[str, Any]] = {}
    signals_json: list[str] = []
    new_texts: list[str] = []
    keep = np.ones(len(texts), dtype=bool)
    reasons = [""] * len(texts)
    details: list[dict | None] = [None] * len(texts)
    lines_removed: Counter[str] = Counter()
    chars_removed: Counter[str] = Counter()
    n_words: list[int] = []
    modified = 0
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        s = settings_cache.setdefault(lang, settings_for(lang, config))
        verdict = evaluate(text, lang, s, qc.rule_sets)
        sig = _rounded(verdict.signals)
        signals_json.append(json.dumps(sig, sort_keys=True, ensure_ascii=False))
        gq = sig.get("gopher_quality")
        n_words.append(gq["n_words"] if gq else len(words_for(text, s)))
        if qc.enabled and verdict.reason:
            keep[i], reasons[i], details[i] = False, verdict.reason, sig
            new_texts.append(text)
            continue
        if qc.enabled and verdict.text != text:
            modified += 1
            c4 = sig.get("c4", {})
            lines_removed.update(c4.get("lines_removed", {}))
            chars_removed.update(c4.get("chars_removed", {}))
            new_texts.append(verdict.text)
        else:
            new_texts.append(text)
    names = table.column_names
    table = table.set_column(
        names.index("quality_signals"), "quality_signals", pa.array(signals_json, pa.string())
    )
    table = table.set_column(names.index("text"), "text", pa.array(new_texts, pa.string()))
    kept, rejected = split_by_mask(table, keep, "quality", reasons, details)
    hist, edges = np.histogram(np.log10(np.maximum(n_words, 1)), bins=10) if n_words else ([], [])
    meta = {
        "enabled": qc.enabled,
        "profile": qc.profile,
        "rule_sets": qc.rule_sets,
        "thresholds": {str(lang): settings_cache[lang] for lang in sorted(settings_cache, key=str)},
        "kept_documents_with_lines_removed": modified,
        "c4_lines_removed": dict(sorted(lines_removed.items())),
        "c4_chars_removed": dict(sorted(chars_removed.items())),
        "log10_words_histogram": {
            "counts": list(map(int, hist)),
            "edges": np.round(edges, 2).tolist(),
        },
    }
    return StageResult(kept, rejected, meta)
