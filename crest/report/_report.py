"""``crest report``: one self-contained HTML page of a study, readable offline.

The plots are matplotlib SVGs inside the page as ``data:`` URIs, the style is inline, and
there is no script: the file opens the same with or without a network, and prints.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crest import __version__
from crest.report._data import StudyData, load_study_data
from crest._atomic import write_atomic
from crest.report._plot import resolve_kinds
from crest.report._static import render_static, weight_layers
from crest.report._units import KB
from crest.storage import Store, TrialRecord

__all__ = ["render_report", "write_report"]

logger = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td:first-child { border-left: 4px solid #ff7f0e; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; border: 1px solid #e5e5e5; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""

_CAPTIONS = {
    "pareto": "Every complete trial's artifact size against its accuracy. Blue: feasible; grey crosses: "
              "infeasible (accuracy drop over the limit); orange: the Pareto front of the feasible trials.",
    "history": "The best feasible compression ratio after each complete trial, and over wall time.",
    "layers": "Per weight tensor of the trial: the share of weights pruned to zero, and the code width "
              "of the shared (k-means) values.",
    "sensitivity": "Each layer's accuracy drop when it alone is pruned, without retraining "
                   "(crest sensitivity).",
}


def write_report(store: Store, study: str, output: Path, *, top: int = 10) -> int:
    """Write the study's report to ``output`` (atomically); returns its size in bytes.

    Args:
        store: the crest database.
        study: the study's name.
        output: the HTML file to write.
        top: how many of the best feasible trials the table lists.

    Raises:
        StorageError: no such study.
        ConfigError: the file cannot be written.
    """
    data = load_study_data(store, study)
    blob = render_report(data, top=top).encode("utf-8")
    write_atomic(output, blob, force=True)  # plots and reports are rewritten in place
    return len(blob)


def render_report(data: StudyData, *, top: int = 10) -> str:
    """The report page as HTML text."""
    best = data.best
    front = {t.number for t in data.front}
    ranked = sorted(data.feasible, key=lambda t: (t.size_bytes, -t.accuracy, t.number))[:top]  # type: ignore[operator]
    kinds = resolve_kinds(data, "all", best) if data.complete else []
    sections = [
        _h(2, "Summary"), _summary(data),
        _h(2, f"Best {len(ranked)} feasible trials, smallest first"),
        _trials_table(ranked, front) if ranked else _p(f"No trial is feasible yet (accuracy drop <= {data.max_drop:g})."),
        _h(2, "Plots"), *(_figure(data, kind, best) for kind in kinds),
    ]
    if not kinds:
        sections.append(_p("No complete trial to plot yet."))
    if best is not None:
        sections += [_h(2, f"Layers of the best trial ({best.number})"), _layers_table(best)]
    sections += [_h(2, "Decoder checks of the nodes"), _node_table(data.node_checks)]
    sections += [_h(2, "Sweep file"), f"<pre>{html.escape(data.info.sweep_yaml)}</pre>"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = html.escape(f"crest study '{data.info.name}'")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
        f'<p class="sub">workload {html.escape(data.info.workload)}; report written {now} by crest {__version__}</p>\n'
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _h(level: int, text: str) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: set[int] = frozenset(),  # type: ignore[assignment]
           row_class: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        cells = "".join(
            f'<td class="n">{_cell(v)}</td>' if i in numeric else f"<td>{_cell(v)}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    return html.escape("-" if value is None else str(value))


class _Raw(str):
    """Cell text that is already HTML."""


def _summary(data: StudyData) -> str:
    info, counts, best = data.info, data.counts, data.best
    base = info.baseline_accuracy
    limit = f"accuracy drop <= {data.max_drop:g}"
    if base is not None:
        limit += f" (accuracy >= {base - data.max_drop:.4f})"
    complete = data.complete
    rows: list[tuple[str, Any]] = [
        ("workload", info.workload),
        ("objectives", ", ".join(data.objectives)),
        ("sampler", data.config.get("sampler", "tpe")),
        ("constraint", limit),
        ("baseline accuracy", "-" if base is None else f"{base:.4f}"),
        ("dense fp32 size", "-" if not info.dense_bytes else f"{info.dense_bytes:,} bytes ({info.dense_bytes / KB:,.1f} KB)"),
        ("trials", (f"{counts.get('COMPLETE', 0)} complete of {info.n_trials} wanted, {counts.get('FAIL', 0)} failed, "
                    f"{counts.get('RUNNING', 0)} running, {counts.get('WAITING', 0)} waiting")),
        ("feasible trials", f"{len(data.feasible)} of {len(complete)} complete"),
        ("Pareto front", f"{len(data.front)} trials"),
        ("trial time", f"{sum(t.wall_seconds or 0.0 for t in data.trials):,.1f} s summed over the trials"),
        ("study created", info.created_at.strftime("%Y-%m-%d %H:%M UTC")),
    ]
    if best is not None:
        transport = f", {best.transport_bytes:,} bytes in transport (Huffman)" if best.transport_bytes else ""
        rows.insert(6, ("best feasible trial", _Raw(
            f"<b>trial {best.number}: {best.ratio or 0:.1f}x</b>, {best.size_bytes:,} bytes{html.escape(transport)}, "
            f"accuracy {best.accuracy:.4f} (drop {best.accuracy_drop:+.4f})")))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _trials_table(trials: list[TrialRecord], front: set[int]) -> str:
    header = ["trial", "ratio", "size (bytes)", "transport (bytes)", "accuracy", "drop", "sparsity per layer",
              "bits per layer", "Pareto front"]
    rows = []
    for t in trials:
        layers = weight_layers(t)
        rows.append([
            t.number, f"{t.ratio or 0:.1f}x", f"{t.size_bytes:,}",
            "-" if t.transport_bytes is None else f"{t.transport_bytes:,}", f"{t.accuracy:.4f}",
            f"{t.accuracy_drop:+.4f}", " ".join(f"{v.get('sparsity', 0):.2f}" for _, v in layers),
            " ".join(str(v.get("bits") or "-") for _, v in layers), "yes" if t.number in front else "",
        ])
    classes = ["front" if t.number in front else "" for t in trials]
    return _table(header, rows, numeric={0, 1, 2, 3, 4, 5}, row_class=classes)


def _layers_table(trial: TrialRecord) -> str:
    header = ["tensor", "encoding", "sparsity", "nonzeros", "bits", "index bits", "rank"]
    rows = [
        [name, v.get("encoding"), f"{100 * float(v.get('sparsity') or 0):.2f}%",
         None if v.get("nonzeros") is None else f"{v['nonzeros']:,}", v.get("bits"),
         v.get("index_bits"), v.get("rank")]
        for name, v in sorted((trial.layers or {}).items())
    ]
    return _table(header, rows, numeric={2, 3, 4, 5, 6})


def _node_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return _p("No node checks recorded.")
    rows = [
        [c["node_id"][:12], c["host"], c["mode"], c.get("gpu_name"), c.get("cuda_version"), c.get("cupy_version"),
         _Raw('<span class="pass">pass</span>') if c["passed"]
         else _Raw(f'<span class="fail">FAIL</span>: {html.escape(str(c.get("reason")))}'),
         c.get("reason") if c["passed"] else "", f"{c['seconds']:.2f}", c["checked_at"][:19]]
        for c in checks
    ]
    header = ["node", "host", "mode", "GPU", "CUDA", "CuPy", "result", "note", "seconds", "checked (UTC)"]
    return _table(header, rows, numeric={8})


def _figure(data: StudyData, kind: str, best: TrialRecord | None) -> str:
    svg = render_static(data, [kind], trial=best, fmt="svg")
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    alt = html.escape(f"{kind} plot of {data.info.name}")
    return f'<figure><img src="{uri}" alt="{alt}"><figcaption>{html.escape(_CAPTIONS[kind])}</figcaption></figure>'
