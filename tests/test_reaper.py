"""Nothing of a local Ray outlives its driver: records, the watchdog, and a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from crest._reaper import (
    _ProcTable,
    _runtime_dir,
    descendants,
    reap_dead_runs,
    start_time,
)

from .helpers import TINY_SWEEP


def _wait(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _gone(pid: int, started: int | None) -> bool:
    return start_time(pid) != started


def test_the_process_table_finds_what_a_full_scan_finds() -> None:
    table = _ProcTable()
    table.refresh()
    me = os.getpid()
    # a shell that starts a grandchild and exits, which orphans the grandchild (as a
    # killed driver's raylet orphans Ray's agents)
    shell = subprocess.Popen(["sh", "-c", "sleep 120 & echo $!; sleep 0.5"], stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None
    grandchild = int(shell.stdout.readline())
    try:
        table.refresh()
        assert {shell.pid, grandchild} <= table.below([me]) == set(descendants(me))
        assert table.start_time(grandchild) == start_time(grandchild) is not None
        assert shell.wait(timeout=10) == 0
        assert _wait(lambda: grandchild not in descendants(me), 10), "the kernel reparented it"
        table.refresh()
        assert table.start_time(shell.pid) is None, "a pid that exited drops out"
        assert table.below([me]) == set(descendants(me))
        assert table.below([grandchild]) == set() and table.start_time(grandchild) is not None
    finally:
        os.kill(grandchild, signal.SIGKILL)
    assert _wait(lambda: start_time(grandchild) is None, 10)
    table.refresh()
    assert table.start_time(grandchild) is None


def test_the_next_driver_reaps_what_a_dead_one_recorded_and_nothing_else() -> None:
    folder = _runtime_dir()
    assert folder is not None
    orphan = subprocess.Popen(["sleep", "120"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_start = start_time(dead.pid)
    dead.wait()
    record = folder / f"ray-{dead.pid}-{dead_start}.json"
    live_record = folder / f"ray-{os.getpid()}-test.json"
    try:
        record.write_text(json.dumps({"driver": [dead.pid, dead_start],
                                      "processes": [[orphan.pid, start_time(orphan.pid)],
                                                    [bystander.pid, 1]]}))  # a start time that does not match
        live_record.write_text(json.dumps({"driver": [os.getpid(), start_time(os.getpid())],
                                           "processes": [[bystander.pid, start_time(bystander.pid)]]}))
        assert reap_dead_runs() == 1
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None, "a process whose start time differs, or of a live driver, is spared"
        assert not record.exists() and live_record.exists()
    finally:
        live_record.unlink(missing_ok=True)
        for p in (orphan, bystander):
            p.kill()
            p.wait()


def test_the_watchdog_reaps_when_its_driver_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, time
        from crest._reaper import RayReaper
        mine = subprocess.Popen(["sleep", "120"])  # the driver's own child from before: not Ray's
        reaper = RayReaper()
        reaper.start()
        # as Ray starts its agents in sessions of their own; up == "Ray is up" or killed in ray.init
        child = subprocess.Popen(["sleep", "120"], start_new_session=True)
        time.sleep(0.6)
        if sys.argv[1] == "up":
            reaper.ray_started()
            time.sleep(0.2)
        print(child.pid, mine.pid, flush=True)
        time.sleep(120)
    """))
    for phase in ("starting", "up"):
        driver = subprocess.Popen([sys.executable, str(script), phase], stdout=subprocess.PIPE, text=True)
        child, mine = (int(x) for x in driver.stdout.readline().split())  # type: ignore[union-attr]
        started, mine_started = start_time(child), start_time(mine)
        assert started is not None
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        try:
            assert _wait(lambda: _gone(child, started), 15), f"the watchdog stopped the orphan ({phase})"
            assert not _gone(mine, mine_started), "the driver's own earlier child was left alone"
        finally:
            for pid, t in ((child, started), (mine, mine_started)):
                if not _gone(pid, t):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_of_a_launch_leaves_no_process_behind(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "n_trials": 30, "stages": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 150},
    ]}))
    driver = subprocess.Popen([sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait(lambda: any("ray::TrialWorker" in _cmdline(p) for p in descendants(driver.pid)), 120)
        tree = {p: start_time(p) for p in descendants(driver.pid)}
        driver.send_signal(signal.SIGKILL)  # the driver alone: `kill -9 PID`
        driver.wait()
        assert _wait(lambda: all(_gone(p, t) for p, t in tree.items()), 30), [
            _cmdline(p) for p, t in tree.items() if not _gone(p, t)
        ]
    finally:
        for p in descendants(driver.pid):
            os.kill(p, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
