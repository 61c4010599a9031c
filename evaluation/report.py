"""The evaluation report: Tables II-VI (zero-shot headline, translate-train second), the
comparisons table, the cost-quality frontier, reliability diagrams, a verdict on each seed
claim with power and MDE, and ``report.md`` with one Markdown, CSV and PNG file per table.

The work is split by kind: :mod:`evaluation.frames` (the prediction rows),
:mod:`evaluation.stats` and :mod:`evaluation.power` (intervals, tests, power),
:mod:`evaluation.verdicts` (one small rule per claim), :mod:`evaluation.tables` (the tables)
and :mod:`evaluation.render` (Markdown, CSV, PNG). This module turns prediction rows into the
claims' arrays, runs the rules and writes everything; ``python -m evaluation.report`` rebuilds
a report from a predictions bundle (:mod:`evaluation.store`) without Dagster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.frames import (
    CLS_COLUMNS,
    FOOTPRINT_COLUMNS,
    MT_COLUMNS,
    TRANSLATE_TRAIN,
    align,
    method_matrices,
    prepare,
    select,
)
from evaluation.render import (
    TABLE_TITLES,
    figure_reliability,
    figure_robustness,
    format_for_markdown,
    is_note_table,
    markdown_table,
    write_report,
)
from evaluation.settings import ReportSettings
from evaluation.stats import seed_variance
from evaluation.tables import (
    ablation_matrices,
    calibration_arrays,
    figure_cost_quality_frontier,
    footprint_runs,
    parallel_arrays,
    reliability,
    robustness_arrays,
    step_times,
    table_accuracy_parity,
    table_footprint,
    table_governance_ablation,
    table_orthographic_robustness,
    table_translation,
    table_translation_calibration,
)
from evaluation.verdicts import (
    HOLDS,
    INCONCLUSIVE,
    NOT_HOLDS,
    Verdict,
    accuracy_rule,
    additivity_rule,
    calibration_rule,
    not_measured,
    overhead_rule,
    parity_rule,
    robustness_rule,
    strongest,
)

__all__ = [
    "CLS_COLUMNS",
    "FOOTPRINT_COLUMNS",
    "HOLDS",
    "INCONCLUSIVE",
    "MT_COLUMNS",
    "NOT_HOLDS",
    "TABLE_TITLES",
    "Report",
    "ReportSettings",
    "Verdict",
    "build_report",
    "claim_comparisons",
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
    "table_translation",
    "table_translation_calibration",
    "verdicts",
    "write_report",
]


# --------------------------------------------------------------------------- claims


def _baselines(have: Sequence[str], cand: str, s: ReportSettings) -> list[str]:
    return [b for b in s.baselines if b in have and b != cand]


def _accuracy(df, cand, base, s) -> Verdict | None:
    mats = {
        m: x
        for m, x in method_matrices(select(df, variant=s.variant, protocol=s.protocol)).items()
        if x.shape[1] > 1
    }
    if cand not in mats or base not in mats:
        return None
    a, b = align(mats[cand], mats[base])
    if a.shape[1] < 2:
        return None
    return accuracy_rule(
        a.to_numpy(),
        b.to_numpy(),
        candidate=cand,
        baseline=base,
        confidence=s.confidence,
        target=s.target_effect,
    )


def _calibration(df, cand, base, s) -> Verdict | None:
    arms = {m: calibration_arrays(df, m, s) for m in (cand, base)}
    if any(v is None for v in arms.values()):
        return None
    (cc, ch, _), (bc, bh, _) = arms[cand], arms[base]
    if cc.shape[1] != bc.shape[1]:
        return None
    return calibration_rule(
        (cc, ch),
        (bc, bh),
        candidate=cand,
        baseline=base,
        confidence=s.confidence,
        n_boot=s.n_boot,
        seed=s.seed,
        n_bins=s.ece_bins,
    )


def _parity(df, cand, base, s) -> Verdict | None:
    a = parallel_arrays(df, cand, s)
    b = parallel_arrays(df, base, s, keys=a[3]) if a else None
    if a is None or b is None:
        return None
    a = parallel_arrays(df, cand, s, keys=b[3])
    if a is None or a[2] != b[2]:
        return None
    return parity_rule(
        a[0],
        b[0],
        a[1],
        a[2],
        candidate=cand,
        baseline=base,
        margin=s.parity_margin,
        confidence=s.confidence,
        n_boot=s.n_boot,
        seed=s.seed,
    )


def _robustness(df, cand, base, s) -> Verdict | None:
    a, b = robustness_arrays(df, cand, s), robustness_arrays(df, base, s)
    if a is None or b is None:
        return None
    common = a[2].intersection(b[2])
    cells = [c for c in a[1] if c in b[1]]
    if len(common) < 2 or not cells:
        return None

    def pick(arr):
        (clean, pert, drop), cs, cols = arr
        ci = [cols.get_loc(c) for c in common]
        ki = [cs.index(c) for c in cells]
        return clean[:, ci], pert[:, ci][:, :, ki], drop[:, ci]

    return robustness_rule(
        pick(a),
        pick(b),
        candidate=cand,
        baseline=base,
        confidence=s.confidence,
        n_boot=s.n_boot,
        seed=s.seed,
        target=s.target_effect,
    )


_RULES = {
    "accuracy": _accuracy,
    "calibration": _calibration,
    "parity": _parity,
    "robustness": _robustness,
}
# the statistic that picks the strongest baseline, and whether higher is better
_PICK = {"accuracy": True, "calibration": False, "parity": True, "robustness": False}


def _pick_value(v: Verdict, claim: str) -> float:
    """The baseline's own value of the claim's statistic, from a rule run against it."""
    if claim == "parity":
        return v.estimate * -1  # ranked by the candidate's deficit: the larger, the stronger
    return -v.estimate if _PICK[claim] else v.estimate


def claim_comparisons(df: pd.DataFrame, cand: str, s: ReportSettings) -> dict[str, list[Verdict]]:
    """Every rule of Table II-IV's claims run against every baseline that has the data."""
    have = sorted(select(df, variant=s.variant, clean=None, protocol=s.protocol)["method"].unique())
    out = {}
    for claim, fn in _RULES.items():
        out[claim] = [v for b in _baselines(have, cand, s) if (v := fn(df, cand, b, s)) is not None]
    return out


def _strongest_verdict(claim: str, vs: list[Verdict], cand: str) -> Verdict:
    """The verdict against the strongest baseline: the one whose comparison is hardest for the
    candidate (largest deficit / smallest advantage in the claim's statistic)."""
    if not vs:
        return not_measured(claim, f"{cand}: {claim}", cand, "no baseline with the data")
    best = strongest({v.baseline: _pick_value(v, claim) for v in vs})
    return next(v for v in vs if v.baseline == best)


def governance_additivity(cls: pd.DataFrame, settings: ReportSettings | None = None) -> Verdict:
    """The additivity verdict of Table V (:func:`evaluation.verdicts.additivity_rule`)."""
    s = settings or ReportSettings()
    mats = ablation_matrices(prepare(cls), s)
    need = ["full", "none", "no_lid", "no_dedup", "no_quality"]
    statement = f"the governance gains add up ({s.ablation_method})"
    missing = [v for v in need if v not in mats]
    if missing:
        return not_measured("governance", statement, s.candidate, f"arms not run: {missing}")
    arms = {v: mats[v] for v in need}
    common = sorted(set.intersection(*(set(m.index) for m in arms.values())))
    if len(common) >= 2:
        return additivity_rule(
            {v: m.loc[common].to_numpy() for v, m in arms.items()},
            method=s.ablation_method,
            margin=s.additivity_margin,
            confidence=s.confidence,
        )
    donor = max(arms.values(), key=lambda m: m.shape[0])
    sv = seed_variance(donor.to_numpy()) if donor.shape[0] > 1 else None
    return additivity_rule(
        {v: m.to_numpy() for v, m in arms.items()},
        method=s.ablation_method,
        margin=s.additivity_margin,
        confidence=s.confidence,
        seed_matched=False,
        seed_vars={v: sv for v in arms} if sv else None,
    )


def _overhead(footprints, cand: str, s: ReportSettings) -> Verdict:
    fp = footprint_runs(footprints, s)
    statement = f"{cand}'s overhead is modest"
    cs, bs = step_times(fp, cand), step_times(fp, s.baseline)
    crss = fp.loc[fp["method"] == cand, "peak_rss_mb"].dropna().tolist()
    brss = fp.loc[fp["method"] == s.baseline, "peak_rss_mb"].dropna().tolist()
    if not (cs and bs and crss and brss):
        return not_measured(
            "overhead", statement, cand, f"no footprints of {cand} and {s.baseline}"
        )
    return overhead_rule(
        cs,
        bs,
        crss,
        brss,
        candidate=cand,
        baseline=s.baseline,
        max_step_ratio=s.max_step_time_ratio,
        max_memory_ratio=s.max_memory_ratio,
        confidence=s.confidence,
        n_boot=s.n_boot,
        seed=s.seed,
    )


def verdicts(
    cls: pd.DataFrame,
    footprints: pd.DataFrame | None,
    settings: ReportSettings | None = None,
    *,
    candidate: str | None = None,
    additivity: Verdict | None = None,
    comparisons: Mapping[str, list[Verdict]] | None = None,
) -> list[Verdict]:
    """A verdict on each seed claim about ``candidate``, each against the strongest baseline
    for that claim: accuracy, calibration, parity, robustness, governance, overhead."""
    s = settings or ReportSettings()
    c = candidate or s.candidate
    df = prepare(cls)
    comps = comparisons if comparisons is not None else claim_comparisons(df, c, s)
    out = [_strongest_verdict(claim, comps.get(claim, []), c) for claim in _RULES]
    out.append(additivity or governance_additivity(df, s))
    out.append(_overhead(footprints, c, s))
    return out


def _comparison_table(comps: Mapping[str, Mapping[str, list[Verdict]]]) -> pd.DataFrame:
    rows = [
        {
            "claim": claim,
            "candidate": v.candidate,
            "baseline": v.baseline,
            "estimate": v.estimate,
            "estimate_low": v.low,
            "estimate_high": v.high,
            "p_value": v.p_value,
            "mde": v.mde,
            "power": v.power,
            "verdict": v.verdict,
        }
        for per in comps.values()
        for claim, vs in per.items()
        for v in vs
    ]
    if not rows:
        return pd.DataFrame({"note": ["no candidate-baseline comparison had data"]})
    df = pd.DataFrame(rows)
    df.attrs["notes"] = [
        "Each claim's rule run against every baseline; the verdict uses the strongest."
        " estimate: candidate - baseline (accuracy; debiased calibration error; worst-language"
        " accuracy; flip rate); mde: smallest effect detectable with 80% power; power at the"
        " target effect."
    ]
    return df


# --------------------------------------------------------------------------- everything


@dataclass
class Report:
    """Everything :func:`build_report` computed and wrote."""

    tables: dict[str, pd.DataFrame]
    verdicts: list[Verdict]
    additivity: Verdict
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
    """All tables (translate-train as a second Table II when those runs exist), the frontier,
    reliability diagrams and verdicts for the candidate (and ``extra_candidates`` that were
    run), written under ``out_dir``."""
    s = settings or ReportSettings()
    out = Path(out_dir)
    df = prepare(cls)
    add = governance_additivity(df, s)
    tables = {"accuracy_parity": table_accuracy_parity(df, s)}
    if (df["protocol"] == TRANSLATE_TRAIN).any():
        tables["accuracy_parity_translate_train"] = table_accuracy_parity(df, s, TRANSLATE_TRAIN)
    ran = set(select(df, variant=s.variant, protocol=s.protocol)["method"])
    candidates = [s.candidate, *[c for c in s.extra_candidates if c in ran and c != s.candidate]]
    comps = {c: claim_comparisons(df, c, s) for c in candidates if c in ran}
    tables["comparisons"] = _comparison_table(comps)
    tables["translation_calibration"] = table_translation_calibration(df, mt, s)
    tables["translation"] = table_translation(mt, s)
    tables["orthographic_robustness"] = table_orthographic_robustness(df, s)
    tables["orthographic_robustness_by_language"] = table_orthographic_robustness(
        df, s, by_language=True
    )
    tables["governance_ablation"] = table_governance_ablation(df, s, add)
    tables["footprint"] = table_footprint(footprints, s)
    frontier_png = out / "cost_quality_frontier.png"
    tables["cost_quality_frontier"] = figure_cost_quality_frontier(df, footprints, s, frontier_png)
    figures = {
        Path(p).stem: Path(p) for p in tables["cost_quality_frontier"].attrs.get("figures", [])
    }
    figures["reliability"] = figure_reliability(reliability(df, s), out / "reliability.png")
    vs = [
        v
        for c in candidates
        for v in verdicts(
            df, footprints, s, candidate=c, additivity=add, comparisons=comps.get(c, {})
        )
    ]
    head = {"settings": json.dumps(asdict(s), default=str), **(header or {})}
    paths = write_report(out, tables, figures, vs, head)
    return Report(tables=tables, verdicts=vs, additivity=add, paths=paths, settings=s)


def write_summary(out: str | Path, experiment: str, runs: Sequence[str], report: Report) -> Path:
    """``report.json``: the experiment, its runs and every claim's verdict with its evidence
    (what the reports asset shows and what ``docs/results/`` quotes), the same from the asset
    and from a rebuild out of committed predictions."""
    path = Path(out) / "report.json"
    summary = {
        "experiment": experiment,
        "runs": list(runs),
        "verdicts": [
            {"claim": v.claim, "candidate": v.candidate, "verdict": v.verdict,
             "evidence": v.evidence} for v in report.verdicts
        ],
        "governance_gains": report.additivity.verdict,
    }  # fmt: skip
    path.write_text(json.dumps(summary, indent=2))
    return path


def scored_runs(cls: pd.DataFrame, mt: pd.DataFrame) -> list[str]:
    """``<variant>/<run>`` of every scored run, classification first, then translation."""
    runs = sorted({f"{v}/{r}" for v, r in zip(cls.variant, cls.run_key, strict=True)})
    return runs + sorted(
        {f"{v}/{r}" for v, r in zip(mt.get("variant", []), mt.get("run_key", []), strict=True)}
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.report BUNDLE --out DIR``: rebuild the report from committed
    predictions (:func:`evaluation.store.load_bundle`)."""
    from evaluation.store import load_bundle

    p = argparse.ArgumentParser(prog="python -m evaluation.report", description=main.__doc__)
    p.add_argument("bundle", help="folder with classification/translation/footprints files")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", help="JSON object of ReportSettings fields")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    cls, mt, fp, meta = load_bundle(args.bundle)
    given = json.loads(args.settings) if args.settings else meta.get("settings", {})
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if "temperature_strength" in given and given["temperature_strength"] in ("inf", "Infinity"):
        given["temperature_strength"] = math.inf
    s = ReportSettings(**given)
    report = build_report(cls, mt, fp, s, args.out, header=meta.get("header"))
    experiment = (meta.get("header") or {}).get("experiment", Path(args.bundle).name)
    write_summary(args.out, experiment, scored_runs(cls, mt), report)
    print(
        json.dumps(
            {
                "report": str(report.report_path),
                "verdicts": [[v.claim, v.candidate, v.verdict] for v in report.verdicts],
            }
        )
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
