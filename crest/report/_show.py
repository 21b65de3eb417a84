"""One trial in full (``crest show``) and the ``crest best`` table, with a summary for wide models.

Everything here reads stored rows, which may have been written by anyone: every number is
checked before use, every string is shown as plain text (no console markup, no control
characters), and a missing or malformed field prints as ``-``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from crest.exceptions import StorageError
from crest.storage import StudyInfo, TrialRecord

__all__ = [
    "SUMMARY_ABOVE",
    "LayerSummary",
    "best_table",
    "layer_rows",
    "print_trial",
    "searched_layers",
    "summarize_layers",
    "trial_report",
]

logger = logging.getLogger(__name__)

SUMMARY_ABOVE = 6
"""``crest best`` shows per-layer columns for at most this many searched layers, else a summary."""

_MISSING = "-"


def _number(value: Any) -> float | None:
    """A finite int or float from a stored row, else None (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _clean(value: Any, limit: int = 200) -> str:
    """A stored value as one line of printable text, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape(value: Any) -> list[int] | None:
    if not isinstance(value, list) or len(value) > 8:
        return None
    dims = [_int(d) for d in value]
    return None if any(d is None or d < 0 for d in dims) else [d for d in dims if d is not None]


def _entries(layers: Any) -> dict[str, Mapping[str, Any]]:
    """The well-formed per-layer entries of a trial's ``layers`` (name -> mapping)."""
    if not isinstance(layers, Mapping):
        return {}
    return {str(k): v for k, v in layers.items() if isinstance(v, Mapping)}


def _param_count(entry: Mapping[str, Any]) -> int | None:
    """A layer's parameter count: from its shape, else from its nonzeros and sparsity."""
    shape = _shape(entry.get("shape"))
    if shape is not None:
        return math.prod(shape)
    nonzeros, sparsity = _number(entry.get("nonzeros")), _number(entry.get("sparsity"))
    if nonzeros is None or sparsity is None or not 0.0 <= sparsity < 1.0:
        return None
    return round(nonzeros / (1.0 - sparsity))


def searched_layers(trial: TrialRecord) -> list[str]:
    """The layers whose settings the sweep chose, in the trial's layer order.

    A layer is searched when a parameter of the trial names it (``prune/fc1.weight/quality``);
    a trial without such parameters counts its weight tensors (names ending in ``weight``).
    """
    layers = _entries(trial.layers)
    named = {key.split("/")[1] for key in trial.params if isinstance(key, str) and key.count("/") == 2}
    chosen = [name for name in layers if name in named]
    return chosen or [name for name in layers if name.endswith("weight")]


@dataclass(frozen=True)
class LayerSummary:
    """A trial's layers in four numbers (None where the trial's row lacks what they need).

    Attributes:
        sparsity: zeros / parameters over all the trial's layers (weighted by parameter count).
        mean_bits: code bits of the quantized layers, weighted by parameter count.
        most_pruned: (layer, sparsity) of the searched layer with the highest sparsity.
        least_pruned: (layer, sparsity) of the searched layer with the lowest sparsity.
    """

    sparsity: float | None
    mean_bits: float | None
    most_pruned: tuple[str, float] | None
    least_pruned: tuple[str, float] | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "sparsity": self.sparsity,
            "mean_bits": self.mean_bits,
            "most_pruned": None if self.most_pruned is None else {"layer": self.most_pruned[0],
                                                                   "sparsity": self.most_pruned[1]},
            "least_pruned": None if self.least_pruned is None else {"layer": self.least_pruned[0],
                                                                     "sparsity": self.least_pruned[1]},
        }


def summarize_layers(trial: TrialRecord) -> LayerSummary:
    """The overall sparsity, mean bits, and most and least pruned searched layers of a trial."""
    layers = _entries(trial.layers)
    zeros = total = 0.0
    bit_sum = bit_count = 0.0
    for entry in layers.values():
        count, sparsity = _param_count(entry), _number(entry.get("sparsity"))
        if count is None or sparsity is None:
            continue
        zeros += sparsity * count
        total += count
        bits = _number(entry.get("bits"))
        if bits is not None and bits > 0:
            bit_sum += bits * count
            bit_count += count
    ranked = sorted(
        (s, name) for name in searched_layers(trial)
        if (s := _number(layers[name].get("sparsity"))) is not None
    )
    return LayerSummary(
        sparsity=zeros / total if total else None,
        mean_bits=bit_sum / bit_count if bit_count else None,
        most_pruned=(ranked[-1][1], ranked[-1][0]) if ranked else None,
        least_pruned=(ranked[0][1], ranked[0][0]) if ranked else None,
    )


def _fmt(value: Any, spec: str) -> str:
    number = _number(value)
    return _MISSING if number is None else format(number, spec)


def best_table(trials: Sequence[TrialRecord], info: StudyInfo, max_drop: float) -> Table:
    """``crest best``'s table: per-layer sparsity and bits columns, or a summary past
    :data:`SUMMARY_ABOVE` searched layers (overall sparsity, mean bits, most and least pruned)."""
    base = info.baseline_accuracy
    title = Text(f"best of '{_clean(info.name)}' (baseline {base:.4f}, max drop {max_drop})") if base is not None else None
    wide = any(len(searched_layers(t)) > SUMMARY_ABOVE for t in trials)
    detail = ("sparsity", "mean bits", "most pruned", "least pruned") if wide else ("sparsity", "bits")
    table = Table("trial", "ratio", "bytes", "accuracy", "drop", *detail, title=title)
    for column in table.columns[7:]:
        column.overflow = "fold"  # a narrow terminal wraps a layer name rather than cutting it
    for t in trials:
        head = [str(t.number), _fmt(t.ratio, ".1f") + "x", _fmt(t.size_bytes, ",.0f"), _fmt(t.accuracy, ".4f"),
                _fmt(t.accuracy_drop, "+.4f")]
        if wide:
            s = summarize_layers(t)
            cells = [_fmt(s.sparsity, ".3f"), _fmt(s.mean_bits, ".2f"),
                     _MISSING if s.most_pruned is None else f"{s.most_pruned[0]} {s.most_pruned[1]:.2f}",
                     _MISSING if s.least_pruned is None else f"{s.least_pruned[0]} {s.least_pruned[1]:.2f}"]
        else:
            layers = _entries(t.layers)
            weights = [v for k, v in layers.items() if k.endswith("weight")]
            cells = [" ".join(_fmt(v.get("sparsity"), ".2f") for v in weights),
                     " ".join(str(b) if (b := _int(v.get("bits"))) else _MISSING for v in weights)]
        table.add_row(*(Text(_clean(c)) for c in (*head, *cells)))
    return table


def layer_rows(trial: TrialRecord) -> list[dict[str, Any]]:
    """One dict per layer of a trial, in model order: name, shape, parameters, sparsity,
    nonzeros, rank, bits, encoding, index_bits and stored bytes (None where not recorded)."""
    rows = []
    for name, entry in _entries(trial.layers).items():
        rank = entry.get("rank")
        rows.append({
            "layer": name,
            "shape": _shape(entry.get("shape")),
            "parameters": _param_count(entry),
            "sparsity": _number(entry.get("sparsity")),
            "nonzeros": _int(entry.get("nonzeros")),
            "rank": [_int(r) for r in rank] if isinstance(rank, list) else _int(rank),
            "bits": _int(entry.get("bits")),
            "encoding": None if entry.get("encoding") is None else _clean(entry.get("encoding"), 40),
            "index_bits": _int(entry.get("index_bits")),
            "bytes": _int(entry.get("bytes")),
        })
    return rows


def trial_report(store: Any, study: str, number: int) -> dict[str, Any]:
    """Everything recorded about one finished trial, JSON-able (``crest show --json``).

    Args:
        store: an open :class:`crest.storage.Store` (read-only is enough).
        study: the study's name.
        number: the trial's number.

    Raises:
        StorageError: no such study, or the study has no finished trial of that number.
    """
    info = store.require_study(study)
    try:
        trial = store.trial(info.id, number)
    except StorageError as e:
        logger.debug("no trial %d in study %r: %s", number, study, e)
        numbers = [t.number for t in store.trials(info.id)]
        known = f"its finished trials are {min(numbers)}..{max(numbers)}" if numbers else "it has no finished trial"
        raise StorageError(f"study '{_clean(study)}' has no finished trial {number} ({known})") from e
    report: dict[str, Any] = trial.as_dict()
    report.update(
        study=info.name,
        optuna_trial_id=trial.optuna_trial_id,
        error=trial.error,
        finished_at=trial.finished_at.isoformat(),
        layers=layer_rows(trial),
        summary=summarize_layers(trial).as_dict(),
    )
    return report


def _cell(value: Any) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, list):
        return "x".join(_cell(v) for v in value) if value else _MISSING
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _clean(value)


def _flat(prefix: str, value: Any, out: list[tuple[str, str]], depth: int = 0) -> None:
    """``details`` as (key path, value) lines, nested dicts joined with dots (bounded depth and count)."""
    if len(out) >= 200:
        return
    if isinstance(value, Mapping) and depth < 4:
        for key, sub in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), sub, out, depth + 1)
        return
    number = _number(value)
    out.append((_clean(prefix, 80), f"{number:.6g}" if number is not None and not isinstance(value, int)
                else _cell(value)))


def print_trial(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print :func:`trial_report`'s dict for a person: a heading, the layers, params and details."""
    console = console or Console()

    def line(text: str) -> None:
        console.print(Text(text))

    line(f"trial {report['trial']} of '{_clean(report['study'])}': {_clean(report['state'])}")
    if report.get("accuracy") is not None:
        line(f"  accuracy   {_fmt(report['accuracy'], '.4f')} (drop {_fmt(report['accuracy_drop'], '+.4f')})")
    if report.get("size_bytes") is not None:
        transport = (f", {_fmt(report['transport_bytes'], ',.0f')} in transport"
                     if report.get("transport_bytes") is not None else "")
        prefix = "at least " if report["state"] == "PRUNED" else ""
        line(f"  size       {prefix}{_fmt(report['size_bytes'], ',.0f')} bytes, "
             f"ratio {_fmt(report['ratio'], '.1f')}x{transport}")
    for key, label in (("reason", "reason"), ("error", "error")):
        if report.get(key):
            line(f"  {label:<10} {_clean(report[key], 500)}")
    line(f"  device     {_cell(report.get('device'))}    node {_cell(report.get('node'))}")
    retry = report.get("retry_of")
    line(f"  attempt    {_cell(report.get('attempt'))}" + (f" (retry of trial {_cell(retry)})" if retry is not None else ""))
    line(f"  wall time  {_fmt(report.get('wall_seconds'), '.2f')} s, finished {_clean(report['finished_at'])}")
    if report.get("artifact_sha256"):
        line(f"  artifact   {_clean(report['artifact_sha256'])}")
    summary = report.get("summary") or {}
    if summary.get("sparsity") is not None:
        bits = summary.get("mean_bits")
        line(f"  overall    sparsity {summary['sparsity']:.3f}"
             + (f", mean bits {bits:.2f}" if bits is not None else ""))
    if report["layers"]:
        table = Table("layer", "shape", "parameters", "sparsity", "rank", "bits", "encoding", "bytes",
                      title="layers")
        for row in report["layers"]:
            table.add_row(*(Text(_cell(row[k])) for k in (
                "layer", "shape", "parameters", "sparsity", "rank", "bits", "encoding", "bytes")))
        console.print(table)
    params = report.get("params") or {}
    if params:
        table = Table("parameter", "value", title="params")
        for key, value in params.items():
            table.add_row(Text(_clean(key)), Text(_cell(value) if not isinstance(value, float) else f"{value:.6g}"))
        console.print(table)
    details: list[tuple[str, str]] = []
    _flat("", report.get("details"), details)
    if details and details != [("", _MISSING)]:
        table = Table("measurement", "value", title="details")
        for key, value in details:
            table.add_row(Text(key or "details"), Text(value))
        console.print(table)
