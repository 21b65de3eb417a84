"""What a user takes out of a study: plots, a self-contained HTML report, and what
optuna-dashboard shows of it.

Importing this package is cheap: matplotlib and Plotly load only when a plot is drawn.
"""

from __future__ import annotations

from crest.report._dashboard import (
    dashboard_feasibility_mismatches,
    read_study_note,
    write_study_note,
)
from crest.report._data import StudyData, load_study_data
from crest.report._plot import PLOT_KINDS, PlotResult, plot_study
from crest.report._report import write_report
from crest.report._show import best_table, print_trial, trial_report
from crest.report._table import trials_csv
from crest.report._units import parse_accuracy, parse_size

__all__ = [
    "PLOT_KINDS",
    "PlotResult",
    "StudyData",
    "best_table",
    "dashboard_feasibility_mismatches",
    "load_study_data",
    "parse_accuracy",
    "parse_size",
    "plot_study",
    "print_trial",
    "read_study_note",
    "trial_report",
    "trials_csv",
    "write_report",
    "write_study_note",
]
