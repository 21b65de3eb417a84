"""The orchestrator: the driver loop (Optuna ask -> Ray worker -> tell), worker actors,
cluster connection, the driver lease, and resume.
"""

from __future__ import annotations

from crest.orchestrator._driver import DriverOptions, Progress, SweepDriver, SweepSummary
from crest.orchestrator._worker import TrialWorker

__all__ = ["SweepDriver", "DriverOptions", "Progress", "SweepSummary", "TrialWorker"]
