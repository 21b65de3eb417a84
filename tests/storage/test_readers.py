"""A read-only Store on every backend: Optuna's trial states read with plain SQL, no write
possible, nothing created."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import inspect

from crest.config import parse_sweep
from crest.exceptions import StorageError
from crest.storage import Store, trial_state_counts
from tests.helpers import TINY_SWEEP


def test_trial_states_read_with_sql_match_optunas_own(storage_url: str) -> None:
    writer = Store(storage_url, create=True)
    try:
        study = optuna.create_study(storage=writer.optuna_storage(), study_name="s1")
        other = optuna.create_study(storage=writer.optuna_storage(), study_name="s2")
        for value in (1.0, 2.0):
            study.tell(study.ask(), value)
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
        study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
        study.ask()  # left running
        study.enqueue_trial({})
        other.tell(other.ask(), 3.0)
        want = {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1, "RUNNING": 1, "WAITING": 1}
        by_optuna: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            by_optuna[t.state.name] = by_optuna.get(t.state.name, 0) + 1
        assert by_optuna == want
        assert trial_state_counts(writer, "s1") == want
    finally:
        writer.close()
    reader = Store(storage_url, create=False, upgrade=False, read_only=True)
    try:
        assert trial_state_counts(reader, "s1") == want
        assert trial_state_counts(reader, "none") == dict.fromkeys(want, 0)
    finally:
        reader.close()


def test_a_read_only_store_cannot_write_and_creates_nothing(storage_url: str) -> None:
    Store(storage_url, create=True).close()  # crest's tables only
    reader = Store(storage_url, create=False, read_only=True)
    try:
        before = set(inspect(reader.engine).get_table_names())
        assert "trials" not in before
        assert trial_state_counts(reader, "s1")["COMPLETE"] == 0
        with pytest.raises(StorageError):
            reader.create_study(parse_sweep(TINY_SWEEP), sweep_yaml="x")
        assert set(inspect(reader.engine).get_table_names()) == before
        assert reader.list_studies() == []
    finally:
        reader.close()


def test_read_only_excludes_creating_and_upgrading(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="read-only"):
        Store(sqlite_url, create=True, read_only=True)
    Store(sqlite_url, create=True).close()
    with pytest.raises(ValueError, match="read-only"):
        Store(sqlite_url, create=False, upgrade=True, read_only=True)
