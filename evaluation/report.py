"""The evaluation report: Tables II-VI, the cost-quality frontier, a verdict on each seed claim
and the writer of ``report.md`` with one Markdown, CSV and PNG file per table.

Inputs are the per-example prediction rows written by the evaluation runs, so that every number
here is recomputed from examples, with intervals and paired tests from :mod:`evaluation.stats`:

* classification rows: ``variant, run_key, method, seed, split, lang, item_id, perturbation,
  severity, gold, logits`` (one row per run and example; ``logits`` may be log-probabilities);
* translation rows: ``variant, run_key, method, seed, src_lang, tgt_lang, item_id, source,
  reference, hypothesis`` (test split);
* footprints: one row per ``(variant, run_key)`` with ``method, seed, task`` and the trainer's
  footprint fields.

An example is keyed by ``(lang, item_id)``: ids may repeat across languages. Every run of an
experiment scores the same examples, so the scores of one arm form a ``runs x examples`` array
(examples that some run lacks are left out, because the bootstrap needs them shared) and two
arms are compared on the examples both have. A "seed" below is one training run (``run_key``).

Tables are plain DataFrames with numbers (``x``, ``x_low``, ``x_high`` for an estimate and its
interval); :func:`format_for_markdown` turns them into readable cells. A table with nothing to
show is a one-row frame with a ``note`` column, never an exception. Explanations that belong
under a table travel in ``df.attrs["notes"]``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.calibration import (
    N_BINS,
    CalibrationMetrics,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    scale_logits,
    softmax_probs,
)
from evaluation.metrics import directional_balance, macro_f1, parity, per_direction_translation
from evaluation.plots import pareto_front, plot_bars, plot_frontier
from evaluation.stats import (
    Estimate,
    PairedResult,
    bootstrap_ci,
    compare_per_language,
    paired_bootstrap,
)

__all__ = [
    "CLS_COLUMNS",
    "FOOTPRINT_COLUMNS",
    "MT_COLUMNS",
    "TABLE_TITLES",
    "Additivity",
    "Report",
    "ReportSettings",
    "Verdict",
    "build_report",
    "figure_cost_quality_frontier",
    "figure_robustness",
    "format_for_markdown",
    "governance_additivity",
    "is_note_table",
    "markdown_table",
    "table_accuracy_parity",
    "table_footprint",
    "table_governance_ablation",
    "table_orthographic_robustness",
    "table_translation_calibration",
    "verdicts",
    "write_report",
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
FOOTPRINT_FIELDS = (
    "steps_run",
    "train_wall_s",
    "step_time_s_mean",
    "tokens_per_s",
    "peak_rss_mb",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "setup_s",
)
# footprint field -> ratio column (method / baseline)
_RATIOS = {
    "step_time_s_mean": "step_time_ratio",
    "tokens_per_s": "tokens_per_s_ratio",
    "peak_rss_mb": "peak_rss_ratio",
    "train_wall_s": "train_wall_ratio",
    "trainable_params": "trainable_params_ratio",
}

METHOD_ORDER = ("lora", "lora_ga", "boft", "oft", "hybrid", "hybrid_unitary", "full")
PEFT_BASELINES = ("lora", "lora_ga", "boft", "oft")
VARIANT_ORDER = ("full", "no_lid", "no_dedup", "no_quality", "none", "rehydrate")
ABLATED_STAGES = {"lid": "no_lid", "dedup": "no_dedup", "quality": "no_quality"}
CLEAN = "clean"

TABLE_TITLES = {
    "accuracy_parity": "Table II: accuracy and cross-language parity",
    "translation_calibration": "Table III: translation quality and calibration",
    "orthographic_robustness": "Table IV: robustness to orthographic variants",
    "orthographic_robustness_by_language": "Table IV (per language): accuracy drop",
    "governance_ablation": "Table V: governance ablation",
    "footprint": "Table VI: training footprint",
    "cost_quality_frontier": "Cost-quality frontier",
}


@dataclass(frozen=True)
class ReportSettings:
    """What the report compares and how: the baseline and candidate methods, the governance arm
    of the method tables, the method of the ablation table, and the bootstrap settings."""

    baseline: str = "lora"
    candidate: str = "hybrid"  # the method the seed claims are about
    variant: str = "full"  # governance arm of the method tables
    ablation_method: str = "hybrid"
    confidence: float = 0.95
    n_boot: int = 1000
    ece_bins: int = N_BINS
    seed: int = 0
    pivot: str = "en"  # translation directions are en->xx and xx->en
    extra_candidates: tuple[str, ...] = ("hybrid_unitary",)  # also get verdicts, when run
    max_step_time_ratio: float = 1.15  # "modest overhead", against the baseline
    max_memory_ratio: float = 1.10


# --------------------------------------------------------------------------- input handling


def _checked(df: pd.DataFrame | None, required: Sequence[str], what: str) -> pd.DataFrame:
    """The frame if it has the contract's columns; an empty frame with them if it is empty."""
    if df is None or len(df) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in required})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lack columns {missing} (have {sorted(df.columns)})")
    return df


_ROW_KEY = ["variant", "run_key", "split", "lang", "item_id", "perturbation", "severity"]
_DERIVED = ("pred", "correct", "brier", "nll")


def _row_scores(logits: pd.Series, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example prediction, correctness, Brier term and NLL (without temperature scaling);
    rows are grouped by their number of classes, so tasks of different sizes can mix."""
    n = len(gold)
    lengths = logits.map(len).to_numpy()
    out = {"pred": np.zeros(n, np.int64), "brier": np.zeros(n), "nll": np.zeros(n)}
    for k in np.unique(lengths):
        idx = np.flatnonzero(lengths == k)
        z = np.vstack(logits.iloc[idx].to_list()).astype(np.float64)
        y = gold[idx]
        if k < 2 or y.min() < 0 or y.max() >= k:
            raise ValueError(f"gold labels must index the {k} logits of their row")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits contain NaN or infinity")
        p = softmax_probs(z)
        out["pred"][idx] = p.argmax(axis=1)
        out["brier"][idx] = np.sum((p - np.eye(k)[y]) ** 2, axis=1)
        # floored like calibration.negative_log_likelihood, so the means agree
        out["nll"][idx] = -np.log(np.maximum(p[np.arange(y.size), y], 1e-12))
    out["correct"] = (out["pred"] == gold).astype(np.float64)
    return out


def _prepare(cls: pd.DataFrame | None) -> pd.DataFrame:
    """Normalised classification rows with per-example scores; duplicate rows (a file read
    twice) keep the last copy."""
    df = _checked(cls, CLS_COLUMNS, "classification predictions")
    if df.empty:
        return df.assign(**{c: pd.Series(dtype=float) for c in _DERIVED})
    df = df.copy()
    for c in ("variant", "run_key", "method", "split", "lang", "item_id", "perturbation"):
        df[c] = df[c].astype(str)
    df["severity"] = df["severity"].astype(float)
    df["gold"] = df["gold"].astype(np.int64)
    df = df.drop_duplicates(subset=_ROW_KEY, keep="last").reset_index(drop=True)
    return df.assign(**_row_scores(df["logits"], df["gold"].to_numpy()))


def _select(
    df: pd.DataFrame,
    *,
    variant: str | None = None,
    method: str | None = None,
    split: str = "test",
    clean: bool | None = True,
) -> pd.DataFrame:
    mask = df["split"] == split
    if variant is not None:
        mask &= df["variant"] == variant
    if method is not None:
        mask &= df["method"] == method
    if clean is True:
        mask &= df["perturbation"] == CLEAN
    elif clean is False:
        mask &= df["perturbation"] != CLEAN
    return df[mask]


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    """Known names in their canonical order, then the others sorted."""
    vals = set(values)
    return [v for v in order if v in vals] + sorted(vals - set(order))


def _matrix(rows: pd.DataFrame, score: str = "correct") -> pd.DataFrame:
    """Runs x examples table of one per-example score, columns ``(lang, item_id)``; examples
    that some run lacks are dropped (the bootstrap needs every run on the same examples)."""
    if rows.empty:
        return pd.DataFrame()
    m = rows.set_index(["run_key", "lang", "item_id"])[score].unstack(["lang", "item_id"])
    return m.dropna(axis=1).sort_index(axis=1)


def _align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two arms restricted to the examples both have, in the same column order."""
    if a.empty or b.empty:
        return a.iloc[:, :0], b.iloc[:, :0]
    cols = a.columns.intersection(b.columns).sort_values()
    return a.reindex(columns=cols), b.reindex(columns=cols)


def _by_lang(m: pd.DataFrame) -> dict[str, np.ndarray]:
    langs = m.columns.get_level_values("lang")
    return {lang: m.loc[:, langs == lang].to_numpy() for lang in sorted(set(langs))}


def _lang_means(m: pd.DataFrame) -> dict[str, float]:
    return {lang: float(a.mean()) for lang, a in _by_lang(m).items()}


def _rows_in(rows: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """The rows of the runs and examples that make up ``m``."""
    keys = pd.MultiIndex.from_frame(rows[["lang", "item_id"]])
    return rows[keys.isin(m.columns) & rows["run_key"].isin(m.index)]


def _logits(rows: pd.DataFrame) -> np.ndarray:
    return np.vstack(rows["logits"].to_list()).astype(np.float64)


def _estimate(m: pd.DataFrame, s: ReportSettings) -> Estimate | None:
    if m.empty or m.shape[1] == 0:
        return None
    return bootstrap_ci(m.to_numpy(), s.confidence, s.n_boot, s.seed, shared_examples=True)


def _paired(a: pd.DataFrame, b: pd.DataFrame, s: ReportSettings) -> PairedResult | None:
    """Paired bootstrap of ``a - b`` on the examples both arms have (None if there are none)."""
    a, b = _align(a, b)
    if a.shape[1] == 0:
        return None
    return paired_bootstrap(a.to_numpy(), b.to_numpy(), s.confidence, s.n_boot, s.seed)


def _note_table(note: str) -> pd.DataFrame:
    return pd.DataFrame({"note": [note]})


def is_note_table(df: pd.DataFrame) -> bool:
    """True for the placeholder a table function returns when it has nothing to show."""
    return list(df.columns) == ["note"]


def _with_notes(df: pd.DataFrame, notes: Iterable[str]) -> pd.DataFrame:
    df.attrs["notes"] = [n for n in notes if n]
    return df


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _fmt_paired(r: PairedResult) -> str:
    mark = ", significant" if r.significant else ""
    return f"{r.diff:+.3f} [{r.low:+.3f}, {r.high:+.3f}], p={r.p_value:.3f}{mark}"


# --------------------------------------------------------------------------- Table II


def _macro_f1_mean(rows: pd.DataFrame, m: pd.DataFrame) -> float:
    """Macro-F1 per run on the examples of ``m``, averaged over runs."""
    rows = _rows_in(rows, m)
    n_classes = len(rows["logits"].iloc[0])
    scores = [
        macro_f1(g["gold"].to_numpy(), g["pred"].to_numpy(), labels=range(n_classes))
        for _, g in rows.groupby("run_key")
    ]
    return float(np.mean(scores))


def _vs_baseline(m: pd.DataFrame, base: pd.DataFrame | None, s: ReportSettings) -> dict:
    """Pooled paired test against the baseline and the per-language (Holm) counts."""
    out: dict[str, Any] = {
        "diff_vs_baseline": math.nan,
        "diff_vs_baseline_low": math.nan,
        "diff_vs_baseline_high": math.nan,
        "p_value": math.nan,
        "significant": False,
        "n_langs_better": math.nan,
        "n_langs_worse": math.nan,
    }
    if base is None:
        return out
    a, b = _align(m, base)
    r = _paired(a, b, s)
    if r is None:
        return out
    per = compare_per_language(_by_lang(a), _by_lang(b), s.confidence, s.n_boot, s.seed)
    out.update(
        diff_vs_baseline=r.diff,
        diff_vs_baseline_low=r.low,
        diff_vs_baseline_high=r.high,
        p_value=r.p_value,
        significant=r.significant,
        n_langs_better=sum(x.significant and x.diff > 0 for x in per.values()),
        n_langs_worse=sum(x.significant and x.diff < 0 for x in per.values()),
    )
    return out


def _accuracy_row(
    method: str, m: pd.DataFrame, rows: pd.DataFrame, base: pd.DataFrame | None, s: ReportSettings
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "n_seeds": m.shape[0], "n_items": m.shape[1]}
    est = _estimate(m, s)
    if est is None:
        return row
    langs = _lang_means(m)
    par = parity(langs)
    row.update(
        accuracy=est.mean,
        accuracy_low=est.low,
        accuracy_high=est.high,
        macro_f1=_macro_f1_mean(rows, m),
        **{f"acc_{lang}": v for lang, v in langs.items()},
        worst_lang=par.worst_lang,
        worst_acc=par.worst,
        gap=par.gap,
        std=par.std,
    )
    row.update(_vs_baseline(m, None if method == s.baseline else base, s))
    return row


def _method_mats(test: pd.DataFrame, score: str = "correct") -> dict[str, pd.DataFrame]:
    return {
        m: _matrix(test[test["method"] == m], score)
        for m in _ordered(test["method"].unique(), METHOD_ORDER)
    }


def _order_columns(df: pd.DataFrame, first: Sequence[str], prefix: str) -> pd.DataFrame:
    """``first``, then the ``prefix`` columns sorted, then the rest in their order."""
    head = [c for c in first if c in df.columns]
    mid = sorted(c for c in df.columns if c.startswith(prefix) and c not in head)
    return df[head + mid + [c for c in df.columns if c not in head and c not in mid]]


def table_accuracy_parity(
    cls: pd.DataFrame, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table II: per method (arm ``settings.variant``, clean test), accuracy with a bootstrap
    CI over seeds x examples, macro-F1, per-language accuracy, parity across languages, and the
    paired difference from the baseline (pooled, plus Holm-corrected per-language counts)."""
    s = settings or ReportSettings()
    test = _select(_prepare(cls), variant=s.variant)
    if test.empty:
        return _note_table(f"no clean test predictions for variant {s.variant!r}")
    mats = _method_mats(test)
    base = mats.get(s.baseline)
    rows = [_accuracy_row(m, mats[m], test[test["method"] == m], base, s) for m in mats]
    out = _order_columns(
        pd.DataFrame(rows), ["method", "n_seeds", "n_items", "accuracy", "macro_f1"], "acc_"
    )
    notes = [
        f"Arm {s.variant!r}, clean test split. Accuracy: mean over seeds and examples with a"
        f" {s.confidence:.0%} hierarchical bootstrap CI ({s.n_boot} replicates).",
        f"diff_vs_baseline: paired bootstrap against {s.baseline!r} on shared examples;"
        " n_langs_better/worse: languages significantly better/worse after Holm correction.",
        "" if base is not None else f"Baseline {s.baseline!r} has no runs: no comparisons.",
        *[f"{m}: no example is scored by all its runs." for m, x in mats.items() if x.empty],
    ]
    return _with_notes(out, notes)


# --------------------------------------------------------------------------- Table III


@dataclass(frozen=True)
class _RunCalibration:
    run_key: str
    before: CalibrationMetrics
    after: CalibrationMetrics | None  # None: no dev split to fit a temperature on
    temperatures: dict[str, float]
    no_dev: tuple[str, ...]  # test languages left at T = 1


def _calibrate_run(test: pd.DataFrame, dev: pd.DataFrame, n_bins: int) -> _RunCalibration:
    """Temperature per language fitted on that language's dev rows, applied to its test rows;
    metrics on the run's pooled test set."""
    zs, ys, after, temps, no_dev = [], [], [], {}, []
    for lang, g in test.groupby("lang"):
        d = dev[dev["lang"] == lang]
        if d.empty:
            no_dev.append(lang)
            temps[lang] = 1.0
        else:
            temps[lang] = fit_temperature(_logits(d), d["gold"].to_numpy())
        z = _logits(g)
        zs.append(z)
        ys.append(g["gold"].to_numpy())
        after.append(scale_logits(z, temps[lang]))
    y = np.concatenate(ys)
    return _RunCalibration(
        run_key=str(test["run_key"].iloc[0]),
        before=calibration_metrics(softmax_probs(np.vstack(zs)), y, n_bins),
        after=None
        if len(no_dev) == len(temps)
        else calibration_metrics(np.vstack(after), y, n_bins),
        temperatures=temps,
        no_dev=tuple(no_dev),
    )


def _calibration_runs(df: pd.DataFrame, method: str, s: ReportSettings) -> list[_RunCalibration]:
    test = _select(df, variant=s.variant, method=method)
    dev = _select(df, variant=s.variant, method=method, split="dev")
    return [
        _calibrate_run(g, dev[dev["run_key"] == run], s.ece_bins)
        for run, g in test.groupby("run_key")
    ]


_CAL_FIELDS = ("ece", "mce", "brier", "nll")


def _calibration_summary(runs: list[_RunCalibration]) -> dict[str, float]:
    out: dict[str, float] = {"n_cal_seeds": len(runs)}
    for f in _CAL_FIELDS:
        out[f"{f}_before"] = float(np.mean([getattr(r.before, f) for r in runs]))
        fitted = [getattr(r.after, f) for r in runs if r.after is not None]
        out[f"{f}_after"] = float(np.mean(fitted)) if fitted else math.nan
    temps = [t for r in runs if r.after is not None for t in r.temperatures.values()]
    out["temperature"] = float(np.mean(temps)) if temps else math.nan
    return out


def _translation_run(rows: pd.DataFrame, pivot: str) -> dict[str, float]:
    """Corpus scores per direction, averaged over pivot->xx and over xx->pivot directions."""
    scores = per_direction_translation(
        rows["src_lang"].astype(str).tolist(),
        rows["tgt_lang"].astype(str).tolist(),
        rows["hypothesis"].fillna("").astype(str).tolist(),
        rows["reference"].fillna("").astype(str).tolist(),
    )
    out_of = [v for (a, _), v in scores.items() if a == pivot]
    into = [v for (_, b), v in scores.items() if b == pivot]
    bal = directional_balance(scores, pivot)

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    return {
        f"chrf_{pivot}_xx": mean([v.chrf_pp for v in out_of]),
        f"bleu_{pivot}_xx": mean([v.bleu for v in out_of]),
        f"chrf_xx_{pivot}": mean([v.chrf_pp for v in into]),
        f"bleu_xx_{pivot}": mean([v.bleu for v in into]),
        "chrf_balance": mean([b.difference for b in bal.values()]),
    }


def _translation_summary(rows: pd.DataFrame, pivot: str) -> dict[str, float]:
    cols = [f"chrf_{pivot}_xx", f"bleu_{pivot}_xx", f"chrf_xx_{pivot}", f"bleu_xx_{pivot}"]
    empty = {"n_mt_seeds": 0, **{c: math.nan for c in cols}, "chrf_balance": math.nan}
    if rows.empty:
        return empty
    runs = pd.DataFrame([_translation_run(g, pivot) for _, g in rows.groupby("run_key")])
    return {"n_mt_seeds": len(runs), **runs.mean(skipna=True).to_dict()}


def table_translation_calibration(
    cls: pd.DataFrame, mt: pd.DataFrame | None, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table III: per method, chrF++ and BLEU out of and into the pivot language (averaged over
    directions, corpus scores per run, then over runs) and their balance, next to test ECE,
    MCE, Brier and NLL before and after temperature scaling fitted per language on dev (pooled
    test set per run, then averaged over runs). Translation cells are NaN without runs."""
    s = settings or ReportSettings()
    df = _prepare(cls)
    mtd = _checked(mt, MT_COLUMNS, "translation predictions")
    mtd = mtd.astype({c: str for c in ("variant", "run_key", "method")})
    mtd = mtd[mtd["variant"] == s.variant]
    test = _select(df, variant=s.variant)
    methods = _ordered(set(test["method"]) | set(mtd["method"]), METHOD_ORDER)
    if not methods:
        return _note_table(f"no classification or translation runs for variant {s.variant!r}")
    rows, no_dev = [], set()
    for m in methods:
        row: dict[str, Any] = {
            "method": m,
            **_translation_summary(mtd[mtd["method"] == m], s.pivot),
        }
        runs = _calibration_runs(df, m, s)
        if runs:
            row.update(_calibration_summary(runs))
            no_dev |= {lang for r in runs for lang in r.no_dev}
        rows.append(row)
    notes = [
        "no translation runs" if mtd.empty else "",
        f"Translation: corpus chrF++/BLEU per direction and run, averaged over {s.pivot}->xx and"
        f" xx->{s.pivot} directions; chrf_balance = mean over languages of out-of minus into.",
        f"Calibration: {s.ece_bins}-bin top-label ECE/MCE, Brier, NLL on each run's clean test"
        " set, before and after a temperature fitted per language on that run's dev split;"
        " means over runs.",
        f"Languages without dev rows kept T = 1: {sorted(no_dev)}" if no_dev else "",
    ]
    return _with_notes(pd.DataFrame(rows), notes)


# --------------------------------------------------------------------------- Table IV


def _mean_ece(rows: pd.DataFrame, m: pd.DataFrame, n_bins: int) -> float:
    rows = _rows_in(rows, m)
    return float(
        np.mean(
            [
                expected_calibration_error(softmax_probs(_logits(g)), g["gold"].to_numpy(), n_bins)
                for _, g in rows.groupby("run_key")
            ]
        )
    )


def _cell_pair(
    pert_rows: pd.DataFrame, clean_rows: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Perturbed and clean correctness on the same runs and the same examples."""
    p = _matrix(pert_rows)
    c = _matrix(clean_rows[clean_rows["run_key"].isin(p.index)])
    if p.empty or c.empty:
        return p.iloc[:0, :0], c.iloc[:0, :0]
    runs = p.index.intersection(c.index)
    p, c = _align(p.loc[runs], c.loc[runs])
    return p, c


@dataclass
class _Robustness:
    summary: pd.DataFrame
    by_language: pd.DataFrame
    drops: dict[str, pd.DataFrame]  # method -> runs x (perturbation, severity, lang, item_id)


def _robustness_cell(
    method: str,
    key: tuple[str, float],
    p: pd.DataFrame,
    c: pd.DataFrame,
    rows: tuple[pd.DataFrame, pd.DataFrame],
    s: ReportSettings,
) -> tuple[dict, list[dict]]:
    """One Table IV row (clean vs perturbed on the same runs and items) and its per-language
    rows."""
    pert_rows, clean_rows = rows
    r = paired_bootstrap(c.to_numpy(), p.to_numpy(), s.confidence, s.n_boot, s.seed)
    ece, clean_ece = _mean_ece(pert_rows, p, s.ece_bins), _mean_ece(clean_rows, c, s.ece_bins)
    head = {"method": method, "perturbation": key[0], "severity": key[1]}
    summary = {
        **head,
        "n_seeds": p.shape[0],
        "n_items": p.shape[1],
        "accuracy": r.baseline_mean,
        "clean_accuracy": r.method_mean,
        "drop": r.diff,
        "drop_low": r.low,
        "drop_high": r.high,
        "p_value": r.p_value,
        "significant": r.significant,
        "ece": ece,
        "clean_ece": clean_ece,
        "ece_increase": ece - clean_ece,
    }
    pl, cl = _lang_means(p), _lang_means(c)
    sizes = {lang: a.shape[1] for lang, a in _by_lang(p).items()}
    per_lang = [
        {
            **head,
            "lang": lang,
            "n_items": sizes[lang],
            "accuracy": pl[lang],
            "clean_accuracy": cl[lang],
            "drop": cl[lang] - pl[lang],
        }
        for lang in pl
    ]
    return summary, per_lang


def _robustness(df: pd.DataFrame, s: ReportSettings) -> _Robustness:
    test = _select(df, variant=s.variant, clean=None)
    pert = test[test["perturbation"] != CLEAN]
    clean = test[test["perturbation"] == CLEAN]
    summary, per_lang, drops = [], [], {}
    for method in _ordered(pert["method"].unique(), METHOD_ORDER):
        cells = {}
        clean_m = clean[clean["method"] == method]
        for key, rows in pert[pert["method"] == method].groupby(["perturbation", "severity"]):
            p, c = _cell_pair(rows, clean_m)
            if p.shape[1] == 0:
                continue
            row, lang_rows = _robustness_cell(method, key, p, c, (rows, clean_m), s)
            summary.append(row)
            per_lang.extend(lang_rows)
            cells[key] = c - p
        if cells:
            drops[method] = pd.concat(cells, axis=1, names=["perturbation", "severity"])
    return _Robustness(pd.DataFrame(summary), pd.DataFrame(per_lang), drops)


def _robustness_tables(df: pd.DataFrame, s: ReportSettings) -> _Robustness:
    rob = _robustness(df, s)
    if rob.summary.empty:
        note = f"no perturbed test predictions (with clean counterparts) for variant {s.variant!r}"
        return _Robustness(_note_table(note), _note_table(note), {})
    notes = [
        "accuracy and clean_accuracy on the same runs and items; drop = clean - perturbed with"
        f" a {s.confidence:.0%} paired bootstrap CI; ece_increase = perturbed ECE - clean ECE.",
    ]
    _with_notes(rob.summary, notes)
    _with_notes(rob.by_language, ["Per language: point values, same pairing as Table IV."])
    return rob


def table_orthographic_robustness(
    cls: pd.DataFrame, settings: ReportSettings | None = None, *, by_language: bool = False
) -> pd.DataFrame:
    """Table IV: per method x perturbation x severity, accuracy and ECE on the perturbed test
    rows next to the clean ones of the same runs and items, and the paired drop with its CI.
    ``by_language=True`` gives the long per-language version (for the plot)."""
    rob = _robustness_tables(_prepare(cls), settings or ReportSettings())
    return rob.by_language if by_language else rob.summary


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return _atomic_write(Path(path), buf.getvalue())


def figure_robustness(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Accuracy against severity, one panel per perturbation and one line per method; the point
    at severity 0 is the clean accuracy on the same items."""
    if is_note_table(table) or table.empty:
        return _note_figure("no robustness results", path)
    perts = sorted(table["perturbation"].unique())
    ncols = min(3, len(perts))
    nrows = math.ceil(len(perts) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    methods = _ordered(table["method"].unique(), METHOD_ORDER)
    for ax, name in zip(axes, perts, strict=False):
        sub = table[table["perturbation"] == name]
        for k, m in enumerate(methods):
            g = sub[sub["method"] == m].sort_values("severity")
            if g.empty:
                continue
            xs = [0.0, *g["severity"]]
            ys = [float(g["clean_accuracy"].mean()), *g["accuracy"]]
            ax.plot(xs, ys, "o-", ms=3, color=f"C{k % 10}", label=m)
        ax.set(title=name, xlabel="severity", ylabel="accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[len(perts) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- Table V


@dataclass(frozen=True)
class Additivity:
    """Do the gains of the single governance stages add up to the gain of all of them?

    ``total_gain`` is acc(full) - acc(none); ``gains[X]`` is acc(full) - acc(no_X), each a
    paired bootstrap on the examples that every present arm shares. ``status`` is "add up"
    when the sum of the gains lies inside the CI of the total gain and that CI excludes 0;
    "inconclusive" when the sum lies inside a CI that includes 0 (the total is not told apart
    from zero, so the check has no power) or when an arm is missing; "do not add up" when the
    sum lies outside the CI. The sum's own uncertainty is not propagated: this is a check of
    the point sum against the total's interval, as the design asks.
    """

    status: str
    sentence: str
    total_gain: PairedResult | None
    gains: dict[str, PairedResult]
    sum_of_gains: float
    missing: tuple[str, ...]
    rehydrate: PairedResult | None  # acc(rehydrate) - acc(full)


def _ablation_mats(df: pd.DataFrame, s: ReportSettings) -> dict[str, pd.DataFrame]:
    test = _select(df, method=s.ablation_method)
    mats = {v: _matrix(test[test["variant"] == v]) for v in test["variant"].unique()}
    return {v: mats[v] for v in _ordered(mats, VARIANT_ORDER) if mats[v].shape[1] > 0}


def _common(mats: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    cols = None
    for m in mats.values():
        cols = m.columns if cols is None else cols.intersection(m.columns)
    cols = cols.sort_values() if cols is not None else None
    return {v: m.reindex(columns=cols) for v, m in mats.items()}


def _additivity_sentence(total: PairedResult, gains: dict[str, PairedResult]) -> tuple[str, str]:
    total_sum = sum(g.diff for g in gains.values())
    parts = ", ".join(f"{k} {g.diff:+.3f}" for k, g in gains.items())
    head = (
        f"Total governance gain acc(full) - acc(none) = {total.diff:+.3f}"
        f" [{total.low:+.3f}, {total.high:+.3f}]; individual gains {parts} sum to"
        f" {total_sum:+.3f}"
    )
    if total.low <= total_sum <= total.high:
        if total.low <= 0 <= total.high:
            return "inconclusive", (
                f"{head}, inside the CI of the total, but that CI includes 0: too wide to tell"
                " whether the gains add up (inconclusive)."
            )
        return "add up", f"{head}, inside the CI of the total: the gains add up."
    # leave-one-out gains: a sum above the total means each stage is worth more with the others
    # in place (complementary); below it, stages cover for each other (overlapping)
    side = (
        "above the CI of the total (complementary stages: each is worth more with the others)"
        if total_sum > total.high
        else "below the CI of the total (overlapping stages: each covers part of another's work)"
    )
    return "do not add up", f"{head}, {side}: the gains do not add up."


def _additivity(mats: Mapping[str, pd.DataFrame], s: ReportSettings) -> Additivity:
    needed = ["full", "none", *ABLATED_STAGES.values()]
    missing = tuple(v for v in needed if v not in mats)
    aligned = _common({v: m for v, m in mats.items() if v in needed})
    rehydrate = (
        _paired(mats["rehydrate"], mats["full"], s)
        if "rehydrate" in mats and "full" in mats
        else None
    )
    full = aligned.get("full")
    gains = {
        stage: r
        for stage, arm in ABLATED_STAGES.items()
        if full is not None and arm in aligned and (r := _paired(full, aligned[arm], s))
    }
    total = _paired(full, aligned["none"], s) if full is not None and "none" in aligned else None
    sum_gains = float(sum(g.diff for g in gains.values())) if gains else math.nan
    if missing or total is None:
        have = "; ".join(
            ([f"total gain {_fmt_paired(total)}"] if total else [])
            + [f"gain of {k} {_fmt_paired(g)}" for k, g in gains.items()]
        )
        status = "inconclusive"
        sentence = (
            f"Arms not run for {s.ablation_method!r}: {', '.join(missing) or 'none shared'};"
            f" additivity not measured (inconclusive). {have + '.' if have else ''}"
        ).strip()
    else:
        status, sentence = _additivity_sentence(total, gains)
    if rehydrate is not None:
        sentence += f" rehydrate vs full: {_fmt_paired(rehydrate)}."
    return Additivity(status, sentence, total, gains, sum_gains, missing, rehydrate)


def governance_additivity(cls: pd.DataFrame, settings: ReportSettings | None = None) -> Additivity:
    """The additivity summary of Table V (see :class:`Additivity` for the rule)."""
    s = settings or ReportSettings()
    return _additivity(_ablation_mats(_prepare(cls), s), s)


def _ablation_row(v: str, m: pd.DataFrame, full: pd.DataFrame | None, s: ReportSettings) -> dict:
    est = _estimate(m, s)
    row: dict[str, Any] = {
        "variant": v,
        "n_seeds": m.shape[0],
        "n_items": m.shape[1],
        "accuracy": est.mean,
        "accuracy_low": est.low,
        "accuracy_high": est.high,
        **{f"acc_{lang}": x for lang, x in _lang_means(m).items()},
    }
    r = _paired(m, full, s) if full is not None and v != "full" else None
    row.update(
        diff_vs_full=r.diff if r else math.nan,
        diff_vs_full_low=r.low if r else math.nan,
        diff_vs_full_high=r.high if r else math.nan,
        p_value=r.p_value if r else math.nan,
        significant=bool(r.significant) if r else False,
    )
    return row


def table_governance_ablation(
    cls: pd.DataFrame, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table V: per governance arm of ``settings.ablation_method`` (clean test), accuracy with
    its CI, per-language accuracy and the paired difference from ``full``; the additivity
    sentence (:class:`Additivity`) is in ``attrs["notes"]``."""
    s = settings or ReportSettings()
    mats = _ablation_mats(_prepare(cls), s)
    if not mats:
        return _note_table(f"no clean test predictions for method {s.ablation_method!r}")
    full = mats.get("full")
    out = _order_columns(
        pd.DataFrame([_ablation_row(v, m, full, s) for v, m in mats.items()]),
        ["variant", "n_seeds", "n_items", "accuracy"],
        "acc_",
    )
    add = _additivity(mats, s)
    notes = [
        f"Method {s.ablation_method!r}; diff_vs_full = acc(arm) - acc(full), paired bootstrap"
        " on shared examples (negative: removing that stage costs accuracy).",
        add.sentence,
    ]
    return _with_notes(out, notes)


# --------------------------------------------------------------------------- Table VI


def _footprint_runs(footprints: pd.DataFrame | None, s: ReportSettings) -> pd.DataFrame:
    fp = _checked(footprints, FOOTPRINT_COLUMNS, "footprints")
    fp = fp[(fp["task"].astype(str) == "classification") & (fp["variant"].astype(str) == s.variant)]
    fp = fp.assign(method=fp["method"].astype(str))
    for c in FOOTPRINT_FIELDS:
        fp = fp.assign(**{c: pd.to_numeric(fp[c], errors="coerce") if c in fp else math.nan})
    return fp


def table_footprint(
    footprints: pd.DataFrame | None, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table VI: per method (classification runs of ``settings.variant``), the mean over runs
    of step time, tokens/s, peak RSS, training wall time and trainable parameters, with each
    one's ratio to the baseline's mean."""
    s = settings or ReportSettings()
    fp = _footprint_runs(footprints, s)
    if fp.empty:
        return _note_table(f"no classification footprints for variant {s.variant!r}")
    g = fp.groupby("method")
    out = g[list(FOOTPRINT_FIELDS)].mean()
    out.insert(0, "n_runs", g["run_key"].nunique())
    out = out.reindex(_ordered(out.index, METHOD_ORDER))
    base = out.loc[s.baseline] if s.baseline in out.index else None
    for col, ratio in _RATIOS.items():
        out[ratio] = out[col] / base[col] if base is not None else math.nan
    notes = [
        f"Means over runs; ratios are method / {s.baseline!r}"
        + ("" if base is not None else f" (no {s.baseline!r} runs: ratios n/a)")
        + ". peak_rss_mb is the process peak resident memory."
    ]
    return _with_notes(out.reset_index(names="method"), notes)


# --------------------------------------------------------------------------- frontier


def figure_cost_quality_frontier(
    cls: pd.DataFrame,
    footprints: pd.DataFrame | None,
    settings: ReportSettings | None = None,
    path: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """One point per method: mean training wall time (and trainable parameters) against clean
    test accuracy with its CI; ``on_front`` marks the Pareto-optimal methods (lower cost,
    higher accuracy), ``on_front_params`` the same with parameters as the cost. With ``path``
    the figure is written there and the parameter version next to it (``*_params.png``)."""
    s = settings or ReportSettings()
    acc = table_accuracy_parity(cls, s)
    fp = table_footprint(footprints, s)
    if is_note_table(acc) or is_note_table(fp):
        return _note_table("cost-quality frontier needs both accuracy results and footprints")
    pts = acc.reindex(columns=["method", "accuracy", "accuracy_low", "accuracy_high"]).merge(
        fp.reindex(columns=["method", "train_wall_s", "trainable_params", "trainable_pct"]),
        on="method",
    )
    pts = pts.dropna(subset=["accuracy", "train_wall_s"]).reset_index(drop=True)
    if pts.empty:
        return _note_table("no method has both an accuracy and a training time")
    front = set(pareto_front(pts[["train_wall_s", "accuracy"]].to_numpy()))
    pts["on_front"] = [i in front for i in range(len(pts))]
    with_params = pts.index[pts["trainable_params"].notna()]
    cost_p = pts.loc[with_params, ["trainable_params", "accuracy"]].to_numpy()
    front_p = {with_params[j] for j in pareto_front(cost_p)}
    pts["on_front_params"] = [i in front_p for i in pts.index]
    paths = _draw_frontier(pts, path) if path is not None else []
    pts.attrs["figures"] = [str(p) for p in paths]
    notes = ["Pareto front: no other method is both cheaper and more accurate (point values)."]
    return _with_notes(pts, notes)


def _draw_frontier(pts: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    def point(r: pd.Series, cost: str) -> tuple[float, tuple[float, float, float]]:
        return float(r[cost]), (r["accuracy"], r["accuracy_low"], r["accuracy_high"])

    path = Path(path)
    out = [
        plot_frontier(
            {r["method"]: point(r, "train_wall_s") for _, r in pts.iterrows()},
            path,
            xlabel="mean training wall time (s)",
        )
    ]
    with_params = pts.dropna(subset=["trainable_params"])
    if not with_params.empty:
        out.append(
            plot_frontier(
                {r["method"]: point(r, "trainable_params") for _, r in with_params.iterrows()},
                path.with_name(f"{path.stem}_params.png"),
                xlabel="trainable parameters",
                log_x=True,
            )
        )
    return out


# --------------------------------------------------------------------------- verdicts

HOLDS, NOT_HOLDS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """One seed claim, its verdict and the numbers behind it (one sentence)."""

    claim: str  # short key: accuracy, calibration, parity, robustness, governance, overhead
    statement: str
    verdict: str  # "holds", "does not hold" or "inconclusive"
    evidence: str
    candidate: str
    measured: bool = True

    @property
    def label(self) -> str:
        """The verdict as printed: "inconclusive (not measured: ...)" when data is missing."""
        return self.verdict if self.measured else f"{self.verdict} ({self.evidence})"


def _not_measured(claim: str, statement: str, cand: str, what: str) -> Verdict:
    return Verdict(claim, statement, INCONCLUSIVE, f"not measured: {what}", cand, measured=False)


def _verdict_accuracy(mats: dict[str, pd.DataFrame], c: str, s: ReportSettings) -> Verdict:
    """Holds when the candidate is significantly more accurate than every PEFT baseline that
    was run (pooled paired bootstrap); does not hold when, against at least one of them, the
    CI of the difference excludes an improvement (upper bound <= 0); else inconclusive. Two
    equally accurate methods usually come out inconclusive, not "does not hold": the bootstrap
    resamples each arm's seeds independently, so the CI of a zero difference is not [0, 0]."""
    statement = f"{c} beats the PEFT baselines on accuracy"
    bases = [b for b in PEFT_BASELINES if b != c and b in mats and not mats[b].empty]
    if c not in mats or mats[c].empty or not bases:
        what = f"no {c} runs" if c not in mats or mats[c].empty else "no PEFT baseline runs"
        return _not_measured("accuracy", statement, c, what)
    res = {b: r for b in bases if (r := _paired(mats[c], mats[b], s)) is not None}
    if not res:
        return _not_measured("accuracy", statement, c, "no examples shared with the baselines")
    if all(r.significant and r.diff > 0 for r in res.values()):
        verdict = HOLDS
    elif any(r.high <= 0 for r in res.values()):
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    absent = [b for b in PEFT_BASELINES if b != c and b not in res]
    evidence = "; ".join(f"vs {b}: {_fmt_paired(r)}" for b, r in res.items())
    evidence += f" (not run: {', '.join(absent)})" if absent else ""
    return Verdict("accuracy", statement, verdict, f"accuracy difference {evidence}.", c)


def _verdict_calibration(df: pd.DataFrame, c: str, s: ReportSettings) -> Verdict:
    """Paired bootstrap of the per-example multi-class Brier score before temperature scaling
    (the model's own calibration; temperature scaling is a post-hoc fix open to any method).
    Holds when the candidate's Brier is significantly lower and its ECE lower; does not hold
    when the CI of the Brier difference excludes an improvement (lower bound >= 0); else
    inconclusive. Brier also rewards accuracy: the ECE condition keeps it honest."""
    statement = f"{c} improves calibration over {s.baseline}"
    test = _select(df, variant=s.variant)
    arms = {m: _matrix(test[test["method"] == m], "brier") for m in (c, s.baseline)}
    r = _paired(arms[c], arms[s.baseline], s)
    if r is None:
        return _not_measured(
            "calibration", statement, c, f"no shared test rows of {c} and {s.baseline}"
        )
    cal = {m: _calibration_summary(_calibration_runs(df, m, s)) for m in (c, s.baseline)}
    ece_c, ece_b = cal[c]["ece_before"], cal[s.baseline]["ece_before"]
    if r.significant and r.diff < 0 and ece_c < ece_b:
        verdict = HOLDS
    elif r.low >= 0:
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    evidence = (
        f"per-example Brier (before temperature scaling) {c} - {s.baseline} = {_fmt_paired(r)};"
        f" ECE before {_f(ece_c)} vs {_f(ece_b)}, after"
        f" {_f(cal[c]['ece_after'])} vs {_f(cal[s.baseline]['ece_after'])}."
    )
    return Verdict("calibration", statement, verdict, evidence, c)


def _verdict_parity(mats: dict[str, pd.DataFrame], c: str, s: ReportSettings) -> Verdict:
    """On the examples both share: holds when no language is significantly worse than the
    baseline (paired, Holm) and both the worst-language accuracy and the max-min gap are no
    worse than the baseline's (a "not shown worse" reading, without a margin); does not hold
    when some language is significantly worse and the worst language or the gap is worse;
    else inconclusive."""
    statement = f"{c} keeps cross-language parity (worst language and gap vs {s.baseline})"
    if c not in mats or s.baseline not in mats:
        return _not_measured("parity", statement, c, f"need runs of {c} and {s.baseline}")
    a, b = _align(mats[c], mats[s.baseline])
    if a.shape[1] == 0:
        return _not_measured("parity", statement, c, "no shared examples")
    pa, pb = parity(_lang_means(a)), parity(_lang_means(b))
    per = compare_per_language(_by_lang(a), _by_lang(b), s.confidence, s.n_boot, s.seed)
    worse = [lang for lang, r in per.items() if r.significant and r.diff < 0]
    not_worse = pa.worst >= pb.worst and pa.gap <= pb.gap
    if not worse and not_worse:
        verdict = HOLDS
    elif worse and not not_worse:
        verdict = NOT_HOLDS
    else:
        verdict = INCONCLUSIVE
    evidence = (
        f"worst language {pa.worst_lang} {pa.worst:.3f} vs {pb.worst_lang} {pb.worst:.3f},"
        f" gap {pa.gap:.3f} vs {pb.gap:.3f}; significantly worse (Holm) in"
        f" {len(worse)}/{len(per)} languages{': ' + ', '.join(worse) if worse else ''}."
    )
    return Verdict("parity", statement, verdict, evidence, c)


def _verdict_robustness(drops: dict[str, pd.DataFrame], c: str, s: ReportSettings) -> Verdict:
    """Paired bootstrap of the per-example drop (clean minus perturbed correctness of the same
    run and item) over every perturbation cell both methods have: holds when the candidate's
    mean drop is significantly smaller; does not hold when the CI excludes a smaller drop
    (lower bound >= 0); else inconclusive."""
    statement = f"{c} is more robust to orthographic variants than {s.baseline}"
    if c not in drops or s.baseline not in drops:
        return _not_measured(
            "robustness", statement, c, f"no perturbed rows of {c} or {s.baseline}"
        )
    dc, db = (drops[m].dropna(axis=1) for m in (c, s.baseline))
    r = _paired(dc, db, s)
    if r is None:
        return _not_measured("robustness", statement, c, "no perturbed items shared by all runs")
    verdict = HOLDS if r.significant and r.diff < 0 else NOT_HOLDS if r.low >= 0 else INCONCLUSIVE
    evidence = (
        f"mean accuracy drop {r.method_mean:.3f} ({c}) vs {r.baseline_mean:.3f} ({s.baseline}),"
        f" difference {_fmt_paired(r)} over {r.n_examples} perturbed items"
        f" ({r.n_seeds_method} and {r.n_seeds_baseline} seeds)."
    )
    return Verdict("robustness", statement, verdict, evidence, c)


def _verdict_governance(add: Additivity, c: str, s: ReportSettings) -> Verdict:
    statement = f"the governance gains add up ({s.ablation_method})"
    verdict = {"add up": HOLDS, "do not add up": NOT_HOLDS}.get(add.status, INCONCLUSIVE)
    if add.missing or add.total_gain is None:
        missing = ", ".join(add.missing) or "no shared examples"
        return _not_measured("governance", statement, c, f"arms not run: {missing}")
    return Verdict("governance", statement, verdict, add.sentence, c)


def _verdict_overhead(fp: pd.DataFrame, c: str, s: ReportSettings) -> Verdict:
    """Holds when the candidate's mean step time is within ``max_step_time_ratio`` and its peak
    memory within ``max_memory_ratio`` of the baseline's; does not hold otherwise. Point
    ratios of means over runs: no interval."""
    statement = (
        f"{c}'s overhead is modest (step time <= {s.max_step_time_ratio:.2f}x and peak memory"
        f" <= {s.max_memory_ratio:.2f}x of {s.baseline})"
    )
    if is_note_table(fp) or not {c, s.baseline} <= set(fp["method"]):
        return _not_measured("overhead", statement, c, f"no footprints of {c} and {s.baseline}")
    row = fp.set_index("method").loc[c]
    step, mem = row["step_time_ratio"], row["peak_rss_ratio"]
    if not (math.isfinite(step) and math.isfinite(mem)):
        return _not_measured("overhead", statement, c, "step time or peak memory missing")
    ok = step <= s.max_step_time_ratio and mem <= s.max_memory_ratio
    evidence = (
        f"step time {step:.2f}x and peak RSS {mem:.2f}x of {s.baseline}"
        f" (means over {int(row['n_runs'])} runs of {c})."
    )
    return Verdict("overhead", statement, HOLDS if ok else NOT_HOLDS, evidence, c)


def verdicts(
    cls: pd.DataFrame,
    footprints: pd.DataFrame | None,
    settings: ReportSettings | None = None,
    *,
    candidate: str | None = None,
    additivity: Additivity | None = None,
) -> list[Verdict]:
    """A verdict on each seed claim about ``candidate`` (default ``settings.candidate``), in the
    order accuracy, calibration, parity, robustness, governance, overhead. Each rule is in
    the docstring of its ``_verdict_*`` function; missing data gives "inconclusive (not
    measured: ...)"."""
    s = settings or ReportSettings()
    c = candidate or s.candidate
    df = _prepare(cls)
    mats = {m: x for m, x in _method_mats(_select(df, variant=s.variant)).items() if not x.empty}
    add = additivity or _additivity(_ablation_mats(df, s), s)
    return [
        _verdict_accuracy(mats, c, s),
        _verdict_calibration(df, c, s),
        _verdict_parity(mats, c, s),
        _verdict_robustness(_robustness(df, s).drops, c, s),
        _verdict_governance(add, c, s),
        _verdict_overhead(table_footprint(footprints, s), c, s),
    ]


# --------------------------------------------------------------------------- formatting

_INT_PREFIXES = ("n_", "steps_", "trainable_params", "total_params")
_SIGNED_PREFIXES = ("diff", "drop", "ece_increase", "chrf_balance")


def _cell(x: Any, col: str) -> str:
    if x is None or (isinstance(x, float | np.floating) and math.isnan(x)):
        return "—"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer) or (
        isinstance(x, float | np.floating)
        and col.startswith(_INT_PREFIXES)
        and not col.endswith("_ratio")
        and float(x).is_integer()
    ):
        return f"{int(x):,}"
    if isinstance(x, float | np.floating):
        v = float(x)
        if col.startswith(_SIGNED_PREFIXES):
            return f"{v:+.3f}"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def format_for_markdown(df: pd.DataFrame) -> pd.DataFrame:
    """Readable cells: ``x``, ``x_low``, ``x_high`` become "0.512 [0.470, 0.550]", accuracies
    and rates 3 decimals, large numbers with separators, booleans yes/no, missing values "—"."""
    out = {}
    for col in df.columns:
        if col.endswith(("_low", "_high")) and col.rsplit("_", 1)[0] in df.columns:
            continue
        cells = [_cell(v, col) for v in df[col]]
        if f"{col}_low" in df.columns and f"{col}_high" in df.columns:
            cells = [
                v if v == "—" else f"{v} [{_cell(lo, col)}, {_cell(hi, col)}]"
                for v, lo, hi in zip(cells, df[f"{col}_low"], df[f"{col}_high"], strict=True)
            ]
        out[col] = cells
    return pd.DataFrame(out, columns=list(out))


def _own_markdown(cells: pd.DataFrame) -> str:
    head = [str(c) for c in cells.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in cells.itertuples(index=False)]
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame) -> str:
    """A Markdown table of the formatted cells (``tabulate`` when installed, else a plain
    pipe table)."""
    cells = format_for_markdown(df)
    try:
        return cells.to_markdown(index=False, disable_numparse=True)
    except ImportError:  # tabulate is optional
        return _own_markdown(cells)


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes | str) -> Path:
    """Write through a temporary file in the same folder, then rename: no half files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _note_figure(text: str, path: str | os.PathLike[str]) -> Path:
    fig = Figure(figsize=(5, 1.5))
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)
    return _save_figure(fig, path)


def _ci(r: pd.Series, col: str) -> tuple[float, float, float]:
    return float(r[col]), float(r[f"{col}_low"]), float(r[f"{col}_high"])


def _finite_rows(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df[pd.to_numeric(df[col], errors="coerce").notna()] if col in df else df.iloc[:0]


def _plot_ci_bars(df: pd.DataFrame, label: str, col: str, path: Path, title: str) -> Path:
    rows = _finite_rows(df, col)
    if rows.empty:
        return _note_figure(f"{title}: no values", path)
    return plot_bars({r[label]: _ci(r, col) for _, r in rows.iterrows()}, path, col, title)


def _plot_grouped(df: pd.DataFrame, label: str, cols: Mapping[str, str], path: Path, title: str):
    data = {
        str(r[label]): {name: float(r[c]) for name, c in cols.items() if pd.notna(r.get(c))}
        for _, r in df.iterrows()
    }
    data = {k: v for k, v in data.items() if v}
    if not data:
        return _note_figure(f"{title}: no values", path)
    return plot_bars(data, path, ylabel="", title=title)


def _plot_translation_calibration(df: pd.DataFrame, path: Path) -> Path:
    cols = {"ECE before": "ece_before", "ECE after": "ece_after"}
    return _plot_grouped(df, "method", cols, path, "Test ECE before/after temperature scaling")


def _plot_robustness_lang(df: pd.DataFrame, path: Path) -> Path:
    mean = df.groupby(["lang", "method"])["drop"].mean()
    data = {lang: mean.loc[lang].to_dict() for lang in mean.index.get_level_values(0).unique()}
    return plot_bars(data, path, ylabel="mean accuracy drop", title="Drop per language")


def _plot_footprint(df: pd.DataFrame, path: Path) -> Path:
    cols = {
        "step time": "step_time_ratio",
        "peak RSS": "peak_rss_ratio",
        "tokens/s": "tokens_per_s_ratio",
    }
    if df.reindex(columns=list(cols.values())).notna().any().any():
        return _plot_grouped(df, "method", cols, path, "Footprint relative to the baseline")
    return _plot_grouped(df, "method", {"s/step": "step_time_s_mean"}, path, "Step time (s)")


def _plot_frontier_table(df: pd.DataFrame, path: Path) -> Path:
    pts = {r["method"]: (float(r["train_wall_s"]), _ci(r, "accuracy")) for _, r in df.iterrows()}
    return plot_frontier(pts, path, xlabel="mean training wall time (s)")


def _plot_generic(df: pd.DataFrame, path: Path) -> Path:
    num = [c for c in df.columns[1:] if pd.api.types.is_numeric_dtype(df[c])]
    if not num or df.empty:
        return _note_figure("no numeric column to plot", path)
    label, col = df.columns[0], num[0]
    rows = _finite_rows(df, col)
    return plot_bars({str(r[label]): float(r[col]) for _, r in rows.iterrows()}, path, col)


_PLOTTERS: dict[str, Callable[[pd.DataFrame, Path], Path]] = {
    "accuracy_parity": lambda df, p: _plot_ci_bars(df, "method", "accuracy", p, "Accuracy"),
    "translation_calibration": _plot_translation_calibration,
    "orthographic_robustness": figure_robustness,
    "orthographic_robustness_by_language": _plot_robustness_lang,
    "governance_ablation": lambda df, p: _plot_ci_bars(
        df, "variant", "accuracy", p, "Accuracy per governance arm"
    ),
    "footprint": _plot_footprint,
    "cost_quality_frontier": _plot_frontier_table,
}


def _plot_table(name: str, df: pd.DataFrame, path: Path) -> Path:
    if is_note_table(df) or df.empty:
        return _note_figure(str(df["note"].iloc[0]) if is_note_table(df) else "empty", path)
    return _PLOTTERS.get(name, _plot_generic)(df, path)


def _header_md(header: Mapping[str, Any]) -> list[str]:
    h = dict(header)
    date = h.pop("date", None) or datetime.now(UTC).isoformat(timespec="seconds")
    config = h.pop("config", None)
    lines = [f"# Evaluation report: {h.pop('experiment', 'unnamed experiment')}", ""]
    lines += [f"- **date**: {date}"] + [f"- **{k}**: {v}" for k, v in h.items()]
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config, indent=2, default=str)
        lines += ["", "**config**:", "", "```", text, "```"]
    return lines


def _table_md(name: str, df: pd.DataFrame) -> list[str]:
    lines = ["", f"## {TABLE_TITLES.get(name, name)}", ""]
    lines += [f"- {n}" for n in df.attrs.get("notes", [])]
    lines += ["", markdown_table(df), "", f"![{name}]({name}.png) ([CSV]({name}.csv))"]
    return lines


def _verdicts_md(vs: Sequence[Verdict]) -> list[str]:
    lines = ["", "## Verdicts", ""]
    if not vs:
        return [*lines, "No claims were assessed."]
    for v in vs:
        lines.append(f"- **{v.statement}**: {v.label}." + (f" {v.evidence}" if v.measured else ""))
    return lines


def write_report(
    out_dir: str | os.PathLike[str],
    tables: Mapping[str, pd.DataFrame],
    figures: Mapping[str, str | os.PathLike[str]] | None,
    verdicts: Sequence[Verdict],
    header: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.png`` for each table and ``report.md``
    (header, tables with notes, figure links, verdicts), each atomically. A figure whose key is
    a table name serves as that table's PNG (copied if it lies elsewhere); other figures are
    linked. Returns the written paths by name (``<name>.md`` etc. and ``report``)."""
    out = Path(out_dir)
    figures = {k: Path(v) for k, v in (figures or {}).items()}
    paths: dict[str, Path] = {}
    body = _header_md(header or {})
    for name, df in tables.items():
        paths[f"{name}.md"] = _atomic_write(out / f"{name}.md", markdown_table(df) + "\n")
        paths[f"{name}.csv"] = _atomic_write(out / f"{name}.csv", df.to_csv(index=False))
        png = out / f"{name}.png"
        if name in figures and figures[name].is_file():
            if figures[name].resolve() != png.resolve():
                _atomic_write(png, figures[name].read_bytes())
        else:
            _plot_table(name, df, png)
        paths[f"{name}.png"] = png
        body += _table_md(name, df)
    extra = {k: p for k, p in figures.items() if k not in tables}
    if extra:
        body += ["", "## Figures", ""]
        body += [f"- [{k}]({os.path.relpath(p, out)})" for k, p in extra.items()]
    body += _verdicts_md(verdicts)
    paths["report"] = _atomic_write(out / "report.md", "\n".join(body) + "\n")
    return paths


# --------------------------------------------------------------------------- everything


@dataclass
class Report:
    """Everything :func:`build_report` computed and wrote."""

    tables: dict[str, pd.DataFrame]
    verdicts: list[Verdict]
    additivity: Additivity
    paths: dict[str, Path] = field(default_factory=dict)
    settings: ReportSettings = field(default_factory=ReportSettings)

    @property
    def report_path(self) -> Path | None:
        return self.paths.get("report")


def build_report(
    cls: pd.DataFrame,
    mt: pd.DataFrame | None,
    footprints: pd.DataFrame | None,
    settings: ReportSettings | None = None,
    out_dir: str | os.PathLike[str] = "report",
    header: Mapping[str, Any] | None = None,
) -> Report:
    """All tables, the frontier, verdicts for the candidate (and ``extra_candidates`` that were
    run), written under ``out_dir``."""
    s = settings or ReportSettings()
    out = Path(out_dir)
    df = _prepare(cls)
    rob = _robustness_tables(df, s)
    add = _additivity(_ablation_mats(df, s), s)
    tables = {
        "accuracy_parity": table_accuracy_parity(cls, s),
        "translation_calibration": table_translation_calibration(cls, mt, s),
        "orthographic_robustness": rob.summary,
        "orthographic_robustness_by_language": rob.by_language,
        "governance_ablation": table_governance_ablation(cls, s),
        "footprint": table_footprint(footprints, s),
    }
    frontier_png = out / "cost_quality_frontier.png"
    tables["cost_quality_frontier"] = figure_cost_quality_frontier(cls, footprints, s, frontier_png)
    figures = {
        Path(p).stem: Path(p) for p in tables["cost_quality_frontier"].attrs.get("figures", [])
    }
    ran = set(df["method"])
    candidates = [s.candidate, *[c for c in s.extra_candidates if c in ran and c != s.candidate]]
    vs = [v for c in candidates for v in verdicts(cls, footprints, s, candidate=c, additivity=add)]
    head = {"settings": json.dumps(asdict(s)), **(header or {})}
    paths = write_report(out, tables, figures, vs, head)
    return Report(tables=tables, verdicts=vs, additivity=add, paths=paths, settings=s)
