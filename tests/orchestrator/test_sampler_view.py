"""The sampler's bounded view: which trials it keeps, and that it stays a faithful view."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from crest.config import parse_sweep
from crest.exceptions import ConfigError
from crest.orchestrator._optuna_private import end_trial, insert_running_trial, optuna_study_id
from crest.orchestrator._sampler_view import BEST_PER_OBJECTIVE, SamplerView, select
from crest.orchestrator._space import CONSTRAINT_ATTR, sampler_for

from ..helpers import TINY_SWEEP

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(directions: list[str], n: int, *, value: object = None) -> optuna.Study:
    """An in-memory study of ``n`` finished trials: value i (or ``value(i)``), feasible when
    i is even, every tenth one failed."""
    study = optuna.create_study(directions=directions)
    for i in range(n):
        t = study.ask()
        t.suggest_float("x", 0.0, 1.0)
        if i % 10 == 9:
            study.tell(t, state=TrialState.FAIL)
            continue
        t.set_user_attr(CONSTRAINT_ATTR, [-1.0 if i % 2 == 0 else float(i)])
        values = value(i) if callable(value) else [float(i)] * len(directions)
        study.tell(t, values)
    return study


def test_a_study_within_the_window_is_kept_whole_less_its_failures() -> None:
    trials = _study(["minimize"], 60).get_trials(deepcopy=False)
    kept = select(trials, [optuna.study.StudyDirection.MINIMIZE], window=100)
    assert [t.number for t in kept] == [t.number for t in trials if t.state != TrialState.FAIL]


def test_the_window_keeps_the_best_feasible_and_the_newest() -> None:
    study = _study(["minimize"], 1000)
    trials = study.get_trials(deepcopy=False)
    kept = select(trials, study.directions, window=200)
    numbers = [t.number for t in kept]
    assert len(kept) == 200 and numbers == sorted(numbers)
    feasible = sorted(t.number for t in trials if t.state == TrialState.COMPLETE and t.number % 2 == 0)
    assert set(feasible[:BEST_PER_OBJECTIVE]) <= set(numbers), "the smallest feasible values"
    newest = [t.number for t in trials if t.state == TrialState.COMPLETE][-(200 - BEST_PER_OBJECTIVE):]
    assert set(newest) <= set(numbers)
    assert all(t.state == TrialState.COMPLETE for t in kept)


def test_each_objective_keeps_its_own_best() -> None:
    # objective 0 best at small i, objective 1 (maximised) best at small i too but reversed order
    study = _study(["minimize", "maximize"], 800, value=lambda i: [float(i), float(-i if i < 400 else i)])
    trials = study.get_trials(deepcopy=False)
    kept = {t.number for t in select(trials, study.directions, window=150)}
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.number % 2 == 0]
    best1 = sorted(feasible, key=lambda t: -t.values[1])[:BEST_PER_OBJECTIVE]
    best0 = sorted(feasible, key=lambda t: t.values[0])[:BEST_PER_OBJECTIVE]
    assert {t.number for t in best0} <= kept and {t.number for t in best1} <= kept


def _tell(view: SamplerView, key: int, value: float) -> None:
    t = view.memory.ask()
    t.suggest_float("x", 0.0, 1.0)
    view._ids[key] = (t._trial_id, t.number)
    view.finished(key, TrialState.COMPLETE, [value], [-1.0])


def test_the_view_is_re_selected_past_a_quarter_and_keeps_running_trials() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        db = optuna.create_study(sampler=sampler_for("tpe", seed=0, n_trials=1000))
    view = SamplerView(db, window=100)
    view.load()
    # a trial asked before the view grows past its window, told after it was re-selected
    early = view.memory.ask()
    early.suggest_float("x", 0.0, 1.0)
    view._ids[-1] = (early._trial_id, early.number)
    for i in range(300):
        _tell(view, i, float(300 - i))  # the newest trials are the best ones
    held = [t for t in view.memory.get_trials(deepcopy=False) if t.state.is_finished()]
    assert 100 <= len(held) <= 125 + 1
    assert min(t.value for t in held) == 1.0
    running = [t for t in view.memory.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert len(running) == 1 and running[0].params == early.params
    view.finished(-1, TrialState.COMPLETE, [0.5], [-1.0])
    assert min(t.value for t in view.memory.get_trials(deepcopy=False) if t.state.is_finished()) == 0.5


def test_without_a_window_the_view_holds_every_trial() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        db = optuna.create_study(sampler=sampler_for("tpe", seed=0, n_trials=300))
    view = SamplerView(db, window=None)
    view.load()
    for i in range(300):
        _tell(view, i, float(i))
    assert len(view.memory.get_trials(deepcopy=False)) == 300


def test_load_selects_from_the_database_as_the_live_view_does(tmp_path: Path) -> None:
    """A resumed driver's view is the selection of the study's trials in the database,
    written there as the driver writes them (one transaction each)."""
    from sqlalchemy.orm import sessionmaker

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'v.db'}")
    study = optuna.create_study(storage=storage, directions=["minimize"])
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i in range(400):
        with sessionmaker(storage.engine)() as s, s.begin():
            tid, number = insert_running_trial(s, optuna_study_id(study), {"x": i / 400}, {"x": dist})
            assert number == i
            end_trial(s, tid, TrialState.COMPLETE, [float((i * 37) % 400)])
    view = SamplerView(study, window=120)
    view.load()
    held = view.memory.get_trials(deepcopy=False)
    assert len(held) == 120
    values = sorted(t.value for t in held)
    assert values[:BEST_PER_OBJECTIVE] == [float(v) for v in range(BEST_PER_OBJECTIVE)]
    assert [t.params["x"] for t in held[-10:]] == [i / 400 for i in range(390, 400)]
    storage.remove_session()
    storage.engine.dispose()


def test_the_window_is_a_sweep_key_outside_the_search_identity() -> None:
    base = parse_sweep(TINY_SWEEP)
    assert base.sampler_window == 500
    wide = parse_sweep({**TINY_SWEEP, "sampler_window": None})
    assert wide.sampler_window is None and wide.search_identity() == base.search_identity()
    with pytest.raises(ConfigError, match="sampler_window"):
        parse_sweep({**TINY_SWEEP, "sampler_window": 10})
