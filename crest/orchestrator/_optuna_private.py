"""Every use of Optuna's private API in crest, in one place.

crest drives Optuna by ask/tell and keeps its own trial rows keyed by Optuna's trial id,
which Optuna exposes only as ``Trial._trial_id``; a trial settled after a driver died is a
``FrozenTrial``, whose user attributes can be written only through the study's storage
(``Study._storage``); a trial's intermediate values (the scores a trial reports while it
retrains) are written the same way, since ``Trial.report`` refuses multi-objective studies. :func:`check_private_api` (run by the test suite against the Optuna
that is installed) fails loudly when a release renames either.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from crest.exceptions import CrestError

__all__ = ["trial_id", "set_user_attrs", "set_constraints", "set_intermediate_value", "check_private_api"]

# what optuna-dashboard reads to mark a trial infeasible (Optuna's _CONSTRAINTS_KEY)
DASHBOARD_CONSTRAINTS_KEY = "constraints"

logger = logging.getLogger(__name__)


def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """Optuna's storage id of a trial (unique in the database, unlike its number)."""
    return int(trial._trial_id)


def set_user_attrs(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    """Set user attributes of any trial of ``study``, running or not yet told."""
    storage = study._storage
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def set_constraints(study: optuna.Study, trial_id: int, values: list[float]) -> None:
    """Store a trial's constraint values where Optuna's samplers and optuna-dashboard read
    them (<= 0 is feasible). TPE's ``constraints_func`` writes the same after the trial; a
    random sampler writes nothing, so crest always writes them itself."""
    study._storage.set_trial_system_attr(trial_id, _constraints_key(), values)


def set_intermediate_value(study: optuna.Study, trial_id: int, step: int, value: float) -> None:
    """Record a running trial's score after ``step`` (what ``Trial.report`` stores, and
    what optuna-dashboard draws as the trial's learning curve); any number of objectives."""
    study._storage.set_trial_intermediate_value(trial_id, step, value)


def _constraints_key() -> str:
    from optuna.samplers._base import _CONSTRAINTS_KEY

    return str(_CONSTRAINTS_KEY)


def check_private_api() -> None:
    """Raise :class:`CrestError` when the installed Optuna lacks what this module uses."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    try:
        tid = trial_id(trial)
        set_user_attrs(study, tid, {"crest_probe": 1})
        set_constraints(study, tid, [-1.0])
        set_intermediate_value(study, tid, 1, 0.5)
        frozen = study.trials[0]
        if frozen.intermediate_values != {1: 0.5}:
            raise CrestError("Optuna's intermediate values no longer behave as crest expects")
        if trial_id(frozen) != tid or frozen.user_attrs.get("crest_probe") != 1:
            raise CrestError("Optuna's trial ids or user attributes no longer behave as crest expects")
        if _constraints_key() != DASHBOARD_CONSTRAINTS_KEY or frozen.system_attrs.get(DASHBOARD_CONSTRAINTS_KEY) != [-1.0]:
            raise CrestError("Optuna stores constraints under another key than optuna-dashboard reads")
    except (AttributeError, ImportError) as e:
        raise CrestError(f"Optuna {optuna.__version__} changed a private name crest uses: {e}") from e
