"""Every use of Optuna's private API in crest, in one place.

crest drives Optuna by ask/tell and keeps its own trial rows keyed by Optuna's trial id,
which Optuna exposes only as ``Trial._trial_id``; a trial settled after a driver died is a
``FrozenTrial``, whose user attributes can be written only through the study's storage
(``Study._storage``). :func:`check_private_api` (run by the test suite against the Optuna
that is installed) fails loudly when a release renames either.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from crest.exceptions import CrestError

__all__ = ["trial_id", "set_user_attrs", "check_private_api"]

logger = logging.getLogger(__name__)


def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """Optuna's storage id of a trial (unique in the database, unlike its number)."""
    return int(trial._trial_id)


def set_user_attrs(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    """Set user attributes of any trial of ``study``, running or not yet told."""
    storage = study._storage
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def check_private_api() -> None:
    """Raise :class:`CrestError` when the installed Optuna lacks what this module uses."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    try:
        tid = trial_id(trial)
        set_user_attrs(study, tid, {"crest_probe": 1})
        frozen = study.trials[0]
        if trial_id(frozen) != tid or frozen.user_attrs.get("crest_probe") != 1:
            raise CrestError("Optuna's trial ids or user attributes no longer behave as crest expects")
    except AttributeError as e:
        raise CrestError(f"Optuna {optuna.__version__} changed a private name crest uses: {e}") from e
