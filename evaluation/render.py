"""Rendering of the report: readable Markdown cells, one ``.md``/``.csv``/``.png`` per table,
``report.md`` (header, tables with their notes, figures, verdicts with power and MDE), all
written atomically. Numbers are computed in :mod:`evaluation.tables` and
:mod:`evaluation.verdicts`; nothing here changes a value, only how it is shown.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.calibration import ReliabilityBins
from evaluation.frames import METHOD_ORDER, ordered
from evaluation.plots import plot_bars, plot_frontier
from evaluation.verdicts import Verdict

__all__ = [
    "TABLE_TITLES",
    "figure_reliability",
    "figure_robustness",
    "format_for_markdown",
    "is_note_table",
    "markdown_table",
    "note_table",
    "with_notes",
    "write_report",
]

TABLE_TITLES = {
    "accuracy_parity": "Table II: accuracy and cross-language parity (zero-shot, English train)",
    "accuracy_parity_translate_train": "Table II-b: accuracy and parity, translate-train",
    "comparisons": "Comparisons: candidate vs every baseline, per claim",
    "translation_calibration": "Table III: translation quality and calibration",
    "orthographic_robustness": "Table IV: robustness to orthographic variants",
    "orthographic_robustness_by_language": "Table IV (per language): flip rate and accuracy drop",
    "governance_ablation": "Table V: governance ablation",
    "footprint": "Table VI: training footprint",
    "cost_quality_frontier": "Cost-quality frontier",
}


def note_table(note: str) -> pd.DataFrame:
    return pd.DataFrame({"note": [note]})


def is_note_table(df: pd.DataFrame) -> bool:
    """True for the placeholder a table function returns when it has nothing to show."""
    return list(df.columns) == ["note"]


def with_notes(df: pd.DataFrame, notes: Iterable[str]) -> pd.DataFrame:
    df.attrs["notes"] = [n for n in notes if n]
    return df


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return _atomic_write(Path(path), buf.getvalue())


def figure_robustness(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Flip rate against measured corruption (share of characters changed), one panel per
    perturbation and one line per method."""
    if is_note_table(table) or table.empty:
        return _note_figure("no robustness results", path)
    perts = sorted(table["perturbation"].unique())
    ncols = min(3, len(perts))
    nrows = math.ceil(len(perts) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    methods = ordered(table["method"].unique(), METHOD_ORDER)
    for ax, name in zip(axes, perts, strict=False):
        sub = table[table["perturbation"] == name]
        for k, m in enumerate(methods):
            g = sub[sub["method"] == m].sort_values("corruption")
            if g.empty:
                continue
            ax.plot(
                [0.0, *g["corruption"]],
                [0.0, *g["flip_rate"]],
                "o-",
                ms=3,
                color=f"C{k % 10}",
                label=m,
            )
        ax.set(title=name, xlabel="characters changed (measured)", ylabel="flip rate")
        ax.grid(alpha=0.3)
    for ax in axes[len(perts) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return _save_figure(fig, path)


def figure_reliability(
    bins: Mapping[str, Mapping[str, ReliabilityBins]], path: str | os.PathLike[str]
) -> Path:
    """Reliability diagrams, one panel per method, before and after temperature scaling
    (equal-width bins for the picture; the verdict's error is the debiased one)."""
    if not bins:
        return _note_figure("no calibration results", path)
    names = list(bins)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, name in zip(axes, names, strict=False):
        ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
        for k, (label, b) in enumerate(bins[name].items()):
            ok = b.count > 0
            ax.plot(
                b.confidence[ok],
                b.accuracy[ok],
                "o-",
                ms=3,
                color=f"C{k}",
                label=f"{label} (ECE {b.ece:.3f})",
            )
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel="confidence", ylabel="accuracy")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- formatting

_INT_PREFIXES = ("n_", "steps_", "trainable_params", "total_params")
_SIGNED_PREFIXES = ("diff", "drop", "ece_increase", "chrf_balance", "logp_drop", "vs_")


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
    cols = {"debiased CE before": "dce_before", "debiased CE after": "dce_after"}
    return _plot_grouped(df, "method", cols, path, "Calibration error before/after scaling")


def _plot_robustness_lang(df: pd.DataFrame, path: Path) -> Path:
    mean = df.groupby(["lang", "method"])["flip_rate"].mean()
    data = {lang: mean.loc[lang].to_dict() for lang in mean.index.get_level_values(0).unique()}
    return plot_bars(data, path, ylabel="mean flip rate", title="Flip rate per language")


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
    "accuracy_parity_translate_train": lambda df, p: _plot_ci_bars(
        df, "method", "accuracy", p, "Accuracy (translate-train)"
    ),
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
    lines += [
        "Each verdict compares the candidate with the strongest baseline for that claim;"
        " MDE is the smallest true effect the data would have detected with 80% power, and"
        " power is at the report's target effect.",
        "",
    ]
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
