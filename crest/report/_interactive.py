"""The plots as one interactive HTML page (Plotly), with plotly.js inside it: no network needed."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from crest.exceptions import ConfigError
from crest.report._data import StudyData
from crest.report._reference import published_points
from crest.report._static import (
    CONSTRAINT,
    FEASIBLE,
    FRONT,
    INFEASIBLE,
    PUBLISHED,
    weight_layers,
)
from crest.report._units import KB
from crest.storage import TrialRecord

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["render_html"]

logger = logging.getLogger(__name__)


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as e:
        raise ConfigError("HTML plots need Plotly: pip install 'crest-sweep[report]' (or write .png/.svg)") from e
    return go


def render_html(data: StudyData, kinds: list[str], *, trial: TrialRecord | None) -> str:
    """A standalone HTML page with one interactive figure per kind, plotly.js included once."""
    _plotly()
    build = {
        "pareto": lambda: pareto_figure(data),
        "history": lambda: history_figure(data),
        "layers": lambda: layers_figure(data, trial),  # type: ignore[arg-type]
        "sensitivity": lambda: sensitivity_figure(data),
    }
    parts = [
        build[k]().to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, k in enumerate(kinds)
    ]
    title = html.escape(f"crest study '{data.info.name}': {', '.join(kinds)}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f'<body style="font-family: sans-serif; max-width: 1200px; margin: auto">\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _hover(t: TrialRecord) -> str:
    return (
        f"trial {t.number}<br>{t.size_bytes:,} bytes ({t.ratio or 0:.1f}x)<br>"
        f"accuracy {100 * (t.accuracy or 0):.2f}% (drop {100 * (t.accuracy_drop or 0):+.2f} pt)"
    )


def pareto_figure(data: StudyData) -> go.Figure:
    """Size (KB, log) against accuracy (%): feasible, infeasible, the front, baseline, limit."""
    go = _plotly()
    fig = go.Figure()
    complete = data.complete
    base = data.info.baseline_accuracy
    drop_pt = 100 * data.max_drop
    for name, trials, marker in (
        (f"infeasible trial: drop > {drop_pt:g} pt", [t for t in complete if not data.is_feasible(t)],
         {"symbol": "x", "color": INFEASIBLE, "size": 8}),
        ("feasible trial", data.feasible, {"color": FEASIBLE, "size": 8}),
    ):
        fig.add_trace(go.Scatter(
            x=[t.size_bytes / KB for t in trials], y=[100 * t.accuracy for t in trials],  # type: ignore[operator]
            mode="markers", name=f"{name} ({len(trials)})", marker=marker,
            text=[_hover(t) for t in trials], hoverinfo="text",
        ))
    front = data.front
    if front:
        fig.add_trace(go.Scatter(
            x=[t.size_bytes / KB for t in front], y=[100 * t.accuracy for t in front],  # type: ignore[operator]
            mode="lines+markers", line={"shape": "hv", "color": FRONT, "width": 2.5},
            marker={"size": 11, "symbol": "circle-open", "color": FRONT},
            name=f"Pareto front of the feasible trials ({len(front)})", text=[_hover(t) for t in front],
            hoverinfo="text",
        ))
    if base is not None:
        dense = f", {data.info.dense_bytes / KB:,.0f} KB" if data.info.dense_bytes else ""
        for y, dash, colour, label in (
            (100 * base, "dash", "black", f"dense baseline: {100 * base:.2f}%{dense}"),
            (100 * (base - data.max_drop), "dot", CONSTRAINT,
             f"constraint: accuracy >= {100 * (base - data.max_drop):.2f}% (drop <= {drop_pt:g} pt)"),
        ):
            sizes = [t.size_bytes / KB for t in complete if t.size_bytes is not None] or [1.0]
            fig.add_trace(go.Scatter(
                x=[min(sizes), max(sizes)], y=[y, y], mode="lines", line={"dash": dash, "color": colour}, name=label, hoverinfo="name",
            ))
        for p in published_points(data.info.workload):
            fig.add_trace(go.Scatter(
                x=[p.size_bytes / KB], y=[100 * (base + p.accuracy_change)], mode="markers",
                marker={"symbol": "star", "size": 16, "color": PUBLISHED, "line": {"width": 1}},
                name=p.label, text=[f"{p.label}<br>{p.note};<br>placed at its change against its own baseline"],
                hoverinfo="text",
            ))
    fig.update_layout(
        title=f"{data.info.name}: size against accuracy, {len(complete)} complete trials ({data.info.workload})",
        xaxis={"title": {"text": "artifact size (KB, 1 KB = 1,000 bytes; log scale)"}, "type": "log"},
        yaxis={"title": {"text": "accuracy on the test set (%)"}},
        legend={"x": 1.0, "xanchor": "right", "y": 0.0, "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.8)"},
        template="plotly_white", height=560,
    )
    return fig


def history_figure(data: StudyData) -> go.Figure:
    """Best feasible ratio over complete trials and over wall time, side by side."""
    go = _plotly()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05)
    done = sorted(data.complete, key=lambda t: t.finished_at)
    start = min((t.finished_at.timestamp() - (t.wall_seconds or 0.0) for t in done), default=0.0)
    history = data.best_ratio_history()
    positions = {1: [float(i) for i in range(1, len(done) + 1)], 2: [t.finished_at.timestamp() - start for t in done]}
    for col, xs in positions.items():
        for feasible, name, marker in (
            (False, "infeasible trial", {"symbol": "x", "color": INFEASIBLE, "size": 7}),
            (True, "feasible trial", {"color": FEASIBLE, "size": 7, "opacity": 0.5}),
        ):
            chosen = [k for k, t in enumerate(done) if data.is_feasible(t) == feasible]
            fig.add_trace(go.Scatter(
                x=[xs[k] for k in chosen], y=[done[k].ratio for k in chosen], mode="markers", name=name,
                marker=marker, text=[_hover(done[k]) for k in chosen], hoverinfo="text", showlegend=col == 1,
                legendgroup=name,
            ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[h[0] if col == 1 else h[1] for h in history], y=[h[2] for h in history], mode="lines",
            line={"shape": "hv", "color": FRONT, "width": 2.5}, name="best feasible ratio so far",
            showlegend=col == 1, legendgroup="best",
        ), row=1, col=col)
    fig.update_xaxes(title_text="complete trials (in the order they finished)", row=1, col=1)
    fig.update_xaxes(title_text="wall time since the first trial started (s)", row=1, col=2)
    fig.update_yaxes(title_text="compression ratio (x, dense fp32 / artifact)", row=1, col=1)
    fig.update_layout(title=f"{data.info.name}: best feasible compression ratio over the sweep",
                      template="plotly_white", height=460)
    return fig


def layers_figure(data: StudyData, trial: TrialRecord) -> go.Figure:
    """One trial's weight tensors: sparsity (%) and code width (bits)."""
    go = _plotly()
    from plotly.subplots import make_subplots

    layers = weight_layers(trial)
    names = [n for n, _ in layers]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.6, 0.4], horizontal_spacing=0.04)
    sparsity = [100 * float(v.get("sparsity") or 0.0) for _, v in layers]
    fig.add_trace(go.Bar(x=sparsity, y=names, orientation="h", name="sparsity (%)",
                         marker_color=FEASIBLE, text=[f"{s:.1f}%" for s in sparsity],
                         textposition="outside"), row=1, col=1)
    bits = [v.get("bits") or 0 for _, v in layers]
    fig.add_trace(go.Bar(x=bits, y=names, orientation="h", name="code width (bits)", marker_color=FRONT,
                         text=[f"{b} bits" if b else "not quantized" for b in bits], textposition="outside"),
                  row=1, col=2)
    fig.update_xaxes(title_text="sparsity (% of the tensor's weights that are zero)", range=[0, 112], row=1, col=1)
    fig.update_xaxes(title_text="code width (bits per stored weight)", range=[0, max(bits + [8]) + 3], row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    acc = f", accuracy {100 * trial.accuracy:.2f}%" if trial.accuracy is not None else ""
    fig.update_layout(
        title=f"{data.info.name}: layers of trial {trial.number}: {trial.ratio or 0:.1f}x, "
              f"{trial.size_bytes or 0:,} bytes{acc}",
        template="plotly_white", showlegend=False, height=max(320, 160 + 40 * len(layers)),
    )
    return fig


def sensitivity_figure(data: StudyData) -> go.Figure:
    """Each layer's accuracy drop (points) when pruned alone, against its sparsity (%)."""
    go = _plotly()
    fig = go.Figure()
    for layer, points in sorted(data.sensitivity.items()):
        fig.add_trace(go.Scatter(x=[100 * s for s, _, _ in points], y=[100 * d for _, _, d in points],
                                 mode="lines+markers", name=layer))
    fig.add_hline(y=100 * data.max_drop, line={"dash": "dot", "color": CONSTRAINT},
                  annotation_text=f"the study's limit: drop <= {100 * data.max_drop:g} pt")
    fig.update_layout(
        title=f"{data.info.name}: sensitivity of each layer to pruning",
        xaxis={"title": {"text": "sparsity of the one pruned layer (% of its weights set to zero)"}},
        yaxis={"title": {"text": "accuracy drop, no retraining (points)"}},
        template="plotly_white", height=500,
    )
    return fig
