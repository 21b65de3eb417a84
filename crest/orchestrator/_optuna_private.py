"""Every use of Optuna's private API in crest, in one place.

crest drives Optuna by ask/tell and keeps its own trial rows keyed by Optuna's trial id,
which Optuna exposes only as ``Trial._trial_id``; a trial settled after a driver died is a
``FrozenTrial``, whose user attributes can be written only through the study's storage
(``Study._storage``); a trial's intermediate values (the scores a trial reports while it
retrains) are written the same way, since ``Trial.report`` refuses multi-objective studies.
A finished trial's attributes and its end (state, objective values) are written by
:func:`write_trial_attrs` and :func:`end_trial` as rows of Optuna's tables
(``optuna.storages._rdb.models``) inside crest's own record transaction, so the trial's
row, its artifact and what Optuna and optuna-dashboard read of it commit at once; a new
trial is created the same way (:func:`insert_running_trial`), in one transaction of
crest's engine, with Optuna's numbering.
:func:`check_private_api` (run by the test suite against the Optuna that is installed)
fails loudly when a release renames any of these.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import UTC, datetime
from typing import Any

import optuna
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from crest.exceptions import CrestError

__all__ = [
    "check_private_api",
    "copy_trial",
    "end_trial",
    "frozen_trial",
    "insert_running_trial",
    "optuna_study_id",
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
    session: Session, trial_id: int, user_attrs: dict[str, Any], constraints: list[float] | None = None,
    *, replace: bool = True,
) -> None:
    """Write a running trial's user attributes (and its constraint values, the system
    attribute of :func:`set_constraints`) as rows of Optuna's tables, in ``session``'s
    transaction: the caller commits them with its own rows. Keys written before are
    replaced (as Optuna's upsert does), so writing again is harmless; ``replace=False``
    skips looking for them, for a caller that knows the trial has none of these keys (a
    trial recorded in the transaction that ends it: a failed commit left nothing).

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
        if replace:
            session.execute(delete(table).where(table.c.trial_id == trial_id, table.c.key.in_(list(attrs))))
        session.execute(insert(table), [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()
        ])


def optuna_study_id(study: optuna.Study) -> int:
    """Optuna's storage id of ``study`` (what its trial rows hold in ``study_id``)."""
    return int(study._study_id)


def _utc_naive() -> datetime:
    """Now, as Optuna's RDB storage keeps its datetimes: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


@functools.cache
def _trial_statements() -> dict[str, Any]:
    """The statements :func:`insert_running_trial` and :func:`end_trial` run, built once
    (a driver runs them for every trial)."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    running = optuna.trial.TrialState.RUNNING
    return {
        "create": insert(trials).values(study_id=bindparam("sid"), number=None, state=running,
                                        datetime_start=bindparam("start")),
        "count": select(func.count()).select_from(trials).where(
            trials.c.study_id == bindparam("sid"), trials.c.trial_id < bindparam("tid")),
        "number": update(trials).where(trials.c.trial_id == bindparam("tid")).values(number=bindparam("new_number")),
        "params": insert(models.TrialParamModel.__table__),
        "end": update(trials).where(trials.c.trial_id == bindparam("tid"), trials.c.state == running).values(
            state=bindparam("new_state"), datetime_complete=bindparam("done")),
        "values": insert(models.TrialValueModel.__table__),
    }


def insert_running_trial(
    session: Session, study_id: int, params: dict[str, Any], distributions: dict[str, Any]
) -> tuple[int, int]:
    """Create a RUNNING trial of Optuna study ``study_id`` holding ``params``, as rows of
    Optuna's tables in ``session``'s transaction (the caller commits); returns (trial id,
    number). The number is Optuna's: the study's trials with a smaller id. What Optuna's
    ``create_new_trial`` writes, less its queries (it reads the study and checks each
    parameter's distribution against earlier trials: the caller's in-memory sampler checked).
    """
    from optuna.distributions import distribution_to_json

    sql = _trial_statements()
    created = session.execute(sql["create"], {"sid": study_id, "start": _utc_naive()})
    tid = int(created.inserted_primary_key[0])  # type: ignore[attr-defined]
    number = int(session.execute(sql["count"], {"sid": study_id, "tid": tid}).scalar_one())
    session.execute(sql["number"], {"tid": tid, "new_number": number})
    if params:
        session.execute(sql["params"], [
            {"trial_id": tid, "param_name": name, "param_value": distributions[name].to_internal_repr(value),
             "distribution_json": distribution_to_json(distributions[name])}
            for name, value in params.items()
        ])
    return tid, number


def end_trial(
    session: Session, trial_id: int, state: optuna.trial.TrialState, values: list[float] | None = None
) -> bool:
    """End a RUNNING trial in ``session``'s transaction: its state, completion time and
    objective values (what ``set_trial_state_values`` writes; the caller commits). A trial
    that is not RUNNING (finished already) is left as it is; returns whether it was ended."""
    from optuna.storages._rdb import models

    sql = _trial_statements()
    ended = session.execute(sql["end"], {"tid": trial_id, "new_state": state, "done": _utc_naive()})
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        logger.debug("trial id %d was not running; left as it is", trial_id)
        return False
    if values:
        rows = []
        for objective, value in enumerate(values):
            stored, kind = models.TrialValueModel.value_to_stored_repr(float(value))
            rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
        session.execute(sql["values"], rows)
    return True


def frozen_trial(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """One trial of ``study`` by its storage id (a running one is read from the database)."""
    return study._storage.get_trial(trial_id)


def copy_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> tuple[int, int]:
    """Add a copy of ``trial`` (any state) to ``study``; returns its (trial id, number) there."""
    tid = study._storage.create_new_trial(study._study_id, template_trial=trial)
    return tid, study._storage.get_trial(tid).number


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
        _check_rdb_writes()
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
    """:func:`copy_trial` as crest uses it: a finished trial copied into another study."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, 1.0)
    copy = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    tid, number = copy_trial(copy, study.trials[0])
    t = copy.trials[0]
    if (number, trial_id(t), t.params, t.values, t.state) != (
        0, tid, study.trials[0].params, [1.0], optuna.trial.TrialState.COMPLETE
    ):
        raise CrestError("Optuna's trial templates no longer behave as crest expects")


def _check_rdb_writes() -> None:
    """:func:`insert_running_trial` and :func:`end_trial` on a real RDB storage (a SQLite
    file), read back through Optuna's own API."""
    import tempfile
    from pathlib import Path

    from sqlalchemy.orm import sessionmaker

    with tempfile.TemporaryDirectory() as tmp:
        storage = optuna.storages.RDBStorage(f"sqlite:///{Path(tmp) / 'probe.db'}")
        try:
            study = optuna.create_study(storage=storage, directions=["minimize", "maximize"])
            study.enqueue_trial({"x": 0.25})  # a WAITING trial numbered before ours
            dist = optuna.distributions.FloatDistribution(0.0, 1.0)
            with sessionmaker(storage.engine)() as s, s.begin():
                tid, number = insert_running_trial(s, optuna_study_id(study), {"x": 0.5}, {"x": dist})
                ended = end_trial(s, tid, optuna.trial.TrialState.COMPLETE, [1.0, float("inf")])
            with sessionmaker(storage.engine)() as s, s.begin():
                again = end_trial(s, tid, optuna.trial.TrialState.FAIL)
            t = study.get_trials(deepcopy=False)[-1]
            if (number, t.number, t._trial_id, t.params, t.values, t.state, ended, again) != (
                1, 1, tid, {"x": 0.5}, [1.0, float("inf")], optuna.trial.TrialState.COMPLETE, True, False
            ) or t.datetime_complete is None or t.distributions != {"x": dist}:
                raise CrestError("Optuna's trial tables no longer read back what crest writes")
        finally:
            storage.remove_session()
            storage.engine.dispose()
