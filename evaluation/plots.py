"""PNG figures for the reports: reliability diagrams, robustness against severity, the
cost-quality frontier with its Pareto front, and bar charts with confidence intervals.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no
global state, no display needed, safe in a Dagster worker or a thread. Files are written
atomically (temporary file, then rename), so a killed run leaves no half PNG.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.calibration import ReliabilityBins

__all__ = [
    "pareto_front",
    "plot_bars",
    "plot_frontier",
    "plot_reliability",
    "plot_robustness",
]

_DPI = 120


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; got path {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=_DPI, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _interval(v: Any) -> tuple[float, float | None, float | None]:
    """(mean, low, high) from a number, a (mean, low, high) tuple or an object with
    ``mean``/``low``/``high`` attributes (``stats.Estimate``)."""
    if hasattr(v, "mean") and hasattr(v, "low") and hasattr(v, "high"):
        return float(v.mean), float(v.low), float(v.high)
    if isinstance(v, int | float | np.floating | np.integer):
        return float(v), None, None
    t = tuple(v)
    if len(t) == 3:
        return float(t[0]), float(t[1]), float(t[2])
    raise ValueError(f"expected a number, (mean, low, high) or an Estimate, got {v!r}")


# --------------------------------------------------------------------------- reliability


def plot_reliability(
    bins: ReliabilityBins | Mapping[str, ReliabilityBins],
    path: str | os.PathLike[str],
    title: str = "Reliability diagram",
) -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with the
    number of examples per bin below. Pass several bin sets (e.g. before and after temperature
    scaling) as a mapping to overlay them; each label shows its ECE."""
    series = {"model": bins} if isinstance(bins, ReliabilityBins) else dict(bins)
    if not series:
        raise ValueError("nothing to plot: no reliability bins given")
    fig = Figure(figsize=(5.2, 5.6))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    n = len(series)
    for k, (label, b) in enumerate(series.items()):
        edges = np.asarray(b.edges)
        width = np.diff(edges) / n
        left = edges[:-1] + k * width
        ok = b.count > 0
        ax.bar(
            left[ok],
            b.accuracy[ok],
            width=width[ok],
            align="edge",
            alpha=0.6,
            edgecolor="k",
            lw=0.5,
            label=f"{label} (ECE {b.ece:.3f})",
        )
        ax.plot(b.confidence[ok], b.accuracy[ok], "o", ms=3, color=f"C{k}")
        axc.bar(left, b.count, width=width, align="edge", alpha=0.6, color=f"C{k}")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    axc.set(xlabel="confidence", ylabel="examples")
    return _save(fig, path)


# --------------------------------------------------------------------------- robustness


def plot_robustness(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | os.PathLike[str],
    title: str = "Robustness to orthographic variants",
    ylabel: str = "accuracy",
    xlabel: str = "severity",
) -> Path:
    """One line per label (a language or a method) of a metric against severity. Points are
    ``(severity, value)`` or ``(severity, value, low, high)``; the CI is drawn as a band."""
    if not curves:
        raise ValueError("nothing to plot: no curves given")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for k, (label, pts) in enumerate(curves.items()):
        arr = np.asarray(sorted(tuple(p) for p in pts), dtype=float)
        if arr.ndim != 2 or arr.shape[1] not in (2, 4) or len(arr) == 0:
            raise ValueError(
                f"curve {label!r}: points must be (severity, value) or (severity, value, low, high)"
            )
        ax.plot(arr[:, 0], arr[:, 1], "o-", color=f"C{k % 10}", label=label, ms=4)
        if arr.shape[1] == 4:
            ax.fill_between(arr[:, 0], arr[:, 2], arr[:, 3], color=f"C{k % 10}", alpha=0.15)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves) > 6 else 1)
    return _save(fig, path)


# --------------------------------------------------------------------------- frontier


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated ``(cost, quality)`` points, by increasing cost.

    Lower cost and higher quality are better. A point is dominated when another point is at
    least as good on both and strictly better on one; equal points are all kept.
    """
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must be (cost, quality) pairs, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("points contain NaN or infinity")
    cost, qual = arr[:, 0], arr[:, 1]
    front = []
    for i in range(len(arr)):
        dominated = np.any(
            (cost <= cost[i]) & (qual >= qual[i]) & ((cost < cost[i]) | (qual > qual[i]))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (cost[i], -qual[i]))


def plot_frontier(
    methods: Mapping[str, Any],
    path: str | os.PathLike[str],
    xlabel: str = "training cost (s per step)",
    ylabel: str = "accuracy",
    title: str = "Cost-quality frontier",
    log_x: bool = False,
) -> Path:
    """One point per method: ``name -> (cost, quality)`` or ``(cost, (mean, low, high))`` /
    ``(cost, Estimate)`` for a vertical CI bar. Pareto-optimal methods are filled and joined
    by the front; dominated ones are hollow."""
    if not methods:
        raise ValueError("nothing to plot: no methods given")
    names = list(methods)
    cost, qual, lo, hi = [], [], [], []
    for name in names:
        value = methods[name]
        try:
            c, q = value
        except (TypeError, ValueError):
            raise ValueError(f"method {name!r}: expected (cost, quality), got {value!r}") from None
        m, low, high = _interval(q)
        cost.append(float(c))
        qual.append(m)
        lo.append(m if low is None else low)
        hi.append(m if high is None else high)
    front = pareto_front(list(zip(cost, qual, strict=True)))
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.errorbar(
        cost,
        qual,
        yerr=[np.subtract(qual, lo), np.subtract(hi, qual)],
        fmt="none",
        ecolor="0.6",
        capsize=3,
        lw=1,
    )
    on = set(front)
    for i, name in enumerate(names):
        filled = i in on
        ax.plot(
            cost[i],
            qual[i],
            "o",
            ms=8,
            color="C3" if filled else "C0",
            mfc="C3" if filled else "white",
        )
        ax.annotate(name, (cost[i], qual[i]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fx = [cost[i] for i in front]
    fy = [qual[i] for i in front]
    ax.step(fx, fy, where="post", color="C3", lw=1.5, label="Pareto front")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# --------------------------------------------------------------------------- bars


def _width_for_labels(labels: Sequence[str], minimum: float) -> float:
    """A figure width (inches) at which tick labels side by side do not run into each other
    (no_quality next to no_dedup): about 0.085 inch per character of the default 10-point font
    plus a gap, over the ~80% of the width the axes get."""
    longest = max((len(x) for x in labels), default=0)
    return max(minimum, len(labels) * (0.085 * longest + 0.2) / 0.8 + 0.6)


def plot_bars(
    values: Mapping[str, Any] | Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    ylabel: str = "accuracy",
    title: str = "",
) -> Path:
    """Bars with CI error bars. ``values`` is ``label -> value`` or, for grouped bars,
    ``group -> series -> value`` (e.g. language -> method -> Estimate). A value is a number,
    ``(mean, low, high)`` or an ``Estimate``."""
    if not values:
        raise ValueError("nothing to plot: no values given")
    grouped = all(isinstance(v, Mapping) for v in values.values())
    data: dict[str, dict[str, Any]] = (
        {g: dict(s) for g, s in values.items()} if grouped else {"": dict(values)}
    )
    series = list(dict.fromkeys(s for group in data.values() for s in group))
    groups = list(data)
    width_in = max(5.0, 0.5 * len(groups) * max(1, len(series)) + 2)
    width_in = _width_for_labels(groups if grouped else series, width_in)
    fig = Figure(figsize=(width_in, 4))
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        mean, err_lo, err_hi, xs = [], [], [], []
        for gi, g in enumerate(groups):
            if s not in data[g]:
                continue
            m, low, high = _interval(data[g][s])
            mean.append(m)
            err_lo.append(0.0 if low is None else m - low)
            err_hi.append(0.0 if high is None else high - m)
            xs.append(x[gi] + (k - (len(series) - 1) / 2) * width)
        ax.bar(
            xs,
            mean,
            width=width,
            yerr=[err_lo, err_hi],
            capsize=3,
            color=f"C{k % 10}",
            label=s if grouped else None,
        )
    if grouped:
        ax.set_xticks(x, groups)
        ax.legend(fontsize=8)
    else:
        ax.set_xticks(
            [x[0] + (k - (len(series) - 1) / 2) * width for k in range(len(series))], series
        )
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
