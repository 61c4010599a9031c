"""Label-free heuristic quality rules: Gopher, C4 and FineWeb rule sets (as datatrove implements
them), configured per language.

Settings are merged in this order: the profile (``web``: the peers' defaults for web pages;
``short``: the demo's default for messages, dialogue lines and paragraphs, where the web minimums
would drop every catalogue message), then ``configs/languages.yaml`` (``default`` and the
language's entry), then ``QualityConfig.overrides``. Stop words come from ``stopwordsiso``.
Every decision stores its measurements in ``quality_signals`` (JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import regex
import stopwordsiso

from .config import GovernanceConfig, QualityConfig
from .contract import StageResult, split_by_mask

PROFILES: dict[str, dict[str, Any]] = {
    "web": {
        # Gopher (datatrove GopherQualityFilter defaults)
        "min_doc_words": 50, "max_doc_words": 100_000, "min_avg_word_length": 3.0,
        "max_avg_word_length": 10.0, "max_symbol_word_ratio": 0.1,
        "max_bullet_lines_ratio": 0.9, "max_ellipsis_lines_ratio": 0.3,
        "max_non_alpha_words_ratio": 0.8, "min_stop_words": 2, "stop_words_min_doc_words": 0,
        "line_rules_min_lines": 1,
        # Gopher repetition
        "max_dup_line_char_frac": 0.2, "max_top_2gram_char_frac": 0.2, "repetition_min_words": 0,
        # C4
        "c4_lorem_ipsum": True, "c4_javascript": True, "c4_curly_bracket": True, "c4_policy": True,
        # FineWeb (datatrove FineWebQualityFilter defaults)
        "fineweb_line_punct_thr": 0.12, "fineweb_short_line_thr": 0.67,
        "fineweb_short_line_length": 30, "fineweb_char_dup_ratio": 0.01,
        "fineweb_new_line_ratio": 0.3, "fineweb_min_lines": 1,
        # encoding damage left after normalisation
        "max_replacement_char_ratio": 0.0,
    },
    "short": {
        "min_doc_words": 2, "max_doc_words": 100_000, "min_avg_word_length": 2.0,
        "max_avg_word_length": 14.0, "max_symbol_word_ratio": 0.1,
        "max_bullet_lines_ratio": 0.9, "max_ellipsis_lines_ratio": 0.3,
        "max_non_alpha_words_ratio": 0.5, "min_stop_words": 2, "stop_words_min_doc_words": 25,
        "line_rules_min_lines": 3,
        "max_dup_line_char_frac": 0.2, "max_top_2gram_char_frac": 0.2, "repetition_min_words": 12,
        "c4_lorem_ipsum": True, "c4_javascript": True, "c4_curly_bracket": False, "c4_policy": True,
        "fineweb_line_punct_thr": 0.12, "fineweb_short_line_thr": 0.67,
        "fineweb_short_line_length": 30, "fineweb_char_dup_ratio": 0.01,
        "fineweb_new_line_ratio": 0.3, "fineweb_min_lines": 3,
        "max_replacement_char_ratio": 0.0,
    },
}  # fmt: skip

RULE_SETS = {
    "gopher": (
        "min_doc_words", "max_doc_words", "min_avg_word_length", "max_avg_word_length",
        "max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
        "max_non_alpha_words_ratio", "min_stop_words", "max_dup_line_char_frac",
        "max_top_2gram_char_frac", "max_replacement_char_ratio",
    ),
    "c4": ("c4_lorem_ipsum", "c4_javascript", "c4_curly_bracket", "c4_policy"),
    "fineweb": (
        "fineweb_line_punct_thr", "fineweb_short_line_thr", "fineweb_char_dup_ratio",
        "fineweb_new_line_ratio",
    ),
}  # fmt: skip

_TOKEN = regex.compile(r"\S+")
_ALPHA = regex.compile(r"\p{L}")
_LETTER = regex.compile(r"\p{L}")
_TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "…", "؟", "।", "॥", "」", "』", ")", ":")
_BULLETS = ("•", "●", "○", "▪", "◦", "*", "-", "–", "‣")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "use cookies")  # fmt: skip


@cache
def stop_words(lang: str) -> frozenset[str]:
    try:
        return frozenset(w.lower() for w in stopwordsiso.stopwords(lang))
    except (KeyError, ValueError):
        return frozenset()


def settings_for(lang: str, config: GovernanceConfig) -> dict[str, Any]:
    merged = dict(PROFILES[config.quality.profile])
    lang_settings = config.language_settings()
    own = lang_settings.get(lang, lang_settings.get("default", {}))
    merged.update({k: v for k, v in own.items() if k in merged or k == "word_unit"})
    merged.update(config.quality.overrides)
    return merged


def words_of(text: str, unit: str) -> list[str]:
    """Whitespace tokens, or single letters for scripts written without spaces."""
    if unit == "char":
        return _LETTER.findall(text)
    return _TOKEN.findall(text)


def measure(text: str, lang: str, settings: dict[str, Any]) -> dict[str, float]:
    """The signals every rule reads (cheap, one pass per kind)."""
    unit = settings.get("word_unit", "space")
    words = words_of(text, unit)
    n_words = len(words)
    lines = [ln for ln in text.split("\n")]
    nonempty = [ln.strip() for ln in lines if ln.strip()]
    n_lines = max(len(nonempty), 1)
    sw = stop_words(lang)
    lowered = [w.lower().strip(".,;:!?\"'()[]«»„“”") for w in words]
    line_counts = Counter(nonempty)
    dup_line_chars = sum(len(ln) * (c - 1) for ln, c in line_counts.items() if c > 1)
    bigrams = Counter(zip(lowered, lowered[1:], strict=False))
    top2 = bigrams.most_common(1)[0] if bigrams else None
    total_chars = max(len(text), 1)
    return {
        "n_words": n_words,
        "avg_word_length": float(np.mean([len(w) for w in words])) if words else 0.0,
        "symbol_word_ratio": (text.count("#") + text.count("...") + text.count("…"))
        / max(n_words, 1),
        "bullet_lines_ratio": sum(ln.startswith(_BULLETS) for ln in nonempty) / n_lines,
        "ellipsis_lines_ratio": sum(ln.endswith(("...", "…")) for ln in nonempty) / n_lines,
        "non_alpha_words_ratio": (
            sum(not _ALPHA.search(w) for w in words) / n_words if n_words else 1.0
        ),
        "stop_words": sum(w in sw for w in lowered) if unit != "char" else -1,
        "dup_line_char_frac": dup_line_chars / total_chars,
        "top_2gram_char_frac": (
            (len(top2[0][0]) + len(top2[0][1])) * top2[1] / total_chars
            if top2 and top2[1] > 1
            else 0.0
        ),
        "n_lines": len(nonempty),
        "line_punct_ratio": sum(ln.endswith(_TERMINAL) for ln in nonempty) / n_lines,
        "short_line_ratio": sum(len(ln) <= settings["fineweb_short_line_length"] for ln in nonempty)
        / n_lines,
        "char_dup_ratio": dup_line_chars / total_chars,
        "new_line_ratio": text.count("\n") / max(n_words, 1),
        "replacement_char_ratio": text.count("\ufffd") / total_chars,
    }


def decide(text: str, sig: dict[str, float], s: dict[str, Any], rule_sets: list[str]) -> str:
    """The first failing rule's name, or '' when the document passes."""
    lower = text.lower()
    checks: list[tuple[str, str, bool]] = [
        ("gopher", "too_few_words", sig["n_words"] < s["min_doc_words"]),
        ("gopher", "too_many_words", sig["n_words"] > s["max_doc_words"]),
        (
            "gopher",
            "replacement_chars",
            sig["replacement_char_ratio"] > s["max_replacement_char_ratio"],
        ),  # noqa: E501
        (
            "gopher",
            "non_alpha_words",
            sig["non_alpha_words_ratio"] > s["max_non_alpha_words_ratio"],
        ),  # noqa: E501
        ("gopher", "symbol_ratio", sig["symbol_word_ratio"] > s["max_symbol_word_ratio"]),
    ]
    if sig["n_lines"] >= s["line_rules_min_lines"]:
        checks += [
            ("gopher", "bullet_lines", sig["bullet_lines_ratio"] > s["max_bullet_lines_ratio"]),
            (
                "gopher",
                "ellipsis_lines",
                sig["ellipsis_lines_ratio"] > s["max_ellipsis_lines_ratio"],
            ),  # noqa: E501
        ]
    if s.get("min_avg_word_length") is not None:
        checks.append(("gopher", "short_words", sig["avg_word_length"] < s["min_avg_word_length"]))
    if s.get("max_avg_word_length") is not None:
        checks.append(("gopher", "long_words", sig["avg_word_length"] > s["max_avg_word_length"]))
    if sig["stop_words"] >= 0 and sig["n_words"] >= s["stop_words_min_doc_words"]:
        checks.append(("gopher", "few_stop_words", sig["stop_words"] < s["min_stop_words"]))
    if sig["n_words"] >= s["repetition_min_words"]:
        checks += [
            ("gopher", "duplicate_lines", sig["dup_line_char_frac"] > s["max_dup_line_char_frac"]),
            ("gopher", "repeated_2gram", sig["top_2gram_char_frac"] > s["max_top_2gram_char_frac"]),
        ]
    checks += [
        ("c4", "lorem_ipsum", s["c4_lorem_ipsum"] and "lorem ipsum" in lower),
        ("c4", "javascript", s["c4_javascript"] and "javascript" in lower),
        ("c4", "curly_bracket", s["c4_curly_bracket"] and "{" in text),
        ("c4", "policy", s["c4_policy"] and any(p in lower for p in _POLICY)),
    ]
    if sig["n_lines"] >= s["fineweb_min_lines"]:
        checks += [
            ("fineweb", "line_punct", sig["line_punct_ratio"] < s["fineweb_line_punct_thr"]),
            ("fineweb", "short_lines", sig["short_line_ratio"] > s["fineweb_short_line_thr"]),
            ("fineweb", "char_dup", sig["char_dup_ratio"] > s["fineweb_char_dup_ratio"]),
            ("fineweb", "new_lines", sig["new_line_ratio"] > s["fineweb_new_line_ratio"]),
        ]
    for rule_set, name, failed in checks:
        if failed and rule_set in rule_sets:
            return f"{rule_set}:{name}"
    return ""


def quality_stage(table: pa.Table, config: GovernanceConfig) -> StageResult:
    """Apply the configured rule sets; failing documents go to the ledger (stage ``quality``)."""
    qc: QualityConfig = config.quality
    texts = table.column("text").to_pylist()
    langs = table.column("lang").to_pylist()
    settings_cache: dict[str, dict[str, Any]] = {}
    signals_json: list[str] = []
    keep = np.ones(len(texts), dtype=bool)
    reasons = [""] * len(texts)
    details: list[dict | None] = [None] * len(texts)
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        s = settings_cache.setdefault(lang, settings_for(lang, config))
        sig = measure(text, lang, s)
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in sig.items()}
        signals_json.append(json.dumps(rounded, sort_keys=True))
        verdict = decide(text, sig, s, qc.rule_sets) if qc.enabled else ""
        if verdict:
            keep[i], reasons[i], details[i] = False, verdict, rounded
    idx = table.column_names.index("quality_signals")
    table = table.set_column(idx, "quality_signals", pa.array(signals_json, pa.string()))
    kept, rejected = split_by_mask(table, keep, "quality", reasons, details)
    n_words = [json.loads(s)["n_words"] for s in signals_json]
    hist, edges = np.histogram(np.log10(np.maximum(n_words, 1)), bins=10) if n_words else ([], [])
    meta = {
        "enabled": qc.enabled,
        "profile": qc.profile,
        "rule_sets": qc.rule_sets,
        "thresholds": {lang: settings_cache[lang] for lang in sorted(settings_cache)},
        "log10_words_histogram": {
            "counts": list(map(int, hist)),
            "edges": np.round(edges, 2).tolist(),
        },  # noqa: E501
    }
    return StageResult(kept, rejected, meta)
