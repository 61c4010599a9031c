"""Tables II-VI, the comparisons table and the cost-quality frontier, from prediction rows
(:mod:`evaluation.frames`), with the crossed-design intervals of :mod:`evaluation.stats` and
the claims' arrays for :mod:`evaluation.verdicts`.

Tables are DataFrames of numbers (``x``, ``x_low``, ``x_high`` for an estimate and its
interval; :func:`evaluation.render.format_for_markdown` makes cells); a table with nothing to
show is a one-row ``note`` frame, and the text under a table travels in ``attrs["notes"]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.calibration import (
    _debiased_ce,
    equal_mass_bins,
    reliability_bins,
    scale_logits,
    shrunk_temperatures,
)
from evaluation.frames import (
    CLEAN,
    MT_COLUMNS,
    align,
    align_all,
    by_lang,
    checked,
    lang_means,
    logits,
    matrix,
    method_matrices,
    ordered,
    prepare,
    rows_in,
    select,
)
from evaluation.metrics import macro_f1, parity
from evaluation.plots import pareto_front, plot_frontier
from evaluation.render import is_note_table, note_table, with_notes
from evaluation.settings import ReportSettings
from evaluation.stats import adjust_pvalues, crossed_weights, mean_ci, paired_test

__all__ = [
    "VARIANT_ORDER",
    "ablation_matrices",
    "calibration_arrays",
    "figure_cost_quality_frontier",
    "parallel_arrays",
    "reliability",
    "robustness_arrays",
    "table_accuracy_parity",
    "table_footprint",
    "table_governance_ablation",
    "table_orthographic_robustness",
    "table_translation",
    "table_translation_calibration",
]

VARIANT_ORDER = ("full", "no_lid", "no_dedup", "no_quality", "none", "rehydrate")
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


def _ci_cols(prefix: str, c) -> dict[str, float]:
    return {prefix: c.estimate, f"{prefix}_low": c.low, f"{prefix}_high": c.high}


def _order_columns(df: pd.DataFrame, first, prefix: str) -> pd.DataFrame:
    head = [c for c in first if c in df.columns]
    mid = sorted(c for c in df.columns if c.startswith(prefix) and c not in head)
    return df[head + mid + [c for c in df.columns if c not in head and c not in mid]]


def _test_rows(cls, s: ReportSettings, protocol: str | None = None) -> pd.DataFrame:
    return select(prepare(cls), variant=s.variant, protocol=protocol or s.protocol)


# --------------------------------------------------------------------------- Table II


def _macro_f1_mean(rows: pd.DataFrame, m: pd.DataFrame) -> float:
    rows = rows_in(rows, m)
    k = len(rows["logits"].iloc[0])
    return float(
        np.mean(
            [
                macro_f1(g["gold"].to_numpy(), g["pred"].to_numpy(), labels=range(k))
                for _, g in rows.groupby("run_key")
            ]
        )
    )


def _flag(v) -> bool:
    return v is not None and not pd.isna(v) and bool(v)


def _overlap_controlled(rows: pd.DataFrame, m: pd.DataFrame, s: ReportSettings) -> dict:
    """Accuracy on the non-English items that share no token with the English training set."""
    flags = rows_in(rows, m).drop_duplicates(["lang", "item_id"]).set_index(["lang", "item_id"])
    oc = flags["overlap_controlled"]
    if oc.isna().all():
        return {}
    keep = [c for c in m.columns if c[0] != s.pivot and _flag(oc.get(c))]
    if len(keep) < 2:
        return {"n_items_oc": len(keep)}
    return {"n_items_oc": len(keep), **_ci_cols("accuracy_oc", mean_ci(m[keep].to_numpy()))}


def strongest_baseline(mats: Mapping[str, pd.DataFrame], s: ReportSettings, cand: str):
    means = {b: float(mats[b].to_numpy().mean()) for b in s.baselines if b in mats and b != cand}
    means = {b: v for b, v in means.items() if math.isfinite(v)}
    return max(means, key=means.__getitem__) if means else None


def _accuracy_row(method, m, rows, ref, ref_name, s: ReportSettings) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "n_seeds": m.shape[0], "n_items": m.shape[1]}
    if m.shape[1] < 2:
        return row
    par = parity(lang_means(m))
    row.update(
        **_ci_cols("accuracy", mean_ci(m.to_numpy(), s.confidence)),
        **_overlap_controlled(rows, m, s),
        macro_f1=_macro_f1_mean(rows, m),
        **{f"acc_{lang}": v for lang, v in lang_means(m).items()},
        worst_lang=par.worst_lang,
        worst_acc=par.worst,
        gap=par.gap,
    )
    if ref is None or method == ref_name:
        return row
    a, b = align(m, ref)
    r = paired_test(a.to_numpy(), b.to_numpy(), s.confidence)
    per = {
        lang: paired_test(x, y, s.confidence)
        for (lang, x), y in zip(by_lang(a).items(), by_lang(b).values(), strict=True)
    }
    adj = adjust_pvalues([p.p_value for p in per.values()]) if per else []
    worse = sum(
        p.estimate < 0 and q < 1 - s.confidence for p, q in zip(per.values(), adj, strict=True)
    )
    row.update(
        vs=ref_name,
        **_ci_cols("diff_vs", r),
        p_value=r.p_value,
        mde=r.mde,
        power=r.power_at(s.target_effect),
        n_langs_worse=worse,
    )
    return row


def table_accuracy_parity(
    cls: pd.DataFrame, settings: ReportSettings | None = None, protocol: str | None = None
) -> pd.DataFrame:
    """Table II: per method (arm ``variant``, clean test, one protocol), accuracy with its
    crossed-design 95% CI, on the overlap-controlled subset, macro-F1, per-language accuracy,
    worst language and gap, and the difference from the strongest baseline (with p, MDE,
    power at the target effect and Holm-corrected languages significantly worse)."""
    s = settings or ReportSettings()
    protocol = protocol or s.protocol
    test = _test_rows(cls, s, protocol)
    if test.empty:
        return note_table(f"no clean test predictions for {s.variant!r} ({protocol})")
    mats = {m: x for m, x in method_matrices(test).items() if x.shape[1] > 0}
    ref_name = strongest_baseline(mats, s, s.candidate)
    ref = mats.get(ref_name) if ref_name else None
    rows = [
        _accuracy_row(m, x, test[test["method"] == m], ref, ref_name, s) for m, x in mats.items()
    ]
    out = _order_columns(
        pd.DataFrame(rows),
        ["method", "n_seeds", "n_items", "accuracy", "accuracy_oc", "macro_f1"],
        "acc_",
    )
    notes = [
        f"Arm {s.variant!r}, protocol {protocol}, clean test split. Accuracy: mean over seeds"
        " and items with a 95% t interval of the crossed seeds x items design"
        " (evaluation/stats.py contrast_test).",
        "accuracy_oc: non-English items sharing no Latin token of 3+ characters with the"
        " English training messages (the lexical-overlap control)."
        if "accuracy_oc" in out
        else "",
        f"diff_vs: method minus the strongest baseline ({ref_name}) on shared items; mde: the"
        f" smallest difference detectable with 80% power; power at {s.target_effect:.2f};"
        " n_langs_worse: languages significantly worse (Holm)."
        if ref_name
        else "No baseline was run: no comparisons.",
    ]
    return with_notes(out, notes)


# --------------------------------------------------------------------------- Table III


def _calibration_cis(conf, hit, s: ReportSettings) -> dict[str, float]:
    """Plug-in ECE (equal-width bins) and MCE, and the debiased CE (equal-mass bins), each
    with a bootstrap CI over items and seeds; ``conf`` and ``hit`` are ``seeds x items``."""
    rng = np.random.default_rng(s.seed)
    w, (v,) = crossed_weights(s.n_boot, conf.shape[1], [conf.shape[0]], rng)
    out: dict[str, float] = {}
    width = np.clip((conf * s.ece_bins).astype(int), 0, s.ece_bins - 1)
    mass = equal_mass_bins(conf.ravel(), s.ece_bins).reshape(conf.shape)
    for name, bins in (("ece", width), ("dce", mass)):
        onehot = np.eye(int(bins.max()) + 1)[bins]
        n = np.einsum("bs,sik,bi->bk", v, onehot, w)
        cs = np.einsum("bs,sik,si,bi->bk", v, onehot, conf, w)
        hs = np.einsum("bs,sik,si,bi->bk", v, onehot, hit, w)
        n0, c0, h0 = (
            onehot.sum((0, 1)),
            np.einsum("sik,si->k", onehot, conf),
            np.einsum("sik,si->k", onehot, hit),
        )
        if name == "dce":
            point, reps = float(_debiased_ce(n0, c0, h0)), _debiased_ce(n, cs, hs)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                gap0, gap = np.abs(h0 - c0) / n0, np.abs(hs - cs) / n
            point = float(np.nansum(n0 / n0.sum() * gap0))
            reps = np.nansum(n / n.sum(axis=1, keepdims=True) * gap, axis=1)
            out["mce"] = float(np.nanmax(np.where(n0 > 0, gap0, np.nan)))
        a = 1 - s.confidence
        lo, hi = np.quantile(reps, [a / 2, 1 - a / 2])
        out.update({name: point, f"{name}_low": float(lo), f"{name}_high": float(hi)})
    return out


def calibration_arrays(
    df: pd.DataFrame, method: str, s: ReportSettings, scaled: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, float]] | None:
    """``(confidence, hit)`` as ``runs x items`` on the clean test items, before or after the
    temperature fitted on dev (pooled over languages, or shrunk per language), and the
    temperatures used (mean over runs, per language)."""
    test = select(df, variant=s.variant, method=method, protocol=s.protocol)
    dev = select(df, variant=s.variant, method=method, split="dev", protocol=s.protocol)
    if test.empty:
        return None
    rows, temps = [], {}
    for run, g in test.groupby("run_key"):
        d = dev[dev["run_key"] == run]
        t = {lang: 1.0 for lang in g["lang"].unique()}
        if scaled and not d.empty:
            per = {lang: (logits(x), x["gold"].to_numpy()) for lang, x in d.groupby("lang")}
            pooled, fitted = shrunk_temperatures(per, s.temperature_strength)
            t = {lang: fitted.get(lang, pooled) for lang in t}
        elif scaled:
            return None
        p = np.vstack([scale_logits(logits(x), t[lang]) for lang, x in g.groupby("lang")])
        gold = np.concatenate([x["gold"].to_numpy() for _, x in g.groupby("lang")])
        keys = pd.concat([x[["lang", "item_id"]] for _, x in g.groupby("lang")])
        rows.append(
            pd.DataFrame(
                {
                    "run_key": run,
                    "lang": keys["lang"].to_numpy(),
                    "item_id": keys["item_id"].to_numpy(),
                    "conf": p.max(axis=1),
                    "hit": (p.argmax(axis=1) == gold).astype(float),
                }
            )
        )
        for lang, v in t.items():
            temps.setdefault(lang, []).append(v)
    long = pd.concat(rows)
    conf, hit = matrix(long, "conf"), matrix(long, "hit")
    conf, hit = align(conf, hit)
    if conf.shape[1] < 2:
        return None
    return conf.to_numpy(), hit.to_numpy(), {k: float(np.mean(v)) for k, v in temps.items()}


def reliability(df: pd.DataFrame, s: ReportSettings) -> dict[str, dict]:
    """Reliability bins per method, before and after temperature scaling (for the figure)."""
    out = {}
    for m in ordered(select(df, variant=s.variant, protocol=s.protocol)["method"].unique()):
        series = {}
        for label, scaled in (("before", False), ("after", True)):
            arr = calibration_arrays(df, m, s, scaled)
            if arr is None:
                continue
            conf, hit = arr[0].ravel(), arr[1].ravel()
            probs = np.stack([conf, 1 - conf], axis=1)  # top-label view: argmax is column 0
            series[label] = reliability_bins(probs, (1 - hit).astype(np.int64), s.ece_bins)
        if series:
            out[m] = series
    return out


def _brier_nll(df: pd.DataFrame, method: str, s: ReportSettings) -> dict[str, float]:
    test = select(df, variant=s.variant, method=method, protocol=s.protocol)
    return {"brier_before": float(test["brier"].mean()), "nll_before": float(test["nll"].mean())}


def _translation_means(mt: pd.DataFrame, method: str, s: ReportSettings) -> dict[str, float]:
    t = table_translation(mt, s, summary=True)
    if is_note_table(t) or method not in set(t["method"]):
        return {}
    g = t[t["method"] == method]
    out_of, into = g[g["src_lang"] == s.pivot], g[g["tgt_lang"] == s.pivot]
    return {
        "n_mt_seeds": int(g["n_seeds"].max()),
        f"chrf_{s.pivot}_xx": float(out_of["chrf"].mean()) if len(out_of) else math.nan,
        f"chrf_xx_{s.pivot}": float(into["chrf"].mean()) if len(into) else math.nan,
    }


def table_translation_calibration(
    cls: pd.DataFrame, mt: pd.DataFrame | None, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table III: per method, mean chrF++ out of and into the pivot (per-direction scores with
    CIs are in the translation table), and calibration on the clean test items: plug-in ECE
    (15 equal-width bins) with its bootstrap CI, MCE, the debiased calibration error (equal-
    mass bins) with its CI before and after one temperature fitted on the pooled dev items,
    Brier and NLL."""
    s = settings or ReportSettings()
    df = prepare(cls)
    mtd = _mt_rows(mt, s)
    methods = ordered(
        set(select(df, variant=s.variant, protocol=s.protocol)["method"]) | set(mtd["method"])
    )
    if not methods:
        return note_table(f"no classification or translation runs for variant {s.variant!r}")
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m, **_translation_means(mtd, m, s)}
        before, after = calibration_arrays(df, m, s), calibration_arrays(df, m, s, True)
        if before is not None:
            row["n_cal_seeds"] = before[0].shape[0]
            cis = _calibration_cis(before[0], before[1], s)
            row.update(
                {
                    k.replace("ece", "ece_before", 1)
                    .replace("dce", "dce_before", 1)
                    .replace("mce", "mce_before", 1): v
                    for k, v in cis.items()
                }
            )
            row.update(_brier_nll(df, m, s))
        if after is not None:
            cis = _calibration_cis(after[0], after[1], s)
            row.update(
                ece_after=cis["ece"],
                **{
                    k.replace("dce", "dce_after", 1): v
                    for k, v in cis.items()
                    if k.startswith("dce")
                },
            )
            row["temperature"] = float(np.mean(list(after[2].values())))
        rows.append(row)
    strength = s.temperature_strength
    notes = [
        "" if not mtd.empty else "no translation runs",
        f"chrF++: mean over {s.pivot}->xx and xx->{s.pivot} directions of the corpus score"
        " (per direction with sacrebleu bootstrap CIs and paired tests: translation table).",
        f"Calibration on the clean test items before temperature scaling and after one"
        f" temperature fitted on {'the pooled dev items' if math.isinf(strength) else 'dev'}"
        + (
            ""
            if math.isinf(strength)
            else f" per language, shrunk to the pooled one ({strength:g})"
        )
        + f"; ece/mce: {s.ece_bins} equal-width bins (biased upwards on small samples: a"
        " calibrated model scores about 0.056 at 400 items); dce: debiased calibration error"
        " (Kumar et al. 2019, equal-mass bins; 0 when calibrated); CIs resample items and"
        " seeds.",
    ]
    return with_notes(pd.DataFrame(rows), notes)


def _mt_rows(mt: pd.DataFrame | None, s: ReportSettings) -> pd.DataFrame:
    mtd = checked(mt, MT_COLUMNS, "translation predictions")
    mtd = mtd.astype({c: str for c in ("variant", "run_key", "method")})
    return mtd[mtd["variant"] == s.variant]


def _paired_chrf(base: pd.DataFrame, cand: pd.DataFrame, n: int) -> float:
    """sacrebleu's paired bootstrap p-value of candidate vs baseline chrF++ (same sources)."""
    from sacrebleu.metrics import CHRF
    from sacrebleu.significance import PairedTest

    j = base.merge(cand, on="item_id", suffixes=("_b", "_c"))
    if len(j) < 2:
        return math.nan
    test = PairedTest(
        [
            ("base", j["hypothesis_b"].fillna("").tolist()),
            ("cand", j["hypothesis_c"].fillna("").tolist()),
        ],
        {"chrf": CHRF(word_order=2)},
        [j["reference_b"].fillna("").tolist()],
        test_type="bs",
        n_samples=n,
    )
    _, scores = test()
    return float(next(iter(v for k, v in scores.items() if k != "System"))[1].p_value)


def table_translation(
    mt: pd.DataFrame | None, settings: ReportSettings | None = None, *, summary: bool = False
) -> pd.DataFrame:
    """Per method and direction: pairs, corpus chrF++ and BLEU (seed-averaged) with
    sacrebleu's bootstrap 95% CI (first seed), and the paired bootstrap p-value against the
    strongest baseline of that direction (``summary=True`` skips the tests)."""
    from sacrebleu.metrics import BLEU, CHRF

    from evaluation.metrics import bleu_tokenizer

    s = settings or ReportSettings()
    mtd = _mt_rows(mt, s)
    if mtd.empty:
        return note_table("no translation runs")
    rows = []
    for (m, src, tgt), g in mtd.groupby(["method", "src_lang", "tgt_lang"]):
        scores = []
        for _, r in g.groupby("run_key"):
            hyp, ref = r["hypothesis"].fillna("").tolist(), [r["reference"].fillna("").tolist()]
            nb = 1 if summary or scores else s.n_boot
            c = CHRF(word_order=2).corpus_score(hyp, ref, n_bootstrap=nb)
            b = BLEU(tokenize=bleu_tokenizer(tgt), effective_order=False).corpus_score(hyp, ref)
            scores.append((c, b))
        c0 = scores[0][0]
        half = getattr(c0, "_ci", math.nan) if not summary else math.nan
        chrf = float(np.mean([c.score for c, _ in scores]))
        rows.append(
            {
                "method": m,
                "src_lang": src,
                "tgt_lang": tgt,
                "n_seeds": len(scores),
                "n_pairs": int(g.groupby("run_key").size().min()),
                "chrf": chrf,
                "chrf_low": chrf - half,
                "chrf_high": chrf + half,
                "bleu": float(np.mean([b.score for _, b in scores])),
            }
        )
    out = pd.DataFrame(rows)
    if summary:
        return out
    out["vs"], out["p_value"] = None, math.nan
    for (src, tgt), g in out.groupby(["src_lang", "tgt_lang"]):
        base = [b for b in s.baselines if b in set(g["method"])]
        if not base:
            continue
        ref = max(base, key=lambda b: float(g.loc[g["method"] == b, "chrf"].iloc[0]))
        pick = (mtd["src_lang"] == src) & (mtd["tgt_lang"] == tgt)
        first = mtd[pick].sort_values("run_key").groupby("method")["run_key"].first()
        for i in g.index:
            m = out.at[i, "method"]
            if m == ref:
                continue
            sel = mtd[pick & (mtd["run_key"] == first[m])]
            bsel = mtd[pick & (mtd["run_key"] == first[ref])]
            out.at[i, "vs"] = ref
            out.at[i, "p_value"] = _paired_chrf(bsel, sel, s.n_boot)
    notes = [
        "Corpus chrF++ (sacrebleu, word_order=2) and BLEU per direction; CI: sacrebleu's"
        " bootstrap of the first seed; p_value: sacrebleu's paired bootstrap against the"
        " strongest baseline of the direction (vs)."
    ]
    return with_notes(_order_columns(out, ["method", "src_lang", "tgt_lang"], "chrf"), notes)


# --------------------------------------------------------------------------- Table IV


def robustness_arrays(df: pd.DataFrame, method: str, s: ReportSettings):
    """``(clean correct, perturbed correct, gold log-prob drop)`` on the base items that have
    perturbed copies, for the runs that scored them, and the cells' names; perturbed copies
    that left the text unchanged (measured corruption 0) are NaN, never counted."""
    test = select(df, variant=s.variant, method=method, clean=None, protocol=s.protocol)
    pert = test[(test["perturbation"] != CLEAN) & ~(test["corruption"] == 0)]
    if pert.empty:
        return None
    clean = test[(test["perturbation"] == CLEAN) & test["run_key"].isin(pert["run_key"])]
    c_ok, c_lp = matrix(clean, "correct"), matrix(clean, "gold_logp")
    base_items = pd.MultiIndex.from_frame(pert[["lang", "item_id"]].drop_duplicates())
    cols = c_ok.columns.intersection(base_items).sort_values()
    if len(cols) < 2:
        return None
    c_ok, c_lp = c_ok[cols], c_lp[cols]
    cells = sorted(pert.groupby(["perturbation", "severity"]).groups)
    pk = pert.set_index(["run_key", "lang", "item_id", "perturbation", "severity"])
    ok = pk["correct"].unstack(["perturbation", "severity"]).reindex(columns=cells)
    lp = pk["gold_logp"].unstack(["perturbation", "severity"]).reindex(columns=cells)
    idx = pd.MultiIndex.from_tuples([(r, *c) for r in c_ok.index for c in cols])
    ok = ok.reindex(idx).to_numpy().reshape(len(c_ok.index), len(cols), len(cells))
    lp = lp.reindex(idx).to_numpy().reshape(len(c_ok.index), len(cols), len(cells))
    with np.errstate(invalid="ignore"):
        drop = np.nanmean(c_lp.to_numpy()[:, :, None] - lp, axis=2)
    keep = np.isfinite(drop).all(axis=0)
    return (c_ok.to_numpy()[:, keep], ok[:, keep], drop[:, keep]), cells, cols[keep]


def _robustness_rows(df: pd.DataFrame, s: ReportSettings):
    from evaluation.verdicts import flip_rates

    summary, per_lang = [], []
    test = select(df, variant=s.variant, clean=None, protocol=s.protocol)
    for method in ordered(test.loc[test["perturbation"] != CLEAN, "method"].unique()):
        arr = robustness_arrays(df, method, s)
        if arr is None:
            continue
        (clean, pert, _), cells, cols = arr
        rows = test[(test["method"] == method) & (test["perturbation"] != CLEAN)]
        langs = np.array(cols.get_level_values("lang"))
        for k, (name, sev) in enumerate(cells):
            cell = rows[(rows["perturbation"] == name) & (rows["severity"] == sev)]
            p = pert[:, :, k : k + 1]
            changed = np.isfinite(p[..., 0]).any(axis=0)
            if not changed.any():
                continue  # a no-op cell: the perturbation changed no item
            num, den = flip_rates(clean, p)
            head = {"method": method, "perturbation": name, "severity": sev}
            summary.append(
                {
                    **head,
                    "n_seeds": clean.shape[0],
                    "n_items": int(changed.sum()),
                    "n_noop": int((cell["corruption"] == 0).sum() // max(clean.shape[0], 1)),
                    "corruption": float(cell.loc[cell["corruption"] > 0, "corruption"].mean()),
                    "clean_accuracy": float(clean[:, changed].mean()),
                    "accuracy": float(np.nanmean(p[..., 0][:, changed])),
                    "flip_rate": float(num.sum() / den.sum()) if den.sum() else math.nan,
                }
            )
            for lang in sorted(set(langs[changed])):
                sel = changed & (langs == lang)
                n_, d_ = num[:, sel].sum(), den[:, sel].sum()
                per_lang.append(
                    {
                        **head,
                        "lang": lang,
                        "n_items": int(sel.sum()),
                        "corruption": float(
                            cell.loc[
                                (cell["lang"] == lang) & (cell["corruption"] > 0), "corruption"
                            ].mean()
                        ),
                        "flip_rate": float(n_ / d_) if d_ else math.nan,
                        "drop": float(clean[:, sel].mean() - np.nanmean(p[..., 0][:, sel])),
                    }
                )
    return pd.DataFrame(summary), pd.DataFrame(per_lang)


def table_orthographic_robustness(
    cls: pd.DataFrame, settings: ReportSettings | None = None, *, by_language: bool = False
) -> pd.DataFrame:
    """Table IV: per method x perturbation x severity, the measured corruption (share of
    characters changed), base items changed and left unchanged (no-op copies are dropped, and
    so is a cell that changed nothing), clean and perturbed accuracy, and the flip rate on
    the clean-correct items. ``by_language=True``: the per-language version."""
    s = settings or ReportSettings()
    summary, per_lang = _robustness_rows(prepare(cls), s)
    if summary.empty:
        return note_table(f"no perturbed test predictions (with clean ones) for {s.variant!r}")
    if by_language:
        return with_notes(per_lang, ["Per language: point values on the same items."])
    notes = [
        "corruption: mean measured share of characters changed (edit distance / length) on"
        " the items the perturbation changed; n_noop: items it left unchanged (not counted);"
        " flip_rate: share of (clean-correct item, seed) pairs the perturbation made wrong,"
        " so a model with lower clean accuracy is not credited with less to lose."
    ]
    return with_notes(summary, notes)


# --------------------------------------------------------------------------- Table V


def ablation_matrices(df: pd.DataFrame, s: ReportSettings) -> dict[str, pd.DataFrame]:
    test = select(df, method=s.ablation_method, protocol=s.protocol)
    mats = {v: matrix(test[test["variant"] == v]) for v in test["variant"].unique()}
    mats = {v: mats[v] for v in ordered(mats, VARIANT_ORDER) if mats[v].shape[1] > 1}
    return align_all(mats)


def _matched(a: pd.DataFrame, b: pd.DataFrame):
    """The two arms on their common runs (seed-matched) when they share two or more."""
    common = a.index.intersection(b.index)
    if len(common) >= 2:
        return a.loc[common], b.loc[common], True
    return a, b, False


def table_governance_ablation(
    cls: pd.DataFrame, settings: ReportSettings | None = None, additivity=None
) -> pd.DataFrame:
    """Table V: per governance arm of the ablation method (clean test), accuracy with its CI,
    per-language accuracy and the difference from ``full`` (seed-matched when the arms share
    seeds); the additivity verdict's evidence goes in ``attrs["notes"]``."""
    s = settings or ReportSettings()
    mats = ablation_matrices(prepare(cls), s)
    if not mats:
        return note_table(f"no clean test predictions for method {s.ablation_method!r}")
    full = mats.get("full")
    rows = []
    for v, m in mats.items():
        row: dict[str, Any] = {
            "variant": v,
            "n_seeds": m.shape[0],
            "n_items": m.shape[1],
            **_ci_cols("accuracy", mean_ci(m.to_numpy(), s.confidence)),
            **{f"acc_{lang}": x for lang, x in lang_means(m).items()},
        }
        if full is not None and v != "full":
            a, b, matched = _matched(m, full)
            r = paired_test(a.to_numpy(), b.to_numpy(), s.confidence, matched)
            row.update(**_ci_cols("diff_vs_full", r), p_value=r.p_value, seed_matched=matched)
        rows.append(row)
    out = _order_columns(pd.DataFrame(rows), ["variant", "n_seeds", "n_items", "accuracy"], "acc_")
    notes = [
        f"Method {s.ablation_method!r}; diff_vs_full = acc(arm) - acc(full) (negative: removing"
        " that stage costs accuracy), seed-matched when the arms share seeds.",
        additivity.evidence if additivity is not None else "",
    ]
    return with_notes(out, notes)


# --------------------------------------------------------------------------- Table VI


def footprint_runs(footprints: pd.DataFrame | None, s: ReportSettings) -> pd.DataFrame:
    from evaluation.frames import FOOTPRINT_COLUMNS

    fp = checked(footprints, FOOTPRINT_COLUMNS, "footprints")
    fp = fp[(fp["task"].astype(str) == "classification") & (fp["variant"].astype(str) == s.variant)]
    fp = fp.assign(method=fp["method"].astype(str))
    for c in FOOTPRINT_FIELDS:
        fp = fp.assign(**{c: pd.to_numeric(fp[c], errors="coerce") if c in fp else math.nan})
    return fp


def step_times(fp: pd.DataFrame, method: str) -> list[np.ndarray]:
    """Per-run step times (the trainer's per-step records; the run mean when absent)."""
    out = []
    for _, r in fp[fp["method"] == method].iterrows():
        st = r.get("step_times")
        arr = np.asarray(st if isinstance(st, list | np.ndarray) else [], dtype=float)
        arr = arr[np.isfinite(arr) & (arr > 0)]
        if arr.size < 2 and math.isfinite(r["step_time_s_mean"]):
            arr = np.array([r["step_time_s_mean"]])
        if arr.size:
            out.append(arr)
    return out


def table_footprint(
    footprints: pd.DataFrame | None, settings: ReportSettings | None = None
) -> pd.DataFrame:
    """Table VI: per method, means over runs of the footprint fields, the step time with a CI
    (runs, then steps within runs, resampled), and the step-time and peak-RSS ratios to the
    baseline with their CIs (the overhead rule's)."""
    from evaluation.verdicts import overhead_rule

    s = settings or ReportSettings()
    fp = footprint_runs(footprints, s)
    if fp.empty:
        return note_table(f"no classification footprints for variant {s.variant!r}")
    g = fp.groupby("method")
    out = g[list(FOOTPRINT_FIELDS)].mean()
    out.insert(0, "n_runs", g["run_key"].nunique())
    out = out.reindex(ordered(out.index))
    base_steps = step_times(fp, s.baseline)
    base_rss = fp.loc[fp["method"] == s.baseline, "peak_rss_mb"].dropna().tolist()
    for m in out.index:
        st = step_times(fp, m)
        if st and base_steps and base_rss:
            rss = fp.loc[fp["method"] == m, "peak_rss_mb"].dropna().tolist()
            v = overhead_rule(
                st,
                base_steps,
                rss or [math.nan],
                base_rss,
                candidate=m,
                baseline=s.baseline,
                n_boot=s.n_boot,
                seed=s.seed,
            )
            out.loc[m, ["step_time_ratio", "step_time_ratio_low", "step_time_ratio_high"]] = [
                v.estimate,
                v.low,
                v.high,
            ]
            out.loc[m, "peak_rss_ratio"] = (np.mean(rss) / np.mean(base_rss)) if rss else math.nan
    notes = [
        f"Means over runs; ratios are method / {s.baseline!r} with a 95% CI that resamples"
        " runs and then steps within runs (per-step times from the trainer's records)."
        + ("" if base_steps else f" No {s.baseline!r} runs: ratios n/a.")
    ]
    return with_notes(out.reset_index(names="method"), notes)


# --------------------------------------------------------------------------- frontier


def figure_cost_quality_frontier(
    cls: pd.DataFrame,
    footprints: pd.DataFrame | None,
    settings: ReportSettings | None = None,
    path: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """One point per method: mean training wall time (and trainable parameters) against clean
    test accuracy with its CI; ``on_front`` marks the Pareto-optimal methods."""
    s = settings or ReportSettings()
    acc = table_accuracy_parity(cls, s)
    fp = table_footprint(footprints, s)
    if is_note_table(acc) or is_note_table(fp):
        return note_table("cost-quality frontier needs both accuracy results and footprints")
    pts = acc.reindex(columns=["method", "accuracy", "accuracy_low", "accuracy_high"]).merge(
        fp.reindex(columns=["method", "train_wall_s", "trainable_params", "trainable_pct"]),
        on="method",
    )
    pts = pts.dropna(subset=["accuracy", "train_wall_s"]).reset_index(drop=True)
    if pts.empty:
        return note_table("no method has both an accuracy and a training time")
    front = set(pareto_front(pts[["train_wall_s", "accuracy"]].to_numpy()))
    pts["on_front"] = [i in front for i in range(len(pts))]
    with_params = pts.index[pts["trainable_params"].notna()]
    cost_p = pts.loc[with_params, ["trainable_params", "accuracy"]].to_numpy()
    front_p = {with_params[j] for j in pareto_front(cost_p)}
    pts["on_front_params"] = [i in front_p for i in pts.index]
    paths = _draw_frontier(pts, path) if path is not None else []
    pts.attrs["figures"] = [str(p) for p in paths]
    notes = ["Pareto front: no other method is both cheaper and more accurate (point values)."]
    return with_notes(pts, notes)


def _draw_frontier(pts: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    def point(r: pd.Series, cost: str):
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


# --------------------------------------------------------------------------- parity arrays


def parallel_arrays(df: pd.DataFrame, method: str, s: ReportSettings, keys=None):
    """``langs x runs x keys`` correctness on the parallel items (the same source message in
    every language), the label of each key and the language names."""
    test = select(df, variant=s.variant, method=method, protocol=s.protocol)
    if test.empty:
        return None
    m = test.set_index(["run_key", "lang", "key"])["correct"].unstack(["lang", "key"])
    m = m.dropna(axis=1).sort_index(axis=1)
    langs = sorted(set(m.columns.get_level_values("lang")))
    per = {lang: set(m[lang].columns) for lang in langs}
    common = sorted(set.intersection(*per.values())) if per else []
    if keys is not None:
        common = [k for k in common if k in set(keys)]
    if len(common) < 2 or len(langs) < 2:
        return None
    arr = np.stack([m[lang][common].to_numpy() for lang in langs])
    gold = test.drop_duplicates("key").set_index("key")["gold"].reindex(common).to_numpy()
    return arr, gold, langs, common
