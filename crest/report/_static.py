"""The plots as static images (PNG or SVG), drawn with matplotlib's object API (no pyplot)."""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crest.report._data import StudyData
from crest.report._reference import published_points
from crest.report._units import KB
from crest.storage import TrialRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import FigureBase

__all__ = ["render_static", "weight_layers"]

logger = logging.getLogger(__name__)

# one palette for the static and the interactive plots (matplotlib's tab10 and a grey)
FEASIBLE = "#1f77b4"
INFEASIBLE = "#8c8c8c"
FRONT = "#ff7f0e"
CONSTRAINT = "#d62728"
PUBLISHED = "#2ca02c"

# (width, height) in inches of one kind's panel; layers grows with the number of layers
_SIZES = {"pareto": (8.0, 5.2), "history": (11.0, 4.4), "layers": (11.0, 0.0), "sensitivity": (8.0, 5.0)}


def render_static(data: StudyData, kinds: list[str], *, trial: TrialRecord | None, fmt: str) -> bytes:
    """The plots of ``kinds``, stacked top to bottom in one image.

    Args:
        data: the study.
        kinds: which plots ("pareto", "history", "layers", "sensitivity"), in order.
        trial: the trial whose layers the "layers" plot shows.
        fmt: "png" or "svg".

    Returns:
        The image file's bytes.
    """
    from matplotlib.figure import Figure

    draw: dict[str, Callable[[FigureBase], None]] = {
        "pareto": lambda f: draw_pareto(f, data),
        "history": lambda f: draw_history(f, data),
        "layers": lambda f: draw_layers(f, data, trial),  # type: ignore[arg-type]
        "sensitivity": lambda f: draw_sensitivity(f, data),
    }
    heights = [_SIZES[k][1] or _layers_height(trial) for k in kinds]
    width = max(_SIZES[k][0] for k in kinds)
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    panels: list[Any] = [fig]
    if len(kinds) > 1:
        grid: Any = fig.subfigures(len(kinds), 1, height_ratios=heights)  # an array of SubFigures
        panels = list(grid)
    for kind, panel in zip(kinds, panels):
        draw[kind](panel)
    buf = io.BytesIO()
    # no timestamps in the file, so that the same study gives the same bytes
    metadata = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(buf, format=fmt, dpi=110, metadata=metadata)
    return buf.getvalue()


def _layers_height(trial: TrialRecord | None) -> float:
    n = len(weight_layers(trial)) if trial is not None else 1
    return max(3.0, 1.6 + 0.42 * n)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def weight_layers(trial: TrialRecord) -> list[tuple[str, dict[str, Any]]]:
    """The trial's weight tensors (not biases) in model-like order (``fc2`` before ``fc10``)."""
    layers = trial.layers or {}
    return sorted(((k, v) for k, v in layers.items() if k.endswith("weight")), key=lambda kv: _natural(kv[0]))


def nice_log_ticks(low: float, high: float, *, most: int = 9) -> list[float]:
    """Round tick values (1, 1.5, 2, 3, 5, ... x 10^k) between ``low`` and ``high`` (> 0), at most ``most``."""
    if not 0 < low < high:
        return []
    first, last = math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1
    ticks: list[float] = []
    for subs in ((1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8), (1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**k for k in range(first, last) for m in subs if low <= m * 10.0**k <= high]
        if len(ticks) <= most:
            break
    if len(ticks) < 3:  # a range narrower than the round values: evenly spaced ones
        from matplotlib.ticker import MaxNLocator

        ticks = [float(v) for v in MaxNLocator(nbins=5).tick_values(low, high) if low <= v <= high and v > 0]
    return ticks


def _log_axis(axis: Any, low: float, high: float, suffix: str = "") -> None:
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        NullFormatter,
        NullLocator,
    )

    axis.set_major_locator(FixedLocator(nice_log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}{suffix}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _title(data: StudyData) -> str:
    """The study's name, and its workload when that is another name."""
    info = data.info
    return info.name if info.workload == info.name else f"{info.name} ({info.workload})"


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def draw_pareto(fig: FigureBase, data: StudyData) -> None:
    """Size against accuracy: feasible trials, infeasible ones, the front, baseline, limit."""
    ax = fig.add_subplot()
    complete = data.complete
    feasible = [t for t in complete if data.is_feasible(t)]
    infeasible = [t for t in complete if not data.is_feasible(t)]
    base = data.info.baseline_accuracy
    drop_pt = 100 * data.max_drop

    def xy(trials: list[TrialRecord]) -> tuple[list[float], list[float]]:
        return [t.size_bytes / KB for t in trials], [100 * t.accuracy for t in trials]  # type: ignore[operator]

    ax.scatter(*xy(infeasible), marker="x", s=30, linewidths=1.3, color=INFEASIBLE, zorder=2,
               label=f"infeasible trial: drop > {drop_pt:g} pt ({len(infeasible)})")
    ax.scatter(*xy(feasible), s=30, color=FEASIBLE, zorder=3, label=f"feasible trial ({len(feasible)})")
    front = data.front
    if front:
        xs, ys = xy(front)
        ax.step(xs, ys, where="post", color=FRONT, lw=2, zorder=4,
                label=f"Pareto front of the feasible trials ({len(front)})")
        ax.scatter(xs, ys, s=70, facecolors="none", edgecolors=FRONT, linewidths=1.6, zorder=5)
    note = ""
    if base is not None:
        ax.axhline(100 * base, ls="--", lw=1.2, color="black", zorder=1,
                   label=f"dense baseline: {100 * base:.2f}%"
                   + (f", {data.info.dense_bytes / KB:,.0f} KB" if data.info.dense_bytes else ""))
        ax.axhline(100 * (base - data.max_drop), ls=":", lw=1.6, color=CONSTRAINT, zorder=1,
                   label=f"constraint: accuracy >= {100 * (base - data.max_drop):.2f}% (drop <= {drop_pt:g} pt)")
        for p in published_points(data.info.workload):
            ax.scatter([p.size_bytes / KB], [100 * (base + p.accuracy_change)], marker="*", s=220,
                       color=PUBLISHED, edgecolors="black", linewidths=0.6, zorder=6, label=p.label)
            note = (f"Deep Compression's point: {p.note}; it is placed at its accuracy change against its "
                    "own baseline.")
    if not complete:
        _no_data(ax, "no complete trial yet")
    else:
        ax.set_xscale("log")
        _log_axis(ax.xaxis, *ax.get_xlim())
    if base is not None:
        low, high = ax.get_ylim()
        ax.axhspan(low, 100 * (base - data.max_drop), color=CONSTRAINT, alpha=0.05, zorder=0)
        ax.set_ylim(low, high)
    if front:
        _mark_best(ax, front[0])
    if data.info.dense_bytes and complete:
        _ratio_axis(ax, data.info.dense_bytes)
    ax.set_xlabel("artifact size (KB, 1 KB = 1,000 bytes; log scale)")
    ax.set_ylabel("accuracy on the test set (%)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.suptitle(f"{_title(data)}: size against accuracy, {len(complete)} complete trials", fontsize=11)
    if note:
        # a figure label, not free text, so that the constrained layout makes room for it
        fig.supxlabel(note, fontsize=7, color="0.35", wrap=True)


def _mark_best(ax: Axes, best: TrialRecord) -> None:
    """Label the best trial, below it when it sits in the top third of the plot."""
    x, y = best.size_bytes / KB, 100 * best.accuracy  # type: ignore[operator]
    low, high = ax.get_ylim()
    dy = -34 if (y - low) > 0.66 * (high - low) else 22
    ax.annotate(f"best: trial {best.number}\n{best.ratio or 0:.1f}x, {best.size_bytes:,} bytes",
                xy=(x, y), xytext=(-14, dy), textcoords="offset points", fontsize=8, ha="right",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9}, zorder=7,
                arrowprops={"arrowstyle": "-", "color": "0.3"})


def _ratio_axis(ax: Axes, dense_bytes: int) -> None:
    import numpy as np

    def to_ratio(kb: Any) -> Any:
        kb = np.asarray(kb, dtype=float)
        return np.divide(dense_bytes / KB, kb, out=np.full_like(kb, np.inf), where=kb > 0)

    top = ax.secondary_xaxis("top", functions=(to_ratio, to_ratio))
    top.set_xlabel("compression ratio (dense fp32 size / artifact size)")
    low, high = sorted(float(r) for r in to_ratio(ax.get_xlim()))
    _log_axis(top.xaxis, low, high, "x")


def draw_history(fig: FigureBase, data: StudyData) -> None:
    """The best feasible ratio over complete trials and over wall time, each trial dotted."""
    by_count, by_time = fig.subplots(1, 2, sharey=True)
    done = sorted(data.complete, key=lambda t: t.finished_at)
    history = data.best_ratio_history()
    start = min((t.finished_at.timestamp() - (t.wall_seconds or 0.0) for t in done), default=0.0)
    span = max((t.finished_at.timestamp() - start for t in done), default=0.0)
    scale, unit = (60.0, "min") if span > 180 else (1.0, "s")
    for ax, x_of in (
        (by_count, lambda i, t: float(i)),
        (by_time, lambda i, t: (t.finished_at.timestamp() - start) / scale),
    ):
        feas = [(x_of(i, t), t.ratio) for i, t in enumerate(done, start=1) if data.is_feasible(t)]
        infeas = [(x_of(i, t), t.ratio) for i, t in enumerate(done, start=1) if not data.is_feasible(t)]
        if infeas:
            ax.scatter(*zip(*infeas), marker="x", s=22, color=INFEASIBLE, label="infeasible trial", zorder=2)
        if feas:
            ax.scatter(*zip(*feas), s=18, color=FEASIBLE, alpha=0.45, label="feasible trial", zorder=3)
        if history:
            xs = [float(n) if ax is by_count else s / scale for n, s, _ in history]
            ax.step(xs, [r for _, _, r in history], where="post", color=FRONT, lw=2.2,
                    label="best feasible ratio so far", zorder=4)
        else:
            _no_data(ax, "no feasible trial yet")
        ax.grid(True, alpha=0.3)
    by_count.set_xlabel("complete trials (in the order they finished)")
    by_time.set_xlabel(f"wall time since the first trial started ({unit})")
    by_count.set_ylabel("compression ratio (x, dense fp32 / artifact)")
    by_count.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{_title(data)}: best feasible compression ratio over the sweep", fontsize=11)


def draw_layers(fig: FigureBase, data: StudyData, trial: TrialRecord) -> None:
    """Per weight tensor of one trial: the fraction pruned and the code width."""
    sparsity_ax, bits_ax = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    layers = weight_layers(trial)
    names = [name for name, _ in layers]
    ys = list(range(len(layers)))
    sparsity = [100 * float(v.get("sparsity") or 0.0) for _, v in layers]
    sparsity_ax.barh(ys, sparsity, color=FEASIBLE, height=0.6)
    for y, s, (_, v) in zip(ys, sparsity, layers):
        kept = f" ({v['nonzeros']:,} kept)" if v.get("nonzeros") is not None else ""
        sparsity_ax.text(min(s, 100) + 1, y, f"{s:.1f}%{kept}", va="center", fontsize=8)
    sparsity_ax.set_xlim(0, 125)
    sparsity_ax.set_xticks([0, 20, 40, 60, 80, 100])
    sparsity_ax.set_yticks(ys, names)
    sparsity_ax.invert_yaxis()
    sparsity_ax.set_xlabel("sparsity (% of the tensor's weights that are zero)")
    bits = [v.get("bits") for _, v in layers]
    top = max([b for b in bits if b] + [8])
    bits_ax.barh([y for y, b in zip(ys, bits) if b], [b for b in bits if b], color=FRONT, height=0.6)
    for y, b, (_, v) in zip(ys, bits, layers):
        rank = f", rank {v['rank']}" if v.get("rank") else ""
        text = f"{b} bits{rank}" if b else f"not quantized ({v.get('encoding') or 'dense'}){rank}"
        bits_ax.text((b or 0) + 0.15, y, text, va="center", fontsize=8)
    bits_ax.set_xlim(0, top + 3)
    bits_ax.set_xticks(range(0, top + 1, 1 if top <= 8 else 2))
    bits_ax.set_xlabel("code width (bits per stored weight; k-means codebook)")
    for ax in (sparsity_ax, bits_ax):
        ax.grid(True, axis="x", alpha=0.3)
    best = data.best
    which = "the best feasible trial" if best is not None and best.number == trial.number else (
        "feasible" if data.is_feasible(trial) else "infeasible" if trial.accuracy_drop is not None else trial.state)
    acc = f", accuracy {100 * trial.accuracy:.2f}%" if trial.accuracy is not None else ""
    drop = f" (drop {100 * trial.accuracy_drop:+.2f} pt)" if trial.accuracy_drop is not None else ""
    fig.suptitle(
        f"{_title(data)}: layers of trial {trial.number} ({which}): {trial.ratio or 0:.1f}x, "
        f"{trial.size_bytes or 0:,} bytes{acc}{drop}", fontsize=11,
    )


def draw_sensitivity(fig: FigureBase, data: StudyData) -> None:
    """Each layer's accuracy drop when it alone is pruned, against its sparsity."""
    ax = fig.add_subplot()
    for layer in sorted(data.sensitivity, key=_natural):
        points = data.sensitivity[layer]
        ax.plot([100 * s for s, _, _ in points], [100 * d for _, _, d in points], marker="o", ms=4, label=layer)
    ax.axhline(100 * data.max_drop, ls=":", lw=1.6, color=CONSTRAINT,
               label=f"the study's limit: drop <= {100 * data.max_drop:g} pt")
    ax.set_xlabel("sparsity of the one pruned layer (% of its weights set to zero)")
    ax.set_ylabel("accuracy drop, no retraining (points)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{_title(data)}: sensitivity of each layer to pruning", fontsize=11)
