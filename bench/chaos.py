"""Chaos: a sweep on PostgreSQL through driver kills, worker kills and database restarts.

One study of the ``tiny-digits`` workload runs through ``crest launch`` / ``crest resume``
subprocesses. At seeded random moments the benchmark:

- kills the driver with SIGKILL (``kill -9 PID``, the driver alone) and starts ``crest
  resume`` again; before each kill it notes every process below the driver, and checks a
  few seconds later that none of them outlived it;
- kills one Ray worker process (``ray::TrialWorker``) of the live driver;
- stops the PostgreSQL server, keeps it down for a few seconds, and starts it again.

The study's trial count grows as the run goes (each relaunch passes ``--n-trials``), so
that it never finishes before the planned faults are done; then a last ``crest launch``
runs it to its end.
Then the database is checked: exactly ``n_trials`` complete trials, each trial number
once, each artifact read back and verified against its SHA-256; no Optuna trial RUNNING or
WAITING; and no process outlived its driver.

Run (as root, on a machine whose PostgreSQL cluster ``pg_ctlcluster`` manages):
``python bench/chaos.py [--driver-kills 100] [--worker-kills 20] [--db-restarts 5]``
(about 30 minutes on the 2-core machine). Writes ``bench/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import crest
from crest._reaper import descendants, start_time
from crest.storage import Store

RESULTS = Path(__file__).parent / "results"
ADMIN_URL = os.environ.get("CREST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

SWEEP: dict[str, Any] = {
    "study": "chaos",
    "workload": "tiny-digits",
    "workers": 2,
    "seed": 0,
    "max_retries": 100,  # a trial killed again and again is re-run (up to 100 times)
    "max_failures": 100_000,
    "constraints": {"max_accuracy_drop": 0.05},
    "stages": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 150},  # about 2 s a trial: kills land mid-trial
        {"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}},
    ],
}


@dataclass
class Counts:
    """What the run did and found."""

    driver_kills: int = 0
    worker_kills: int = 0
    db_restarts: int = 0
    drivers_started: int = 0
    processes_left_behind: int = 0
    left_behind: list[str] = field(default_factory=list)


def _cluster() -> list[str]:
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*/main"))
    if tool is None or not versions or os.geteuid() != 0:
        sys.exit("chaos.py needs root and a local PostgreSQL cluster managed by pg_ctlcluster")
    return [tool, "--skip-systemctl-redirect", versions[-1].parent.name, "main"]


def _fresh_database() -> str:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"crest_chaos_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _launch(cwd: Path, url: str, n_trials: int) -> subprocess.Popen[bytes]:
    """``crest launch`` of the study (launching an existing study resumes it)."""
    return _driver(["launch", "sweep.yaml", "--n-trials", str(n_trials)], cwd, url)


def _driver(args: list[str], cwd: Path, url: str) -> subprocess.Popen[bytes]:
    with open(cwd / "drivers.log", "ab") as log:  # each driver's stderr, for a post-mortem
        return subprocess.Popen(
            [sys.executable, "-m", "crest", "--log-level", "info", *args, "--storage", url, "-q", "--lease-ttl", "10"],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )


def _kill_driver(proc: subprocess.Popen[bytes], counts: Counts) -> None:
    tree = {p: start_time(p) for p in descendants(proc.pid)}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    counts.driver_kills += 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(start_time(p) == t for p, t in tree.items()):
        time.sleep(0.2)
    left = [f"{p} {_cmdline(p)[:80]}" for p, t in tree.items() if start_time(p) == t]
    counts.processes_left_behind += len(left)
    counts.left_behind.extend(left[:5])
    for p, t in tree.items():  # leave nothing to the next round, whatever the result
        if start_time(p) == t:
            os.kill(p, signal.SIGKILL)


def _kill_a_worker(proc: subprocess.Popen[bytes], counts: Counts) -> bool:
    workers = [p for p in descendants(proc.pid) if _cmdline(p).startswith("ray::TrialWorker")]
    if not workers:
        return False
    os.kill(workers[0], signal.SIGKILL)
    counts.worker_kills += 1
    return True


def _restart_database(cluster: list[str], counts: Counts, down: float) -> None:
    subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True, timeout=120)
    time.sleep(down)
    subprocess.run([*cluster, "start"], check=True, capture_output=True, timeout=120)
    counts.db_restarts += 1


def _complete(url: str) -> int:
    try:
        store = Store(url, create=False)
    except Exception:  # the schema is not there yet, or the server restarts
        return 0
    try:
        info = store.get_study("chaos")
        return 0 if info is None else len(store.trials(info.id, state="COMPLETE"))
    except Exception:
        return 0
    finally:
        store.close()


def _wait_for_baseline(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Faults start once the study and its baseline exist (before that there is nothing to lose)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            store = Store(url, create=False)
        except Exception:  # no tables yet
            time.sleep(0.5)
            continue
        try:
            info = store.get_study("chaos")
            if info is not None and info.baseline_sha256 is not None:
                return
        finally:
            store.close()
        time.sleep(0.5)
    sys.exit(f"the first driver did not store a baseline (exit code {proc.poll()})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole chaos run; returns what is written to chaos.json."""
    cluster = _cluster()
    rng = random.Random(args.seed)
    url = _fresh_database()
    work = Path(tempfile.mkdtemp(prefix="crest-chaos-"))
    (work / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "n_trials": args.n_trials}))
    counts = Counts()
    # the faults in a seeded random order
    plan = ["driver"] * args.driver_kills + ["worker"] * args.worker_kills + ["db"] * args.db_restarts
    rng.shuffle(plan)
    t0 = time.monotonic()
    target = args.n_trials
    proc = _launch(work, url, target)
    counts.drivers_started += 1
    try:
        _wait_for_baseline(url, proc)
        for fault in plan:
            if _complete(url) >= target - args.n_trials // 2:
                target += args.n_trials  # keep trials to run until the faults are done
            if proc.poll() is not None:  # finished (or failed): start it again
                proc = _launch(work, url, target)
                counts.drivers_started += 1
            time.sleep(rng.uniform(args.min_wait, args.max_wait))
            if fault == "driver":
                _kill_driver(proc, counts)
                proc = _launch(work, url, target)
                counts.drivers_started += 1
            elif fault == "worker":
                deadline = time.monotonic() + 60
                while not _kill_a_worker(proc, counts) and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.5)
            else:
                _restart_database(cluster, counts, rng.uniform(1.0, 5.0))
            print(f"{time.monotonic() - t0:7.1f} s  {fault:6}  complete={_complete(url)}", flush=True)
        if proc.poll() is None:
            _kill_driver(proc, counts)
        final = subprocess.run(
            [sys.executable, "-m", "crest", "launch", "sweep.yaml", "--n-trials", str(target), "--storage", url, "-q"],
            cwd=work, capture_output=True, text=True, timeout=3600,
        )
        counts.drivers_started += 1
        checks = _check(url, target)
        checks["last_resume_exit"] = final.returncode
        checks["last_resume_stderr"] = final.stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        _drop_database(url)
        shutil.rmtree(work, ignore_errors=True)
    ok = (
        checks["complete_rows"] == target
        and checks["optuna_complete"] == target
        and checks["duplicate_numbers"] == 0
        and checks["artifacts_verified"] == target
        and checks["running"] == 0
        and checks["waiting"] == 0
        and counts.processes_left_behind == 0
        and checks["last_resume_exit"] == 0
    )
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "code": {"crest": str(Path(crest.__file__).parent), "commit": _commit()},
        "args": vars(args),
        "seconds": round(time.monotonic() - t0, 1),
        "counts": asdict(counts),
        "checks": checks,
        "ok": ok,
    }


def _commit() -> str | None:
    """The git commit of the crest that ran (CREST_CHAOS_COMMIT, else git), or None."""
    if os.environ.get("CREST_CHAOS_COMMIT"):
        return os.environ["CREST_CHAOS_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(crest.__file__).parent, capture_output=True, text=True)
    return out.stdout.strip() or None


def _check(url: str, n_trials: int) -> dict[str, Any]:
    store = Store(url, create=False)
    try:
        info = store.require_study("chaos")
        complete = store.trials(info.id, state="COMPLETE")
        numbers = [t.number for t in complete]
        verified = 0
        for t in complete:
            store.get_artifact(t.artifact_sha256)  # type: ignore[arg-type]  # raises on a SHA-256 mismatch
            verified += 1
        states = [t.state for t in optuna.load_study(study_name="chaos", storage=store.optuna_storage()).trials]
        failed = store.trials(info.id, state="FAIL")
        return {
            "n_trials": n_trials,
            "complete_rows": len(complete),
            "duplicate_numbers": len(numbers) - len(set(numbers)),
            "artifacts_verified": verified,
            "optuna_complete": states.count(optuna.trial.TrialState.COMPLETE),
            "running": states.count(optuna.trial.TrialState.RUNNING),
            "waiting": states.count(optuna.trial.TrialState.WAITING),
            "failed_attempts_recorded": len(failed),
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver-kills", type=int, default=100)
    parser.add_argument("--worker-kills", type=int, default=20)
    parser.add_argument("--db-restarts", type=int, default=5)
    parser.add_argument("--n-trials", type=int, default=40, help="the first trial count, and its step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-wait", type=float, default=2.0, help="seconds before a fault, at least")
    parser.add_argument("--max-wait", type=float, default=20.0, help="seconds before a fault, at most")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "counts", "checks", "ok")}, indent=2, default=str))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
