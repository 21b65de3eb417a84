"""The orchestrator: the driver loop (Optuna ask -> Ray worker -> tell), worker actors,
cluster connection, the driver lease, and resume.

The public names are imported when first used: a Ray task that needs one submodule (the
node check, a worker actor) imports only what that submodule needs, not the driver's
Optuna, SQLAlchemy and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crest._lazy import lazy_attributes

if TYPE_CHECKING:
    from crest.orchestrator._driver import SweepDriver
    from crest.orchestrator._reports import DriverOptions, Progress, SweepSummary
    from crest.orchestrator._worker import TrialWorker

_WHERE = {  # public name -> the module that defines it
    "SweepDriver": "crest.orchestrator._driver",
    "DriverOptions": "crest.orchestrator._reports",
    "Progress": "crest.orchestrator._reports",
    "SweepSummary": "crest.orchestrator._reports",
    "TrialWorker": "crest.orchestrator._worker",
}

# spelled out, so that type checkers and linters see what the lazy names export
__all__ = ["DriverOptions", "Progress", "SweepDriver", "SweepSummary", "TrialWorker"]


__getattr__ = lazy_attributes(__name__, _WHERE)
