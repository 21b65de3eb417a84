"""Early stopping through the real driver: real Ray workers, real databases, real torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from crest.config import parse_sweep
from crest.exceptions import StorageError
from crest.orchestrator import DriverOptions, SweepDriver
from crest.orchestrator._ledger import PRUNED_REASON_ATTR, SIZE_BOUNDS_ATTR
from crest.storage import Store, study_status, trial_state_counts

from ..helpers import TINY_SWEEP

pytestmark = pytest.mark.usefixtures("ray_local")

OPTIONS = DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2)
STAGES = [
    {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 2.5]}}},
    {"type": "retrain", "epochs": 3},
    {"type": "quantize", "layers": {"*.weight": {"bits": [2, 5]}}},
]


def _params(quality: float, bits: int) -> dict[str, Any]:
    return {"prune/fc1.weight/quality": quality, "prune/fc2.weight/quality": quality,
            "quantize/fc1.weight/bits": bits, "quantize/fc2.weight/bits": bits}


def _config(url: str, **changes: Any) -> Any:
    sweep = {**TINY_SWEEP, "workers": 1, "stages": STAGES, "early_stopping": {"n_startup_trials": 1}, **changes}
    return parse_sweep(sweep, overrides={"storage": url})


def _enqueue(url: str, *params: dict[str, Any]) -> None:
    """Trials the study will run first (Optuna serves queued trials before proposing)."""
    store = Store(url, create=True)
    try:
        study = optuna.create_study(study_name="tiny", storage=store.optuna_storage(), load_if_exists=True)
        for p in params:
            study.enqueue_trial(p)
    finally:
        store.close()


def test_trials_that_cannot_win_are_pruned_with_their_size_and_reason(storage_url: str) -> None:
    """A light prune (feasible), a lighter one (larger: stopped before retraining), a
    crushing one (stopped after its first epoch), then TPE's own proposals."""
    _enqueue(storage_url, _params(0.6, 3), _params(0.1, 5), _params(2.5, 2))
    summary = SweepDriver(_config(storage_url, n_trials=6), sweep_yaml="# test\n", options=OPTIONS).run()
    assert summary.complete + summary.pruned == 6 and summary.pruned >= 2
    store = Store(storage_url, create=False)
    try:
        info = store.require_study("tiny")
        rows = {t.number: t for t in store.trials(info.id)}
        first, larger, crushed = rows[0], rows[1], rows[2]
        assert first.state == "COMPLETE"
        assert larger.state == "PRUNED" and larger.reason.startswith("size-dominated")  # type: ignore[union-attr]
        assert larger.size_bytes >= first.size_bytes and larger.artifact_sha256 is None  # type: ignore[operator]
        assert larger.ratio == pytest.approx(info.dense_bytes / larger.size_bytes)  # type: ignore[operator]
        assert crushed.state == "PRUNED" and "after epoch 1" in (crushed.reason or "")
        assert all(t.wall_seconds and t.wall_seconds > 0 for t in rows.values())
        assert crushed.wall_seconds < first.wall_seconds  # type: ignore[operator]
        counts = trial_state_counts(store, "tiny")
        assert counts["COMPLETE"] + counts["PRUNED"] == 6 and counts["RUNNING"] == counts["WAITING"] == 0
        assert counts["PRUNED"] == sum(1 for t in rows.values() if t.state == "PRUNED")
        status = study_status(store, info, lease_ttl=30.0)  # what crest status prints
        assert (status["complete"], status["pruned"]) == (counts["COMPLETE"], counts["PRUNED"])
        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        trials = {t.number: t for t in study.trials}
        # the curves are Optuna's intermediate values: all epochs of a complete trial, the
        # epochs a stopped one ran
        assert sorted(trials[0].intermediate_values) == [1, 2, 3]
        assert sorted(trials[2].intermediate_values) == [1] and trials[1].intermediate_values == {}
        for n, t in trials.items():
            row = rows[n]
            assert t.state.name == row.state
            low, high = t.user_attrs[SIZE_BOUNDS_ATTR]
            if row.state == "COMPLETE":
                assert low <= row.size_bytes <= high  # type: ignore[operator]
            else:
                assert t.user_attrs[PRUNED_REASON_ATTR] == row.reason and row.size_bytes == low
                assert t.system_attrs["constraints"][0] > 0  # infeasible to TPE
    finally:
        store.close()


def test_a_pruned_trial_recorded_but_not_told_is_told_on_resume(sqlite_url: str) -> None:
    """The driver died between crest's PRUNED row and Optuna's tell: the next driver tells
    Optuna from the row; the trial stays pruned, counts toward n_trials, and is not re-run."""
    SweepDriver(_config(sqlite_url, n_trials=2), sweep_yaml="", options=OPTIONS).run()
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        orphan = study.ask()
        for name in _params(2.0, 3):
            orphan.suggest_float(name, 0.1, 2.5) if "quality" in name else orphan.suggest_int(name, 2, 5)
        study._storage.set_trial_intermediate_value(orphan._trial_id, 1, 0.25)  # reported before it stopped
        store.record_trial(info.id, optuna_trial_id=orphan._trial_id, number=orphan.number, state="PRUNED",
                           params=dict(orphan.params), attempt=1, size_bytes=1984, ratio=4.86,
                           wall_seconds=0.1, reason="score 0.2500 after epoch 1 is below the bar")
    finally:
        store.close()
    summary = SweepDriver(_config(sqlite_url, n_trials=4), sweep_yaml="", options=OPTIONS).run()
    assert summary.complete + summary.pruned == 4 and summary.ran_this_run == 1
    store = Store(sqlite_url, create=False)
    try:
        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        told = study.trials[orphan.number]
        assert told.state.name == "PRUNED" and told.intermediate_values == {1: 0.25}
        assert told.user_attrs[PRUNED_REASON_ATTR] == "score 0.2500 after epoch 1 is below the bar"
        assert told.system_attrs["constraints"][0] > 0
        records = store.trials(store.require_study("tiny").id)
        assert [t.number for t in records] == sorted({t.number for t in records})  # nothing recorded twice
        assert not any(t.retry_of == orphan.number for t in records)  # and it was not re-run
        assert trial_state_counts(store, "tiny")["RUNNING"] == 0
    finally:
        store.close()


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _rows(db: Path) -> dict[int, tuple[str, str | None, int | None, str | None]]:
    try:
        store = Store(f"sqlite:///{db}", create=False, read_only=True)
    except StorageError:  # the driver has not created crest's tables yet
        return {}
    try:
        info = store.get_study("tiny")
        if info is None:
            return {}
        return {t.number: (t.state, t.artifact_sha256, t.size_bytes, t.reason) for t in store.trials(info.id)}
    finally:
        store.close()


def _launch(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "crest", *args, "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_signals)


def _kill_hard(proc: subprocess.Popen[str]) -> None:
    try:
        proc.send_signal(signal.SIGKILL)  # the driver only, as `kill -9 PID` would
        proc.wait(timeout=30)
    finally:
        try:  # the Ray processes its session left
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_keeps_pruned_trials_pruned(tmp_path: Path) -> None:
    n = 14
    sweep = {**TINY_SWEEP, "n_trials": n, "workers": 2, "early_stopping": {"n_startup_trials": 2},
             "stages": [{"type": "prune", "layers": {"*.weight": {"quality": [0.1, 2.5]}}},
                        {"type": "retrain", "epochs": 40},  # about a second a trial
                        {"type": "quantize", "layers": {"*.weight": {"bits": [2, 5]}}}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    db = tmp_path / "crest.db"
    first = _launch(tmp_path, "launch", "sweep.yaml")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = [s for s, *_ in _rows(db).values()] if db.exists() else []
            if states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2:
                break
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.3)
        else:
            raise AssertionError("no pruned trial within 240 s")
    finally:
        _kill_hard(first)
    before = _rows(db)
    assert len(before) < n, "killed mid-sweep"
    out = subprocess.run([sys.executable, "-m", "crest", "resume", "tiny", "-q"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, preexec_fn=_default_signals)
    assert out.returncode == 0, out.stderr
    after = _rows(db)
    assert {k: after[k] for k in before} == before, "recorded trials (pruned ones too) are kept as they were"
    finished = [k for k, (state, *_) in after.items() if state in ("COMPLETE", "PRUNED")]
    assert len(finished) == n, "exactly n_trials complete or pruned trials"
    store = Store(f"sqlite:///{db}", create=False, read_only=True)
    try:
        counts = trial_state_counts(store, "tiny")
        assert counts["COMPLETE"] + counts["PRUNED"] == n and counts["RUNNING"] == counts["WAITING"] == 0
        records = store.trials(store.require_study("tiny").id)
        rerun = {t.retry_of for t in records if t.retry_of is not None}
        assert rerun <= {t.number for t in records if t.state == "FAIL"}, "only interrupted trials ran again"
    finally:
        store.close()
    # the recorded reasons read back from the CLI
    listed = subprocess.run([sys.executable, "-m", "crest", "best", "tiny", "--pruned", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    pruned = {t["trial"]: t for t in json.loads(listed.stdout)}
    assert pruned.keys() == {k for k, (state, *_) in after.items() if state == "PRUNED"}
    for number, t in pruned.items():
        assert t["reason"] == after[number][3] and t["size_bytes"] == after[number][2] and t["state"] == "PRUNED"
