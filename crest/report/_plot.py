"""``crest plot``: a study's plots as a PNG, an SVG or an interactive HTML file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from crest.exceptions import ConfigError
from crest.report._data import StudyData, load_study_data
from crest._atomic import write_atomic
from crest.storage import Store, TrialRecord

__all__ = ["PLOT_KINDS", "PlotResult", "check_kind", "plot_study", "resolve_kinds"]

logger = logging.getLogger(__name__)

PLOT_KINDS = ("pareto", "history", "layers", "sensitivity")
"""The plots one by one; ``all`` is each of them the study has data for."""

FORMATS = {".png": "png", ".svg": "svg", ".html": "html"}


@dataclass(frozen=True)
class PlotResult:
    """What ``plot_study`` wrote: the file, its size in bytes, and the plots in it."""

    path: Path
    size_bytes: int
    kinds: list[str]
    trial: int | None


def check_kind(kind: str) -> None:
    """Raise ConfigError unless ``kind`` is one of PLOT_KINDS or "all"."""
    if kind != "all" and kind not in PLOT_KINDS:
        raise ConfigError(f"--kind: '{kind}' is not one of {', '.join(PLOT_KINDS)}, all")


def resolve_kinds(data: StudyData, kind: str, trial: TrialRecord | None) -> list[str]:
    """The plots ``kind`` stands for in this study.

    Raises:
        ConfigError: an unknown kind, or one the study has no data for.
    """
    check_kind(kind)
    if kind == "sensitivity" and not data.sensitivity:
        raise ConfigError(
            f"study '{data.info.name}' has no sensitivity table: run 'crest sensitivity SWEEP_FILE' first"
        )
    if kind in ("pareto", "history", "layers", "all") and not data.complete and trial is None:
        raise ConfigError(f"study '{data.info.name}' has no complete trial to plot yet")
    if kind == "layers" and trial is None:
        raise ConfigError(f"study '{data.info.name}' has no feasible trial yet; pass --trial N")
    if kind != "all":
        return [kind]
    return [k for k in PLOT_KINDS if (k != "layers" or trial is not None) and (k != "sensitivity" or data.sensitivity)]


def plot_study(store: Store, study: str, output: Path, *, kind: str = "pareto", trial: int | None = None) -> PlotResult:
    """Draw the study's plots into ``output``; its extension picks the format.

    Args:
        store: the crest database.
        study: the study's name.
        output: a ``.png`` or ``.svg`` file (matplotlib) or an ``.html`` file (Plotly, with
            plotly.js inside the file, so it opens without a network).
        kind: "pareto", "history", "layers", "sensitivity" or "all".
        trial: the trial whose layers to show; default: the best feasible trial.

    Raises:
        ConfigError: unknown extension or kind, no such trial, or no data for the kind.
        StorageError: no such study.
    """
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{output}: unknown extension '{output.suffix}' (use .png, .svg or .html)")
    check_kind(kind)
    data = load_study_data(store, study)
    chosen = data.trial(trial) if trial is not None else data.best
    kinds = resolve_kinds(data, kind, chosen)
    if fmt == "html":
        from crest.report._interactive import render_html

        blob = render_html(data, kinds, trial=chosen).encode("utf-8")
    else:
        from crest.report._static import render_static

        blob = render_static(data, kinds, trial=chosen, fmt=fmt)
    write_atomic(output, blob, force=True)  # plots and reports are rewritten in place
    shown = chosen.number if chosen is not None and "layers" in kinds else None
    return PlotResult(output, len(blob), kinds, shown)
