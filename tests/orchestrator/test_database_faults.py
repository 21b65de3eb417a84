"""The driver through database faults: a PostgreSQL server restarted in mid-sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import optuna
import pytest

from crest.config import parse_sweep
from crest.orchestrator import DriverOptions, Progress, SweepDriver
from crest.storage import Store

from ..helpers import TINY_SWEEP

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def _restart_command() -> list[str]:
    """The command that restarts this machine's PostgreSQL cluster, or a skip with the reason."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").is_dir() else []
    if tool is None or not versions or os.geteuid() != 0:
        reason = "restarting PostgreSQL needs root and pg_ctlcluster with a local cluster"
        if os.environ.get("CREST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (CREST_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return [tool, "--skip-systemctl-redirect", versions[-1].parent.name, "main"]


def test_a_postgres_restart_mid_sweep_loses_nothing(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    cluster = _restart_command()
    done: list[int] = []
    outage = threading.Thread(target=lambda: done.extend(_outage(cluster)), daemon=True)

    def on_progress(p: Progress) -> None:
        if p.complete >= 2 and not outage.is_alive() and not done:  # once, with trials still to run
            outage.start()

    caplog.set_level("WARNING", logger="crest")
    config = parse_sweep({**TINY_SWEEP, "n_trials": 8}, overrides={"storage": postgres_url})
    options = DriverOptions(lease_ttl=60, heartbeat=0.5, poll=0.2, db_retry=90)
    thread_errors: list[BaseException] = []
    threading.excepthook = lambda args: thread_errors.append(args.exc_value)  # type: ignore[assignment]
    try:
        summary = SweepDriver(config, sweep_yaml="# test\n", options=options, on_progress=on_progress).run()
    finally:
        threading.excepthook = threading.__excepthook__
        if outage.ident is not None:
            outage.join(timeout=120)  # the server is up again whatever the sweep did
    assert done == [0, 0], "the server was stopped and started again"
    assert summary.complete == 8 and thread_errors == []
    assert any("retrying in" in r.getMessage() for r in caplog.records), "the driver met the outage"
    store = Store(postgres_url, create=False)
    try:
        info = store.require_study("tiny")
        complete = store.trials(info.id, state="COMPLETE")
        assert sorted(t.number for t in complete) == sorted({t.number for t in complete})
        assert len(complete) == 8
        for t in complete:
            store.get_artifact(t.artifact_sha256)  # verified against its SHA-256
        states = [t.state for t in optuna.load_study(study_name="tiny", storage=store.optuna_storage()).trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) == 8
        assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    finally:
        store.close()


def _outage(cluster: list[str], seconds: float = 4.0) -> list[int]:
    """Stop the server, keep it down for ``seconds``, start it again; the two exit codes."""
    import time

    stop = subprocess.run([*cluster, "stop", "-m", "fast"], capture_output=True, timeout=120)
    time.sleep(seconds)
    start = subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
    return [stop.returncode, start.returncode]
