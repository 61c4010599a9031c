"""The report's input: per-example prediction rows, normalised, and the ``runs x items`` score
matrices every statistic works on.

* classification rows: ``variant, run_key, method, seed, split, lang, item_id, perturbation,
  severity, gold, logits`` and, where the scorer wrote them, ``key`` (the source message: the
  same item in every language), ``overlap_controlled``, ``protocol`` (``zero_shot`` or
  ``translate_train``) and ``corruption`` (measured share of characters a perturbation
  changed);
* translation rows: ``variant, run_key, method, seed, src_lang, tgt_lang, item_id, source,
  reference, hypothesis``;
* footprints: one row per ``(variant, run_key)`` with ``method, seed, task`` and the trainer's
  footprint fields (``step_times``: the per-step wall times, when recorded).

An example is keyed by ``(lang, item_id)``. Every run of an experiment scores the same
examples, so the scores of one arm form a ``runs x examples`` matrix (examples some run lacks
are dropped: the statistics need them shared) and two arms are compared on the examples both
have. A "seed" is one training run (``run_key``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.calibration import softmax_probs

__all__ = [
    "CLEAN",
    "CLS_COLUMNS",
    "FOOTPRINT_COLUMNS",
    "METHOD_ORDER",
    "MT_COLUMNS",
    "PROTOCOLS",
    "align",
    "align_all",
    "by_lang",
    "checked",
    "lang_means",
    "logits",
    "matrix",
    "method_matrices",
    "ordered",
    "parse_run",
    "prepare",
    "rows_in",
    "select",
]

CLS_COLUMNS = (
    "variant",
    "run_key",
    "method",
    "seed",
    "split",
    "lang",
    "item_id",
    "perturbation",
    "severity",
    "gold",
    "logits",
)
MT_COLUMNS = (
    "variant",
    "run_key",
    "method",
    "seed",
    "src_lang",
    "tgt_lang",
    "item_id",
    "source",
    "reference",
    "hypothesis",
)
FOOTPRINT_COLUMNS = ("variant", "run_key", "method", "seed", "task")
CLEAN = "clean"
# baselines first (the lexical classifier, the untuned base model), then the PEFT methods
METHOD_ORDER = (
    "lexical",
    "untuned",
    "lora",
    "lora_ga",
    "boft",
    "oft",
    "full",
    "hybrid",
    "hybrid_unitary",
)
ZERO_SHOT, TRANSLATE_TRAIN = "zero_shot", "translate_train"
PROTOCOLS = (ZERO_SHOT, TRANSLATE_TRAIN)
_PREFIX = {"mt-": "translation", "tt-": TRANSLATE_TRAIN}


def parse_run(key: str) -> tuple[str, str, str, int]:
    """``"tt-lora-s1"`` -> ``("classification", "translate_train", "lora", 1)``;
    ``"mt-hybrid-s0"`` -> ``("translation", "", "hybrid", 0)``; ``"lexical-s0"`` ->
    ``("classification", "zero_shot", "lexical", 0)``."""
    task, protocol, rest = "classification", ZERO_SHOT, key
    for prefix, what in _PREFIX.items():
        if key.startswith(prefix):
            rest = key.removeprefix(prefix)
            task, protocol = ("translation", "") if what == "translation" else (task, what)
    method, _, seed = rest.rpartition("-s")
    if not method or not seed.isdigit():
        raise ValueError(f"not a run key: {key!r} (expected [mt-|tt-]<method>-s<seed>)")
    return task, protocol, method, int(seed)


def checked(df: pd.DataFrame | None, required: Sequence[str], what: str) -> pd.DataFrame:
    """The frame if it has the contract's columns; an empty frame with them if it is empty."""
    if df is None or len(df) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in required})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lack columns {missing} (have {sorted(df.columns)})")
    return df


_ROW_KEY = ["variant", "run_key", "split", "lang", "item_id", "perturbation", "severity"]
_DERIVED = ("pred", "correct", "brier", "nll", "gold_logp", "confidence")


def _row_scores(logit_rows: pd.Series, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example prediction, correctness, Brier term, NLL, gold-class log-probability and
    top-label confidence (no temperature scaling); rows are grouped by their number of
    classes, so tasks of different sizes can mix."""
    n = len(gold)
    lengths = logit_rows.map(len).to_numpy()
    out = {k: np.zeros(n) for k in ("brier", "nll", "gold_logp", "confidence")}
    out["pred"] = np.zeros(n, np.int64)
    for k in np.unique(lengths):
        idx = np.flatnonzero(lengths == k)
        z = np.vstack(logit_rows.iloc[idx].to_list()).astype(np.float64)
        y = gold[idx]
        if k < 2 or y.min() < 0 or y.max() >= k:
            raise ValueError(f"gold labels must index the {k} logits of their row")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits contain NaN or infinity")
        p = softmax_probs(z)
        pg = np.maximum(p[np.arange(y.size), y], 1e-12)  # floored as calibration's NLL
        out["pred"][idx] = p.argmax(axis=1)
        out["brier"][idx] = np.sum((p - np.eye(k)[y]) ** 2, axis=1)
        out["nll"][idx] = -np.log(pg)
        out["gold_logp"][idx] = np.log(pg)
        out["confidence"][idx] = p.max(axis=1)
    out["correct"] = (out["pred"] == gold).astype(np.float64)
    return out


def prepare(cls: pd.DataFrame | None) -> pd.DataFrame:
    """Normalised classification rows with per-example scores and the optional columns filled
    (``protocol`` from the run key's ``tt-`` prefix when the scorer did not record it, ``key``
    = ``item_id``, ``overlap_controlled`` unknown, ``corruption`` unknown); duplicate rows (a
    file read twice) keep the last copy."""
    df = checked(cls, CLS_COLUMNS, "classification predictions")
    if df.empty:
        extra = ("protocol", "key", "overlap_controlled", "corruption")
        return df.assign(**{c: pd.Series(dtype=float) for c in (*_DERIVED, *extra)})
    if "prepared" in df.attrs:
        return df
    df = df.copy()
    for c in ("variant", "run_key", "method", "split", "lang", "item_id", "perturbation"):
        df[c] = df[c].astype(str)
    df["severity"] = df["severity"].astype(float)
    df["gold"] = df["gold"].astype(np.int64)
    if "protocol" not in df.columns:
        df["protocol"] = [parse_run(k)[1] or ZERO_SHOT for k in df["run_key"]]
    df["protocol"] = df["protocol"].fillna(ZERO_SHOT).astype(str)
    df["key"] = (
        df["key"].where(df["key"].notna(), df["item_id"]) if "key" in df.columns else df["item_id"]
    ).astype(str)
    if "overlap_controlled" not in df.columns:
        df["overlap_controlled"] = pd.NA
    if "corruption" not in df.columns:
        df["corruption"] = np.where(df["perturbation"] == CLEAN, 0.0, np.nan)
    df["corruption"] = pd.to_numeric(df["corruption"], errors="coerce")
    df = df.drop_duplicates(subset=_ROW_KEY, keep="last").reset_index(drop=True)
    df = df.assign(**_row_scores(df["logits"], df["gold"].to_numpy()))
    df.attrs["prepared"] = True
    return df


def select(
    df: pd.DataFrame,
    *,
    variant: str | None = None,
    method: str | None = None,
    split: str = "test",
    clean: bool | None = True,
    protocol: str | None = None,
) -> pd.DataFrame:
    """Rows of one split (and variant, method, protocol); clean only, perturbed only or both."""
    mask = df["split"] == split
    if variant is not None:
        mask &= df["variant"] == variant
    if method is not None:
        mask &= df["method"] == method
    if protocol is not None:
        mask &= df["protocol"] == protocol
    if clean is True:
        mask &= df["perturbation"] == CLEAN
    elif clean is False:
        mask &= df["perturbation"] != CLEAN
    out = df[mask]
    out.attrs = dict(df.attrs)
    return out


def ordered(values: Iterable[str], order: Sequence[str] = METHOD_ORDER) -> list[str]:
    """Known names in their canonical order, then the others sorted."""
    vals = set(values)
    return [v for v in order if v in vals] + sorted(vals - set(order))


def matrix(rows: pd.DataFrame, score: str = "correct") -> pd.DataFrame:
    """Runs x examples table of one per-example score, columns ``(lang, item_id)``; examples
    that some run lacks are dropped (every run must be on the same examples)."""
    if rows.empty:
        return pd.DataFrame()
    m = rows.set_index(["run_key", "lang", "item_id"])[score].unstack(["lang", "item_id"])
    return m.dropna(axis=1).sort_index(axis=1).sort_index(axis=0)


def method_matrices(test: pd.DataFrame, score: str = "correct") -> dict[str, pd.DataFrame]:
    """One runs x examples matrix per method, in the canonical method order."""
    return {m: matrix(test[test["method"] == m], score) for m in ordered(test["method"].unique())}


def align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two arms restricted to the examples both have, in the same column order."""
    if a.empty or b.empty:
        return a.iloc[:, :0], b.iloc[:, :0]
    cols = a.columns.intersection(b.columns).sort_values()
    return a.reindex(columns=cols), b.reindex(columns=cols)


def align_all(mats: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every arm restricted to the examples all of them have."""
    cols = None
    for m in mats.values():
        cols = m.columns if cols is None else cols.intersection(m.columns)
    if cols is None:
        return {}
    cols = cols.sort_values()
    return {k: m.reindex(columns=cols) for k, m in mats.items()}


def by_lang(m: pd.DataFrame) -> dict[str, np.ndarray]:
    langs = m.columns.get_level_values("lang")
    return {lang: m.loc[:, langs == lang].to_numpy() for lang in sorted(set(langs))}


def lang_means(m: pd.DataFrame) -> dict[str, float]:
    return {lang: float(a.mean()) for lang, a in by_lang(m).items()}


def rows_in(rows: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """The rows of the runs and examples that make up ``m``."""
    keys = pd.MultiIndex.from_frame(rows[["lang", "item_id"]])
    return rows[keys.isin(m.columns) & rows["run_key"].isin(m.index)]


def logits(rows: pd.DataFrame) -> np.ndarray:
    return np.vstack(rows["logits"].to_list()).astype(np.float64)
