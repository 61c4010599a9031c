"""Task metrics per language: accuracy, macro-F1, cross-language parity, translation quality
(chrF++ and BLEU through ``sacrebleu``) per direction, directional balance, robustness deltas
and the training footprint.

Everything takes plain sequences or numpy arrays and returns small frozen dataclasses, so a
report asset can call these functions directly and turn the results into table rows with
``dataclasses.asdict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sklearn.metrics import f1_score

__all__ = [
    "ClassificationScores",
    "DirectionBalance",
    "Footprint",
    "Parity",
    "TranslationScores",
    "accuracy",
    "bleu_tokenizer",
    "classification_scores",
    "directional_balance",
    "footprint",
    "macro_f1",
    "parity",
    "per_direction_translation",
    "per_language_classification",
    "robustness_rows",
    "sentence_chrf",
    "translation_scores",
]


# --------------------------------------------------------------------------- classification


def _labels_pair(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray):
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}")
    if t.size == 0:
        raise ValueError("no examples: cannot score an empty set")
    return t, p


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of exact label matches."""
    t, p = _labels_pair(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[int] | None = None,
) -> float:
    """Unweighted mean of per-class F1 (scikit-learn) over the classes that occur.

    A class counts when it is in ``y_true`` or ``y_pred``: a class absent from a small
    per-language sample on both sides says nothing about that language, so it is not averaged
    in as a zero. ``labels`` restricts the classes (pass the task's classes so that an
    unparseable prediction such as ``-1`` is wrong for recall but gets no F1 term of its own).
    """
    t, p = _labels_pair(y_true, y_pred)
    seen = set(t.tolist()) | set(p.tolist())
    use = sorted(seen) if labels is None else [lab for lab in labels if lab in seen]
    if not use:
        raise ValueError(f"none of the labels {list(labels or [])} occurs in y_true or y_pred")
    return float(f1_score(t, p, labels=use, average="macro", zero_division=0))


@dataclass(frozen=True)
class ClassificationScores:
    """Scores of one language (or any group)."""

    n: int
    accuracy: float
    macro_f1: float


def classification_scores(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[int] | None = None,
) -> ClassificationScores:
    """Accuracy and macro-F1 of one group of examples."""
    t, p = _labels_pair(y_true, y_pred)
    return ClassificationScores(
        n=int(t.size), accuracy=accuracy(t, p), macro_f1=macro_f1(t, p, labels)
    )


def per_language_classification(
    langs: Sequence[str],
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[int] | None = None,
) -> dict[str, ClassificationScores]:
    """Scores per language, in sorted language order (macro-F1 as in :func:`macro_f1`)."""
    t, p = _labels_pair(y_true, y_pred)
    lang_arr = np.asarray(langs, dtype=object)
    if lang_arr.shape != t.shape:
        raise ValueError(f"got {lang_arr.shape[0]} language tags for {t.shape[0]} examples")
    out: dict[str, ClassificationScores] = {}
    for lang in sorted(set(lang_arr.tolist())):
        mask = lang_arr == lang
        out[lang] = classification_scores(t[mask], p[mask], labels)
    return out


@dataclass(frozen=True)
class Parity:
    """How evenly a score is spread across languages.

    ``std`` is the population standard deviation (ddof=0): the languages measured are the
    whole set being described, not a sample of a wider population.
    """

    worst_lang: str
    worst: float
    best_lang: str
    best: float
    mean: float
    gap: float  # best - worst
    std: float
    n_langs: int


def parity(scores: Mapping[str, float], higher_is_better: bool = True) -> Parity:
    """Worst language, max - min gap and spread of one score across languages.

    For a loss-like score (ECE, NLL) pass ``higher_is_better=False``: the worst language is
    then the one with the highest value; ``gap`` stays ``max - min`` (non-negative).
    """
    if not scores:
        raise ValueError("parity needs the score of at least one language")
    items = sorted(scores.items())
    values = np.array([float(v) for _, v in items])
    if not np.all(np.isfinite(values)):
        bad = [k for k, v in items if not math.isfinite(float(v))]
        raise ValueError(f"non-finite scores for languages {bad}")
    lo, hi = int(np.argmin(values)), int(np.argmax(values))
    worst, best = (lo, hi) if higher_is_better else (hi, lo)
    return Parity(
        worst_lang=items[worst][0],
        worst=float(values[worst]),
        best_lang=items[best][0],
        best=float(values[best]),
        mean=float(values.mean()),
        gap=float(values[hi] - values[lo]),
        std=float(values.std(ddof=0)),
        n_langs=len(items),
    )


# --------------------------------------------------------------------------- translation

# Languages written without spaces between words: BLEU needs its own segmentation for them
# (chrF++ is character based and needs none). 'zh' is sacrebleu's Chinese tokenizer; 'char'
# splits every character, the usual fallback when MeCab or a SentencePiece model (flores200)
# is not available offline.
_BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char", "lo": "char", "km": "char", "my": "char"}


def bleu_tokenizer(target_lang: str) -> str:
    """sacrebleu tokenizer for BLEU on text in ``target_lang`` (``13a`` unless unsegmented)."""
    return _BLEU_TOKENIZE.get(target_lang.split("_")[0].split("-")[0].lower(), "13a")


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("pass lists of sentences, not a single string")
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no sentences to score")
    for name, seq in (("hypothesis", hyps), ("reference", refs)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{name} {i} is {type(s).__name__}, not str")
    return hyps, refs


@dataclass(frozen=True)
class TranslationScores:
    """Corpus-level chrF++ and BLEU (0-100, sacrebleu) with the signatures that reproduce them."""

    n: int
    chrf_pp: float
    bleu: float
    chrf_signature: str
    bleu_signature: str


def translation_scores(
    hyps: Sequence[str], refs: Sequence[str], target_lang: str = "en"
) -> TranslationScores:
    """Corpus chrF++ (``word_order=2``) and BLEU of one direction, one reference each."""
    hyps, refs = _check_pairs(hyps, refs)
    chrf = CHRF(word_order=2)
    bleu = BLEU(tokenize=bleu_tokenizer(target_lang), effective_order=False)
    c = chrf.corpus_score(hyps, [refs])
    b = bleu.corpus_score(hyps, [refs])
    return TranslationScores(
        n=len(hyps),
        chrf_pp=float(c.score),
        bleu=float(b.score),
        chrf_signature=str(chrf.get_signature()),
        bleu_signature=str(bleu.get_signature()),
    )


def sentence_chrf(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """chrF++ of every sentence, as per-example scores for bootstrap CIs and paired tests.

    Their mean is not the corpus chrF++ (which pools n-gram statistics); tables report the
    corpus score, statistics use these.
    """
    hyps, refs = _check_pairs(hyps, refs)
    chrf = CHRF(word_order=2)
    return np.array([chrf.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)])


def per_direction_translation(
    src_langs: Sequence[str],
    tgt_langs: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
) -> dict[tuple[str, str], TranslationScores]:
    """Scores keyed by ``(source, target)`` direction, from one flat list of examples."""
    hyps, refs = _check_pairs(hyps, refs)
    src, tgt = list(src_langs), list(tgt_langs)
    if not (len(src) == len(tgt) == len(hyps)):
        raise ValueError(
            f"{len(src)} source and {len(tgt)} target tags for {len(hyps)} sentence pairs"
        )
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(src, tgt, strict=True)):
        groups.setdefault(key, []).append(i)
    return {
        key: translation_scores([hyps[i] for i in idx], [refs[i] for i in idx], key[1])
        for key, idx in sorted(groups.items())
    }


@dataclass(frozen=True)
class DirectionBalance:
    """Out-of-pivot versus into-pivot quality for one language (``pivot`` is usually en)."""

    lang: str
    out_of_pivot: float  # pivot -> lang
    into_pivot: float  # lang -> pivot
    difference: float  # out_of_pivot - into_pivot; negative: generating lang is the weak side


def directional_balance(
    scores: Mapping[tuple[str, str], TranslationScores],
    pivot: str = "en",
    metric: str = "chrf_pp",
) -> dict[str, DirectionBalance]:
    """For each language with both ``pivot->xx`` and ``xx->pivot`` scored, the two and their
    difference. Languages with only one direction are left out (they cannot be balanced)."""
    if metric not in ("chrf_pp", "bleu"):
        raise ValueError(f"metric must be 'chrf_pp' or 'bleu', not {metric!r}")
    langs = {t for s, t in scores if s == pivot} & {s for s, t in scores if t == pivot}
    out: dict[str, DirectionBalance] = {}
    for lang in sorted(langs - {pivot}):
        o = float(getattr(scores[(pivot, lang)], metric))
        i = float(getattr(scores[(lang, pivot)], metric))
        out[lang] = DirectionBalance(lang=lang, out_of_pivot=o, into_pivot=i, difference=o - i)
    return out


# --------------------------------------------------------------------------- robustness


def robustness_rows(
    clean: Mapping[str, Mapping[str, float]],
    perturbed: Mapping[tuple[str, str, float], Mapping[str, float]],
) -> list[dict[str, object]]:
    """Long-format rows of a robustness table: one per (language, perturbation, severity,
    metric), with the clean value and ``delta = perturbed - clean``.

    ``clean`` maps language -> metric -> value; ``perturbed`` maps
    ``(language, perturbation, severity)`` -> metric -> value. A negative delta of accuracy or
    chrF is a drop; a positive delta of ECE is a loss of calibration.
    """
    rows: list[dict[str, object]] = []
    for (lang, name, severity), metrics in sorted(perturbed.items()):
        if lang not in clean:
            raise KeyError(f"no clean scores for language {lang!r} (have {sorted(clean)})")
        for metric, value in sorted(metrics.items()):
            if metric not in clean[lang]:
                raise KeyError(f"no clean {metric!r} for language {lang!r}")
            base = float(clean[lang][metric])
            rows.append(
                {
                    "lang": lang,
                    "perturbation": name,
                    "severity": float(severity),
                    "metric": metric,
                    "clean": base,
                    "value": float(value),
                    "delta": float(value) - base,
                }
            )
    return rows


# --------------------------------------------------------------------------- footprint


@dataclass(frozen=True)
class Footprint:
    """Training cost of one run, from the trainer's per-step records."""

    steps: int
    seconds_per_step: float  # median over measured steps (robust to a slow outlier)
    seconds_per_step_mean: float
    tokens_per_second: float  # total tokens / total time over measured steps
    total_seconds: float  # all steps, warm-up included
    peak_memory_bytes: int | None
    trainable_params: int
    total_params: int
    trainable_fraction: float


def footprint(
    step_seconds: Sequence[float],
    tokens_per_step: Sequence[int] | int,
    trainable_params: int,
    total_params: int,
    peak_memory_bytes: int | None = None,
    warmup_steps: int = 0,
) -> Footprint:
    """Summarise per-step wall times and token counts; the first ``warmup_steps`` (allocator
    and kernel warm-up) are excluded from the per-step rates but counted in the total."""
    t = np.asarray(step_seconds, dtype=float)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("step_seconds must be a non-empty 1-D sequence")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("step times must be positive and finite")
    tok = (
        np.full(t.size, tokens_per_step)
        if np.isscalar(tokens_per_step)
        else np.asarray(tokens_per_step, dtype=float)
    )
    if tok.shape != t.shape:
        raise ValueError(f"{tok.size} token counts for {t.size} steps")
    if not 0 <= warmup_steps < t.size:
        raise ValueError(f"warmup_steps must be in [0, {t.size - 1}], got {warmup_steps}")
    if total_params <= 0 or not 0 <= trainable_params <= total_params:
        raise ValueError(
            f"need 0 <= trainable_params ({trainable_params}) <= total_params ({total_params})"
        )
    m, mt = t[warmup_steps:], tok[warmup_steps:]
    return Footprint(
        steps=int(t.size),
        seconds_per_step=float(np.median(m)),
        seconds_per_step_mean=float(m.mean()),
        tokens_per_second=float(mt.sum() / m.sum()),
        total_seconds=float(t.sum()),
        peak_memory_bytes=None if peak_memory_bytes is None else int(peak_memory_bytes),
        trainable_params=int(trainable_params),
        total_params=int(total_params),
        trainable_fraction=float(trainable_params / total_params),
    )
