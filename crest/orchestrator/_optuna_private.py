"""Every use of Optuna's private API in crest, in one place.

crest drives Optuna by ask/tell and keeps its own trial rows keyed by Optuna's trial id,
which Optuna exposes only as ``Trial._trial_id``; a trial settled after a driver died is a
``FrozenTrial``, whose user attributes can be written only through the study's storage
(``Study._storage``); a trial's intermediate values (the scores a trial reports while it
retrains) are written the same way, since ``Trial.report`` refuses multi-objective studies.
A finished trial's attributes are written by :func:`write_trial_attrs` as rows of Optuna's
tables (``optuna.storages._rdb.models``) inside crest's own record transaction, so the
trial's row, its artifact and what Optuna and optuna-dashboard read of it commit at once.
:func:`check_private_api` (run by the test suite against the Optuna that is installed)
fails loudly when a release renames any of these.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import optuna
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from crest.exceptions import CrestError

__all__ = [
    "check_private_api",
    "copy_trial",
    "create_running_trial",
    "finish_trial",
    "frozen_trial",
    "set_constraints",
    "set_intermediate_value",
    "set_user_attrs",
    "trial_id",
    "write_trial_attrs",
]

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


def write_trial_attrs(
    session: Session, trial_id: int, user_attrs: dict[str, Any], constraints: list[float] | None = None
) -> None:
    """Write a running trial's user attributes (and its constraint values, the system
    attribute of :func:`set_constraints`) as rows of Optuna's tables, in ``session``'s
    transaction: the caller commits them with its own rows. Keys written before are
    replaced (as Optuna's upsert does), so writing again is harmless.

    Optuna's cached storage re-reads a running trial from the database, so what is written
    here is what ``study.tell`` and every later read see.
    """
    from optuna.storages._rdb import models

    tables = [(models.TrialUserAttributeModel.__table__, user_attrs)]
    if constraints is not None:
        tables.append((models.TrialSystemAttributeModel.__table__, {_constraints_key(): constraints}))
    for table, attrs in tables:
        if not attrs:
            continue
        session.execute(delete(table).where(table.c.trial_id == trial_id, table.c.key.in_(list(attrs))))
        session.execute(insert(table), [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()
        ])


def create_running_trial(
    study: optuna.Study, params: dict[str, Any], distributions: dict[str, Any]
) -> tuple[int, int]:
    """Create a RUNNING trial of ``study`` holding ``params`` in one commit (what ``ask`` and
    one ``suggest`` per parameter write in one commit each); returns (trial id, number)."""
    template = optuna.trial.FrozenTrial(
        number=-1, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=datetime.now(),
        datetime_complete=None, params=params, distributions=distributions, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1,
    )
    tid = study._storage.create_new_trial(study._study_id, template_trial=template)
    return tid, study._storage.get_trial(tid).number


def frozen_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """One trial of ``study`` by its storage id (a running one is read from the database)."""
    return study._storage.get_trial(trial_id)


def copy_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> tuple[int, int]:
    """Add a copy of ``trial`` (any state) to ``study``; returns its (trial id, number) there."""
    tid = study._storage.create_new_trial(study._study_id, template_trial=trial)
    return tid, study._storage.get_trial(tid).number


def finish_trial(
    study: optuna.Study, trial_id: int, state: optuna.trial.TrialState, values: list[float] | None = None
) -> None:
    """Set a running trial's end state (and objective values) in one commit, without the
    sampler's ``after_trial`` (its constraint values are written already, see
    :func:`write_trial_attrs`); a trial that is finished already is left as it is."""
    try:
        study._storage.set_trial_state_values(trial_id, state, values)
    except optuna.exceptions.UpdateFinishedTrialError:
        logger.debug("trial id %d was finished already (a retried write whose first commit landed)", trial_id)


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
        _check_attr_tables()
        _check_trial_copies()
    except (AttributeError, ImportError) as e:
        raise CrestError(f"Optuna {optuna.__version__} changed a private name crest uses: {e}") from e


def _check_attr_tables() -> None:
    """The attribute tables :func:`write_trial_attrs` writes, as Optuna's RDB storage names them."""
    from optuna.storages._rdb import models

    for model, name in ((models.TrialUserAttributeModel, "trial_user_attributes"),
                        (models.TrialSystemAttributeModel, "trial_system_attributes")):
        columns = set(model.__table__.c.keys())
        if model.__tablename__ != name or not {"trial_id", "key", "value_json"} <= columns:
            raise CrestError(f"Optuna's {name} table no longer has the columns crest writes")


def _check_trial_copies() -> None:
    """:func:`create_running_trial`, :func:`copy_trial` and :func:`finish_trial` as crest uses them."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    tid, number = create_running_trial(study, {"x": 0.5}, {"x": dist})
    finish_trial(study, tid, optuna.trial.TrialState.COMPLETE, [1.0])
    finish_trial(study, tid, optuna.trial.TrialState.COMPLETE, [1.0])
    copy = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    copy_trial(copy, study.trials[0])
    t = copy.trials[0]
    if (number, t.params, t.values, t.state) != (0, {"x": 0.5}, [1.0], optuna.trial.TrialState.COMPLETE):
        raise CrestError("Optuna's trial templates no longer behave as crest expects")
