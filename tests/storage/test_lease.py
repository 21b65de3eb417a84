"""The driver lease on every backend: the holder's TTL, the database clock, process
identities that cannot collide, and a fence on every write of a deposed driver."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import optuna
import pytest

from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import LeaseError
from crest.storage import Store, lease_owner_id, study_status
from crest.storage._lease import db_now

from ..helpers import TINY_SWEEP


@pytest.fixture
def store(storage_url: str) -> Iterator[Store]:
    s = Store(storage_url, create=True)
    yield s
    s.close()


def _config(n: int = 5):  # type: ignore[no-untyped-def]
    return parse_sweep({**TINY_SWEEP, "study": "s1", "n_trials": n, "storage": "postgresql://alice:SECRET@h/db"})


def _later(seconds: float):  # type: ignore[no-untyped-def]
    """A lease clock ``seconds`` ahead of the database's (time passing, without sleeping)."""
    return lambda s: db_now(s) + timedelta(seconds=seconds)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def test_a_live_lease_is_refused_and_a_stale_one_taken_by_the_holders_ttl(store: Store) -> None:
    info = store.create_study(_config(), sweep_yaml="x")
    a, b = lease_owner_id(), "elsewhere:1:abcd:otherboot/1"
    store.acquire_lease(info.id, a, ttl=30)
    store.acquire_lease(info.id, a, ttl=30)  # re-entrant for its holder
    with pytest.raises(LeaseError, match="another driver"):
        store.acquire_lease(info.id, b, ttl=30)
    # a taker with a shorter TTL still judges the holder by the holder's 30 s
    store.now = _later(10)
    with pytest.raises(LeaseError, match="another driver"):
        store.acquire_lease(info.id, b, ttl=1)
    store.now = db_now
    assert store.heartbeat(info.id, a)
    assert study_status(store, store.require_study("s1"), lease_ttl=1)["driver"] == "running"
    # past the holder's TTL (in the database's clock) the lease is free
    store.now = _later(31)
    store.acquire_lease(info.id, b, ttl=5)
    assert not store.heartbeat(info.id, a), "the old holder learns it lost the lease"
    assert store.require_study("s1").lease_ttl == 5
    store.release_lease(info.id, b)
    assert store.require_study("s1").lease_owner is None


def test_heartbeats_are_written_in_the_database_clock(store: Store) -> None:
    info = store.create_study(_config(), sweep_yaml="x", owner="me:1:x:y", ttl=30)
    with store.session() as s:
        now = db_now(s)
    beat = store.require_study("s1").lease_heartbeat
    assert beat is not None and abs((now - beat).total_seconds()) < 5
    assert info.lease_owner == "me:1:x:y"


def test_a_dead_holder_is_recognised_only_in_its_own_process_space(store: Store) -> None:
    info = store.create_study(_config(), sweep_yaml="x")
    pid = _dead_pid()
    # same host name, same pid, but another boot or pid namespace: it may be alive there
    elsewhere = f"{socket.gethostname()}:{pid}:dead:another-boot/4026531836"
    store.acquire_lease(info.id, elsewhere, ttl=3600)
    with pytest.raises(LeaseError):
        store.acquire_lease(info.id, lease_owner_id(), ttl=3600)
    # a holder of this very process space whose pid is gone is free at once
    store.now = _later(3601)
    store.acquire_lease(info.id, lease_owner_id(pid=pid), ttl=3600)
    store.now = db_now
    store.acquire_lease(info.id, lease_owner_id(), ttl=3600)
    # an id of the old form (host:pid:random) is never judged dead by its pid
    store.now = _later(3601)
    store.acquire_lease(info.id, f"{socket.gethostname()}:{pid}:old", ttl=3600)
    store.now = db_now
    with pytest.raises(LeaseError):
        store.acquire_lease(info.id, lease_owner_id(), ttl=3600)
    assert os.getpid() != pid


def _trial_blob() -> bytes:
    w = np.zeros((16, 16), np.float32)
    w[::3, ::2] = 0.5
    return gpu.encode({"w": w})


def test_a_deposed_driver_writes_nothing(storage_url: str) -> None:
    old = Store(storage_url, create=True)
    new = Store(storage_url, create=False)
    try:
        info = old.create_study(_config(), sweep_yaml="x", owner="old:1:x:y", ttl=30)
        old.fence(info.id, "old:1:x:y")
        study = optuna.create_study(study_name="s1", storage=old.optuna_storage())
        trial = study.ask()
        # the new driver takes over a lease that looks dead to it
        new.now = _later(31)
        new.acquire_lease(info.id, "new:2:x:y", ttl=30)
        with pytest.raises(LeaseError, match="no longer holds"):
            old.record_trial(info.id, optuna_trial_id=trial._trial_id, number=0, state="COMPLETE",
                             params={}, attempt=1, blob=_trial_blob(), accuracy=0.9)
        with pytest.raises(LeaseError):
            study.tell(trial, 1.0)
        with pytest.raises(LeaseError):
            old.update_config(info.id, _config(n=99))
        assert new.trials(info.id) == []
        frozen = optuna.load_study(study_name="s1", storage=new.optuna_storage()).trials[0]
        assert frozen.state == optuna.trial.TrialState.RUNNING and frozen.values is None
        assert new.require_study("s1").n_trials == 5
        # the holder's own writes go through
        new.fence(info.id, "new:2:x:y")
        new.record_trial(info.id, optuna_trial_id=trial._trial_id, number=0, state="COMPLETE",
                         params={}, attempt=1, blob=_trial_blob(), accuracy=0.9)
        optuna.load_study(study_name="s1", storage=new.optuna_storage()).tell(0, 1.0)
    finally:
        old.close()
        new.close()


def test_the_storage_url_is_never_stored(store: Store) -> None:
    store.create_study(_config(), sweep_yaml="x")
    with store.session() as s:
        stored = s.connection().exec_driver_sql("SELECT config_json FROM crest_studies").scalar_one()
    assert "SECRET" not in stored and "storage" not in stored
    assert store.require_study("s1").config.storage is None

