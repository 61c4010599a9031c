"""The report assets (Tables II–VI and the cost-quality frontier): one computation over every
scored run of an experiment, six assets with their own Markdown table and plot in the UI, all
with lineage to `model_evaluation` (and through it to the models and governance variants)."""

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from . import ui
from .resources import GovtuneHome

DESCRIPTIONS = {
    "table_accuracy_parity": "Table II: accuracy (95% CI over seeds x examples), macro-F1, "
    "per-language accuracy, parity (worst language, gap, std) and paired tests vs the baseline.",
    "table_translation_calibration": "Table III: chrF++/BLEU en->xx and xx->en and their "
    "balance; ECE, MCE, Brier, NLL before and after per-language temperature scaling.",
    "table_orthographic_robustness": "Table IV: accuracy and ECE under each perturbation and "
    "severity, and the paired drop against the same items clean.",
    "table_governance_ablation": "Table V: accuracy per governance arm, paired differences to "
    "full, and whether the single-stage gains add up to the total gain.",
    "table_footprint": "Table VI: time per step, tokens/s, peak memory, trainable parameters, "
    "ratios to the baseline.",
    "figure_cost_quality_frontier": "Figure 2: accuracy against training cost, one point per "
    "method, Pareto front marked.",
}
# asset name -> the table key of evaluation.report.build_report
REPORT_TABLES = {
    "table_accuracy_parity": "accuracy_parity",
    "table_translation_calibration": "translation_calibration",
    "table_orthographic_robustness": "orthographic_robustness",
    "table_governance_ablation": "governance_ablation",
    "table_footprint": "footprint",
    "figure_cost_quality_frontier": "cost_quality_frontier",
}
_EVALUATIONS = dg.AssetDep("model_evaluation", partition_mapping=dg.AllPartitionMapping())


class ReportConfig(dg.Config):
    experiment: str = "demo"
    variant: str = "full"  # the governance arm the method tables compare on
    baseline: str = "lora"
    candidate: str = "hybrid"  # the method the seed claims are about
    ablation_method: str = "hybrid"
    confidence: float = 0.95
    n_boot: int = 1000


def load_scored_runs(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every `<variant>/<run>.parquet` under `folder` → classification rows, translation
    rows and footprints (`evaluation.store.load_scored_runs`: also `tt-` translate-train
    runs and the `lexical` / `untuned` baselines)."""
    from evaluation.store import load_scored_runs as load

    try:
        return load(folder)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no scored classification run under {folder}: materialise model_evaluation first"
        ) from None


def _image(path: Path) -> dg.MetadataValue:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{encoded})")


_LABELS = ("method", "variant", "arm", "claim")
_VALUES = ("accuracy", "chrf", "flip_rate", "gain", "step_time_ratio", "ece", "estimate")


def glance(table: pd.DataFrame, key: str) -> dg.MetadataValue:
    """The table's headline number per row as a small inline bar chart, the values in words
    beside it (the full figure is the `plot` entry, a click away: the UI renders only short
    Markdown inline)."""
    label = next((c for c in _LABELS if c in table.columns), None)
    value = next((c for c in _VALUES if c in table.columns), None)
    if label is None or value is None:
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        if label is None or not numeric:
            return dg.MetadataValue.md(f"{key}: {len(table)} rows")
        value = numeric[0]
    rows = table[[label, value]].dropna()
    rows = rows.groupby(label, sort=False)[value].mean()
    words = " · ".join(f"{k} {ui.rounded(float(v), 3)}" for k, v in rows.items())
    caption = f"{value} by {label}: {words}"
    return ui.labelled_bars(list(rows.values), caption, key)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            name,
            deps=[_EVALUATIONS],
            group_name="reports",
            kinds={"markdown", "csv"},
            owners=["team:evaluation"],
            description=DESCRIPTIONS[name],
        )
        for name in REPORT_TABLES
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_claim_has_a_verdict",
            asset="table_accuracy_parity",
            description="each seed claim (accuracy, calibration, parity, robustness, governance "
            "gains, overhead) has a verdict: holds, does not hold, or inconclusive with the "
            "smallest effect the data could detect",
        )
    ],
    can_subset=True,
)
def reports(context: dg.AssetExecutionContext, config: ReportConfig, home: GovtuneHome):
    """Tables II–VI and Figure 2 from every scored run of the experiment, with 95% bootstrap
    intervals over seeds and examples, paired tests against the baseline, and the verdicts."""
    from evaluation.report import (
        ReportSettings,
        build_report,
        markdown_table,
        scored_runs,
        write_summary,
    )

    cls, mt, foot = load_scored_runs(home.path("evaluations", config.experiment))
    settings = ReportSettings(
        baseline=config.baseline,
        candidate=config.candidate,
        variant=config.variant,
        ablation_method=config.ablation_method,
        confidence=config.confidence,
        n_boot=config.n_boot,
    )
    out = home.path("reports", config.experiment)
    runs = scored_runs(cls, mt)
    report = build_report(
        cls, mt, foot, settings, out, header={"experiment": config.experiment, "runs": len(runs)}
    )
    verdicts = "\n".join(f"- **{v.statement}** ({v.candidate}): {v.label}" for v in report.verdicts)
    write_summary(out, config.experiment, runs, report)
    for name, key in REPORT_TABLES.items():
        if name not in context.selected_output_names:
            continue
        table = report.tables[key]
        md, png = out / f"{key}.md", out / f"{key}.png"
        metadata = {
            "glance": glance(table, key),
            "plot": _image(png),
            "table" if name.startswith("table") else "figure": dg.MetadataValue.md(
                markdown_table(table)
            ),
            "markdown": dg.MetadataValue.path(str(md)),
            "csv": dg.MetadataValue.path(str(out / f"{key}.csv")),
            "png": dg.MetadataValue.path(str(png)),
            "report": dg.MetadataValue.path(str(out / "report.md")),
            "runs_scored": len(runs),
            "dagster/row_count": len(table),
        }
        if key == "governance_ablation":
            metadata["gains_add_up"] = report.additivity.verdict
            metadata["additivity"] = report.additivity.evidence
        if key in ("accuracy_parity", "cost_quality_frontier"):
            metadata["verdicts"] = dg.MetadataValue.md(verdicts)
        yield dg.MaterializeResult(asset_key=name, metadata=metadata)
        if name == VERDICT_ASSET:
            yield verdict_check(report.verdicts)


VERDICT_ASSET = "table_accuracy_parity"
CLAIMS = ("accuracy", "calibration", "parity", "robustness", "governance", "overhead")


def verdict_check(verdicts) -> dg.AssetCheckResult:
    """Every seed claim has a verdict (holds / does not hold / inconclusive with its reason)."""
    from evaluation.verdicts import HOLDS, INCONCLUSIVE, NOT_HOLDS

    found = {v.claim: v for v in verdicts}
    missing = [c for c in CLAIMS if c not in found]
    unclear = [c for c, v in found.items() if v.verdict not in (HOLDS, NOT_HOLDS, INCONCLUSIVE)]
    return dg.AssetCheckResult(
        asset_key=VERDICT_ASSET,
        check_name="every_claim_has_a_verdict",
        passed=not missing and not unclear,
        metadata={
            "verdicts": dg.MetadataValue.json({c: v.label for c, v in found.items()}),
            "missing": dg.MetadataValue.json(missing),
        },
    )
