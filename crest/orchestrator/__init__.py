"""The orchestrator: the driver loop (Optuna ask -> Ray worker -> tell), worker actors,
cluster connection, the driver lease, and resume.
"""

from __future__ import annotations

from crest.orchestrator._driver import SweepDriver
from crest.orchestrator._reports import DriverOptions, Progress, SweepSummary
from crest.orchestrator._worker import TrialWorker

__all__ = ["SweepDriver", "DriverOptions", "Progress", "SweepSummary", "TrialWorker"]
