"""Issue 14: trials asked ahead per worker, progress kept from events, attributes in one commit."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from crest.config import parse_sweep
from crest.exceptions import StorageError
from crest.orchestrator import DriverOptions, Progress, SweepDriver
from crest.orchestrator._optuna_private import (
    DASHBOARD_CONSTRAINTS_KEY,
    trial_id,
    write_trial_attrs,
)
from crest.storage import Store, trial_state_counts

from ..helpers import TINY_SWEEP

OPTIONS = DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2)


def _run(url: str, **changes: Any) -> list[Progress]:
    seen: list[Progress] = []
    config = parse_sweep({**TINY_SWEEP, **changes}, overrides={"storage": url})
    SweepDriver(config, sweep_yaml="# test\n", options=OPTIONS, on_progress=seen.append).run()
    return seen


def _assert_progress_is_the_database(p: Progress, url: str) -> None:
    store = Store(url, create=False, read_only=True)
    try:
        counts = trial_state_counts(store, "tiny")
        best = store.best(store.require_study("tiny").id, max_drop=0.05, top=1)
    finally:
        store.close()
    assert (p.complete, p.pruned, p.failed, p.waiting) == (
        counts["COMPLETE"], counts["PRUNED"], counts["FAIL"], counts["WAITING"]
    )
    assert p.running == 0 and counts["RUNNING"] == 0
    assert best and p.best_size == best[0].size_bytes and p.best_ratio == pytest.approx(best[0].ratio)


@pytest.mark.usefixtures("ray_local")
def test_a_worker_is_kept_two_trials_deep_and_progress_matches_the_database(sqlite_url: str) -> None:
    seen = _run(sqlite_url, n_trials=3, workers=1)
    # one worker, two trials in flight: the next one is asked and sent while it runs one
    assert max(p.running for p in seen) == 2
    assert seen[-1].message == "done" and seen[-1].complete == 3
    _assert_progress_is_the_database(seen[-1], sqlite_url)
    # counts only ever grow during a run: kept from the events, never lost between them
    done = [p.complete + p.pruned for p in seen]
    assert done == sorted(done)

    resumed = _run(sqlite_url, n_trials=5, workers=1)
    loop = [p for p in resumed if p.baseline_accuracy is not None]  # the set-up's messages have none
    assert loop[0].complete == 3, "a resumed run starts from the study's counts"
    assert resumed[-1].complete == 5
    _assert_progress_is_the_database(resumed[-1], sqlite_url)


def _study(url: str) -> tuple[Store, optuna.Study]:
    store = Store(url, create=True)
    study = optuna.create_study(study_name="attrs", storage=store.optuna_storage())
    return store, study


def _fresh_trial(url: str) -> optuna.trial.FrozenTrial:
    """The study's first trial as a new reader (optuna-dashboard) sees it."""
    reader = Store(url, create=False)
    try:
        return optuna.load_study(study_name="attrs", storage=reader.optuna_storage()).trials[0]
    finally:
        reader.close()


def test_attributes_commit_with_the_trial_row_and_are_what_optuna_reads(storage_url: str) -> None:
    store, study = _study(storage_url)
    try:
        info = store.create_study(parse_sweep({**TINY_SWEEP}, overrides={"storage": storage_url}),
                                  sweep_yaml="# t\n", owner="me", ttl=30)
        study.get_trials()  # the cached storage now holds the trial below as running
        trial = study.ask()
        tid = trial_id(trial)
        study.get_trials()

        def broken(s: Any) -> None:
            write_trial_attrs(s, tid, {"size_bytes": 1}, [0.5])
            raise StorageError("the transaction fails after the attributes were written")

        with pytest.raises(StorageError):
            store.record_trial(info.id, optuna_trial_id=tid, number=trial.number, state="FAIL", params={},
                               attempt=1, error="x", also=broken)
        assert store.trial_by_optuna_id(tid) is None
        assert study.trials[0].user_attrs == {} and DASHBOARD_CONSTRAINTS_KEY not in study.trials[0].system_attrs

        attrs = {"size_bytes": 123, "ratio": 4.5, "crest_constraint": [-0.01]}
        store.record_trial(info.id, optuna_trial_id=tid, number=trial.number, state="FAIL", params={}, attempt=1,
                           error="x", also=lambda s: write_trial_attrs(s, tid, attrs, [-0.01]))
        study.tell(trial.number, 1.0)
        # the driver's own (cached) study, and a fresh reader such as optuna-dashboard
        for t in (study.trials[0], _fresh_trial(storage_url)):
            assert t.state == TrialState.COMPLETE and t.user_attrs == attrs
            assert t.system_attrs[DASHBOARD_CONSTRAINTS_KEY] == [-0.01]
        # written again (a resumed driver settling the trial): replaced, not doubled
        with store.session() as s:
            write_trial_attrs(s, tid, {"ratio": 5.0}, [-0.02])
        again = _fresh_trial(storage_url)
        assert again.user_attrs["ratio"] == 5.0 and again.system_attrs[DASHBOARD_CONSTRAINTS_KEY] == [-0.02]
    finally:
        store.close()


def _count(db: Path, sql: str) -> int:
    """One count read from the SQLite file, 0 while its tables do not exist yet."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # the driver has not created the tables yet
        return 0


def _optuna_running(db: Path) -> int:
    return _count(db, "SELECT count(*) FROM trials WHERE state = 'RUNNING'")


def _complete(db: Path) -> int:
    return _count(db, "SELECT count(*) FROM crest_trials WHERE state = 'COMPLETE'")


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_kill_9_with_a_trial_asked_ahead_requeues_it_and_resumes_exactly(tmp_path: Path) -> None:
    n = 8
    sweep = {**TINY_SWEEP, "n_trials": n, "workers": 1,
             "stages": [{"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
                        {"type": "retrain", "epochs": 40},  # about a second a trial
                        {"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    db = tmp_path / "crest.db"
    proc = subprocess.Popen([sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_signals)  # noqa: PLW1509 (no threads here)
    try:
        deadline = time.monotonic() + 240
        # one worker: a trial running and the next one asked ahead, both RUNNING in Optuna
        while not (_complete(db) >= 2 and _optuna_running(db) == 2):
            assert time.monotonic() < deadline, "no trial asked ahead within 240 s"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        running = {int(n) for (n,) in conn.execute("SELECT number FROM trials WHERE state = 'RUNNING'")}
    store = Store(f"sqlite:///{db}", create=False, read_only=True)
    try:
        kept = store.trials(store.require_study("tiny").id)
    finally:
        store.close()
    before = {t.number: t.artifact_sha256 for t in kept}
    # a trial whose row committed just before the kill, but that Optuna was not yet told
    # of, is told on resume and not failed; every other trial Optuna holds RUNNING is
    told_late = {t.number for t in kept if t.state in ("COMPLETE", "PRUNED")} & running
    orphans = len(running - told_late)
    assert len(running) >= 2, "the kill left the running trial and the one asked ahead"
    assert orphans >= 1
    out = subprocess.run([sys.executable, "-m", "crest", "resume", "tiny", "-q"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, preexec_fn=_default_signals, check=False)
    assert out.returncode == 0, out.stderr
    store = Store(f"sqlite:///{db}", create=False, read_only=True)
    try:
        counts = trial_state_counts(store, "tiny")
        records = store.trials(store.require_study("tiny").id)
    finally:
        store.close()
    assert counts["COMPLETE"] == n and counts["RUNNING"] == counts["WAITING"] == 0
    assert {t.number: t.artifact_sha256 for t in records if t.number in before} == before
    failed = {t.number: t for t in records if t.state == "FAIL"}
    assert set(failed) == running - told_late, "exactly the trials left running were failed"
    for number, f in failed.items():
        reruns = [t for t in records if t.retry_of == number]
        # each one, started or only asked ahead, ran again exactly once, with its parameters
        assert len(reruns) == 1 and reruns[0].state == "COMPLETE"
        # (a row failed by recover holds Optuna's proposed parameters; a run's, the fixed ones too)
        assert {k: reruns[0].params[k] for k in f.params} == f.params
        assert reruns[0].attempt == f.attempt + 1
