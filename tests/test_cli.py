"""The crest CLI as a user runs it: real processes, a real local Ray, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from crest import gpu
from crest.exceptions import StorageError
from crest.storage import Store, trial_state_counts
from crest.tasks import evaluate, get_workload, model_from_tensors

from .helpers import TINY_SWEEP, sqlite_revision


def _default_signals() -> None:
    """In a child: Ctrl-C acts as in a terminal, even when pytest was started from a shell
    that ignores SIGINT (a background job), whose children would inherit the ignore."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def crest(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crest", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, preexec_fn=_default_signals,
    )


def _write_sweep(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**TINY_SWEEP, **changes}, sort_keys=False))
    return path


def test_help_explains_every_command(tmp_path: Path) -> None:
    out = crest("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("launch", "resume", "status", "studies", "best", "export", "inspect", "workloads", "upgrade-storage"):
        assert command in out.stdout
    launch = crest("launch", "--help", cwd=tmp_path).stdout
    for option in ("--study", "--storage", "--n-trials", "--workers", "--address"):
        assert option in launch


def test_inspect_shows_the_header(tmp_path: Path) -> None:
    w = np.zeros((64, 32), np.float32)
    w[::5, ::3] = np.float32(0.75)
    blob = gpu.encode({"fc.weight": w, "fc.bias": np.ones(64, np.float32)})
    (tmp_path / "a.crest").write_bytes(blob)
    out = crest("inspect", "a.crest", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fc.weight" in out.stdout and "sparse" in out.stdout and gpu.sha256(blob) in out.stdout
    manifest = json.loads(crest("inspect", "a.crest", "--json", cwd=tmp_path).stdout)
    assert manifest["sha256"] == gpu.sha256(blob)
    assert [t["name"] for t in manifest["tensors"]] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["inspect", "missing.crest"], "cannot read missing.crest"),
        (["inspect", "junk.crest"], "magic"),
        (["launch", "missing.yaml"], "no such sweep file"),
        (["launch", "bad.yaml"], "bad.yaml: n_trials: "),
        (["launch", "badpattern.yaml"], "matches no parameter"),
        (["status", "nope"], "no database at crest.db"),
        (["best", "nope", "--storage", "nonsense"], "not a database URL"),
        (["--log-level", "loud", "studies"], "--log-level: 'loud' is not one of"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], words: str) -> None:
    (tmp_path / "junk.crest").write_bytes(b"this is not an artifact at all")
    _write_sweep(tmp_path / "bad.yaml", n_trials=-3)
    _write_sweep(tmp_path / "badpattern.yaml", stages=[{"type": "prune", "layers": {"conv9.*": {"quality": 1.0}}}])
    out = crest(*args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert words in out.stderr
    assert out.stderr.startswith("crest: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "crest.db").exists()


def _complete(db: Path, study: str) -> int:
    if not db.exists() or not _has_tables(db):
        return 0
    try:
        store = Store(f"sqlite:///{db}", create=False)
    except StorageError:  # the launch is still creating the schema
        return 0
    try:
        info = store.get_study(study)
        return 0 if info is None else store.count_trials(info.id).get("COMPLETE", 0)
    finally:
        store.close()


def _complete_and_running(db: Path) -> bool:
    """Whether Optuna holds a COMPLETE and a RUNNING trial (read straight from its table)."""
    import sqlite3
    from contextlib import closing

    if not db.exists():
        return False
    with closing(sqlite3.connect(db)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='trials'").fetchone():
            return False
        states = dict(conn.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
    return states.get("COMPLETE", 0) >= 1 and states.get("RUNNING", 0) >= 1


def _has_tables(db: Path) -> bool:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name='crest_alembic_version'").fetchone())


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_hard(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)  # the driver only, as `kill -9 PID` would
    proc.wait(timeout=30)


def _reap(proc: subprocess.Popen[str]) -> None:
    try:  # Ray processes the killed driver left in its session
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_read_only_commands_refuse_an_older_schema_and_upgrade_storage_upgrades_it(tmp_path: Path) -> None:
    import shutil

    original = sorted((Path(__file__).parent / "storage" / "data").glob("crest-*.db"))[0]
    db = tmp_path / "old.db"
    shutil.copy(original, db)
    url = f"sqlite:///{db}"
    for args in (["studies"], ["status", "old"], ["best", "old"], ["nodes", "old"]):
        out = crest(*args, "--storage", url, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert "older than this crest" in out.stderr and "crest upgrade-storage" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert sqlite_revision(db) == original.stem.removeprefix("crest-")
    up = crest("upgrade-storage", "--storage", url, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert f"upgraded from {original.stem.removeprefix('crest-')}" in up.stdout
    assert "already current" in crest("upgrade-storage", "--storage", url, cwd=tmp_path).stdout
    listed = crest("studies", "--storage", url, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [s["study"] for s in json.loads(listed.stdout)] == ["old"]
    missing = crest("upgrade-storage", "--storage", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no database at" in missing.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_launch_status_best_export_round_trip(tmp_path: Path) -> None:
    _write_sweep(tmp_path / "sweep.yaml", n_trials=3)
    out = crest("--log-level", "info", "--log-file", "crest.log", "launch", "sweep.yaml", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 complete trials" in out.stdout and "best of 'tiny'" in out.stdout
    # the log: on stderr (plain lines when piped) and in the file, with the driver's events
    log = (tmp_path / "crest.log").read_text()
    for words in ("took the lease on study 'tiny'", "passed the decoder check", "trial 2 complete",
                  "released the lease on study 'tiny'"):
        assert words in log and words in out.stderr, words
    assert "crest: INFO: " in out.stderr
    status = json.loads(crest("status", "tiny", "--json", cwd=tmp_path).stdout)
    assert {k: status[k] for k in ("study", "n_trials", "complete", "running", "failed", "waiting")} == {
        "study": "tiny", "n_trials": 3, "complete": 3, "running": 0, "failed": 0, "waiting": 0,
    }
    best = json.loads(crest("best", "tiny", "--json", "--top", "2", "--max-drop", "1", cwd=tmp_path).stdout)
    assert 1 <= len(best) <= 2
    for row in best:
        assert {"trial", "accuracy", "accuracy_drop", "size_bytes", "ratio", "params", "artifact_sha256"} <= set(row)
    assert [r["size_bytes"] for r in best] == sorted(r["size_bytes"] for r in best)
    top = best[0]
    out = crest("export", "tiny", "--trial", str(top["trial"]), "-o", "best.crest", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    blob = (tmp_path / "best.crest").read_bytes()
    assert gpu.sha256(blob) == top["artifact_sha256"] and len(blob) == top["size_bytes"]
    wl = get_workload("tiny-digits")
    assert evaluate(model_from_tensors(wl, gpu.decode(blob)), wl) == top["accuracy"]
    # export refuses to overwrite without --force
    again = crest("export", "tiny", "-o", "best.crest", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    listing = json.loads(crest("studies", "--json", cwd=tmp_path).stdout)
    assert [s["study"] for s in listing] == ["tiny"]


@pytest.mark.slow
def test_user_workload_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "my_workload.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "from crest.tasks import Workload\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(512, 8, generator=g); y = (x[:, 0] + x[:, 1] > 0).long()\n"
        "    net = lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))\n"
        "    return Workload(name='mine', build_model=net, train_set=TensorDataset(x[:400], y[:400]),\n"
        "                    test_set=TensorDataset(x[400:], y[400:]), baseline_epochs=5, batch_size=32, lr=0.01)\n"
    )
    _write_sweep(
        tmp_path / "mine.yaml", study="mine", workload="my_workload:make", n_trials=2,
        stages=[{"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.0]}}},
                {"type": "quantize", "layers": {"*.weight": {"bits": [3, 4]}}}],
    )
    out = crest("launch", "mine.yaml", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(crest("status", "mine", "--json", cwd=tmp_path).stdout)["complete"] == 2


@pytest.mark.slow
def test_kill_9_and_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    n = 16  # enough that the sweep is still running after the refused second driver (several s)
    _write_sweep(tmp_path / "sweep.yaml", n_trials=n, stages=[
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 150},  # about 2 s a trial: slow enough to kill mid-sweep
        {"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}},
    ])
    db = tmp_path / "crest.db"
    seen_complete: dict[int, str] = {}

    def snapshot() -> dict[int, str]:
        store = Store(f"sqlite:///{db}", create=False)
        try:
            info = store.require_study("tiny")
            return {t.number: t.artifact_sha256 for t in store.trials(info.id, state="COMPLETE")}
        finally:
            store.close()

    first = subprocess.Popen([sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_default_signals)
    try:
        _wait_for(lambda: _complete(db, "tiny") >= 2, 180, "2 complete trials")
        # a second driver on the live study is refused, and writes nothing
        second = crest("launch", "sweep.yaml", "-q", cwd=tmp_path)
        assert second.returncode == 2 and "another driver" in second.stderr, second.stderr
        _kill_hard(first)
    finally:
        _reap(first)
    seen_complete = snapshot()
    assert 2 <= len(seen_complete) < n

    # resume, kill again mid-way, resume to the end
    again = subprocess.Popen([sys.executable, "-m", "crest", "resume", "tiny", "-q"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_default_signals)
    try:
        target = min(n - 1, len(seen_complete) + 2)
        _wait_for(lambda: _complete(db, "tiny") >= target or again.poll() is not None, 180, "more trials")
        _kill_hard(again)
    finally:
        _reap(again)
    middle = snapshot()
    assert {k: middle[k] for k in seen_complete} == seen_complete, "a completed trial changed"

    out = crest("resume", "tiny", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    final = snapshot()
    assert len(final) == n, "exactly n_trials complete trials"
    assert {k: final[k] for k in middle} == middle, "completed trials were kept as they were"
    store = Store(f"sqlite:///{db}", create=False)
    try:
        info = store.require_study("tiny")
        records = store.trials(info.id)
        complete = [t for t in records if t.state == "COMPLETE"]
        failed_numbers = {t.number for t in records if t.state == "FAIL"}
        # every re-run trial replaces a failed (interrupted) one, never a completed one
        for t in complete:
            if t.retry_of is not None:
                assert t.retry_of in failed_numbers
                assert t.retry_of not in {c.number for c in complete}
        for t in complete:
            blob = store.get_artifact(t.artifact_sha256)  # verifies SHA-256
            assert gpu.sha256(blob) == t.artifact_sha256
        counts = trial_state_counts(store, "tiny")
        assert counts["COMPLETE"] == n and counts["RUNNING"] == 0
        assert info.lease_owner is None
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_leaves_the_study_resumable(tmp_path: Path, sig: signal.Signals) -> None:
    _write_sweep(tmp_path / "sweep.yaml", n_trials=6, stages=[
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 150},
        {"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}},
    ])
    db = tmp_path / "crest.db"
    proc = subprocess.Popen([sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_signals)
    try:
        # interrupt while a trial runs (a worker may still be starting when the first
        # trial completes; with nothing in flight there would be nothing to re-queue)
        _wait_for(lambda: _complete_and_running(db), 180, "a complete trial and a running one")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        _reap(proc)
    assert proc.returncode == 130, err
    assert "crest resume tiny" in err
    status = json.loads(crest("status", "tiny", "--json", cwd=tmp_path).stdout)
    assert status["running"] == 0 and status["driver"] == "stopped"
    interrupted = status["failed"]
    assert interrupted >= 1, "the trial that was running is recorded as interrupted"
    assert status["waiting"] == interrupted, "each interrupted trial's parameters are queued again"
    out = crest("resume", "tiny", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    status = json.loads(crest("status", "tiny", "--json", cwd=tmp_path).stdout)
    assert status["complete"] == 6 and status["waiting"] == 0 and status["running"] == 0


def test_help_shows_the_results_commands_and_the_best_filters(tmp_path: Path) -> None:
    out = crest("--help", cwd=tmp_path)
    assert out.returncode == 0 and "plot" in out.stdout and "report" in out.stdout
    best = " ".join(crest("best", "--help", cwd=tmp_path).stdout.split())
    for words in ("--csv", "--max-size", "--min-accuracy", "KB = 1,000 bytes", "KiB = 1,024 bytes", "93%"):
        assert words in best, words
    plot = " ".join(crest("plot", "--help", cwd=tmp_path).stdout.split())
    for words in (".png, .svg or .html", "--kind", "pareto, history, layers, sensitivity, or all", "--trial"):
        assert words in plot, words
    assert "--output" in crest("report", "--help", cwd=tmp_path).stdout


def test_resume_imports_a_study_s_own_code_only_when_the_user_names_it(tmp_path: Path) -> None:
    """A database row naming module:function (a tampered one, say) runs nothing on resume."""
    from crest.config import parse_sweep

    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_wl.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef make():\n    raise SystemExit\n")
    store = Store(f"sqlite:///{tmp_path / 'crest.db'}", create=True)
    try:
        store.create_study(parse_sweep({**TINY_SWEEP, "workload": "evil_wl:make"}), sweep_yaml="x")
    finally:
        store.close()
    out = crest("resume", "tiny", cwd=tmp_path)
    assert out.returncode == 2 and "--workload evil_wl:make" in out.stderr, out.stderr
    assert not marker.exists(), "the module a row names was not imported"
    out = crest("resume", "tiny", "--workload", "other:make", cwd=tmp_path)
    assert out.returncode == 2 and "runs 'evil_wl:make'" in out.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_launch_that_fails_while_its_baseline_trains_exits_2_without_aborting(tmp_path: Path) -> None:
    """The database turns out unusable after the local baseline began training (a file
    that is not a database): the launch prints one line and exits 2. The interpreter's
    shutdown used to end the training thread inside torch's C++ frames: SIGABRT, exit 134
    and a native stack trace on stderr."""
    (tmp_path / "crest.db").write_bytes(np.random.default_rng(0).bytes(5000))
    repo = Path(__file__).resolve().parents[1]
    out = crest("launch", str(repo / "examples" / "lenet300-mnist.yaml"), "-q", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    message = "crest: error: cannot connect to sqlite:///crest.db: file is not a database"
    assert out.stderr.strip().splitlines() == [message]


def _baseline_child_of(driver: int) -> int | None:
    """The pid of ``driver``'s child that trains the baseline, if any."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"_baseline_child" in (entry / "cmdline").read_bytes():
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == driver:
                    return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_launch_stopped_while_its_baseline_trains_ends_the_training_too(tmp_path: Path, how: int) -> None:
    """SIGTERM or Ctrl-C (SIGINT to the driver) during a new study's start-up: the launch
    says how to resume and exits 130, and the process that trained the baseline is gone."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "crest", "launch", str(repo / "examples" / "lenet300-mnist.yaml"),
                             "-q"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)
    try:
        child = None
        deadline = time.monotonic() + 60
        while child is None and time.monotonic() < deadline and proc.poll() is None:
            child = _baseline_child_of(proc.pid)
            time.sleep(0.02)
        assert child is not None, "the baseline's process never appeared"
        proc.send_signal(how)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    # (before the database exists there is nothing to resume; after, the hint says how)
    assert "crest resume lenet300-mnist" in err or (
        "interrupted before anything was stored" in err and not (tmp_path / "crest.db").exists()), err[-3000:]
    gone = False
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            gone = True
            break
        time.sleep(0.05)
    assert gone, "the baseline's process outlived the launch"
