"""A local sweep's start: Ray on a thread, the baseline in the driver, a lean local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from crest.config import parse_sweep
from crest.exceptions import SweepError, WorkloadError
from crest.orchestrator._baseline import LocalBaseline, early_baseline
from crest.orchestrator._ray_private import SKIPPED, check_private_api, lean_local_start
from crest.tasks import Workload, get_workload

from ..helpers import TINY_SWEEP


@pytest.mark.usefixtures("ray_local")
def test_the_baseline_trained_in_the_driver_is_the_one_a_worker_trains() -> None:
    """Same seed, same thread count: the same bytes, whichever process trains it (so a
    local study's baseline does not depend on where it was trained)."""
    import ray

    from crest.orchestrator._worker import TrialWorker

    threads_before = torch.get_num_threads()
    local = LocalBaseline(get_workload("tiny-digits"), 3, threads=1)
    actor = ray.remote(TrialWorker).options(num_cpus=1).remote("tiny-digits", None, [], 1)  # type: ignore[attr-defined]
    try:
        remote_blob, remote_acc = ray.get(actor.train_baseline.remote(3), timeout=300)
    finally:
        ray.kill(actor)
    blob, acc = local.result()
    assert blob == remote_blob and acc == remote_acc
    assert acc > 0.5 and local.seconds > 0
    assert torch.get_num_threads() == threads_before, "torch's thread count is put back"


def test_the_baseline_begins_before_the_driver_only_for_a_certainly_new_study_trained_here(tmp_path: Path) -> None:
    """``early_baseline``: a new SQLite file (nothing can be stored there yet) and a
    baseline the driver would train; otherwise None, and the driver decides after
    reading the database."""
    def config(url: str, **changes: object):  # type: ignore[no-untyped-def]
        return parse_sweep({**TINY_SWEEP, **changes}, overrides={"storage": url})

    new = f"sqlite:///{tmp_path / 'new.db'}"
    (tmp_path / "old.db").write_bytes(b"")
    refused = [
        config(f"sqlite:///{tmp_path / 'old.db'}"),  # exists: the study may be stored there
        config(f"sqlite:///{tmp_path / 'new.db'}?timeout=5"),
        config("sqlite:///:memory:"),
        config("postgresql+psycopg://postgres@127.0.0.1:5432/nothere"),
        config(new, ray={"address": "127.0.0.1:6379"}),  # a cluster: a worker trains it
        config(new, ray={"gpus_per_worker": 1}),
        config(new, device="cuda", ray={"gpus_per_worker": 1}),
    ]
    assert [early_baseline(c, []) for c in refused] == [None] * len(refused)
    early = early_baseline(config(new), [])
    assert early is not None and early.workload.name == "tiny-digits"
    blob, accuracy = early.result()
    from crest.tasks import train_baseline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's count (cpus_per_worker 1), as the early baseline trains
    try:
        assert (blob, accuracy) == train_baseline(get_workload("tiny-digits"), seed=0)
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "new.db").exists(), "it reads nothing and creates nothing"


def test_only_a_new_study_checked_in_the_driver_goes_without_rays_idle_workers(tmp_path: Path) -> None:
    """``starts_own_workers``: a certainly new study trained here whose node check runs in
    the driver (no CuPy; with it the check is a Ray task, which an idle worker takes)."""
    import importlib.util

    from crest.orchestrator._baseline import starts_own_workers

    (tmp_path / "old.db").write_bytes(b"")
    new = parse_sweep(TINY_SWEEP, overrides={"storage": f"sqlite:///{tmp_path / 'new.db'}"})
    old = parse_sweep(TINY_SWEEP, overrides={"storage": f"sqlite:///{tmp_path / 'old.db'}"})
    cluster = parse_sweep({**TINY_SWEEP, "ray": {"address": "127.0.0.1:6379"}},
                          overrides={"storage": f"sqlite:///{tmp_path / 'new.db'}"})
    assert starts_own_workers(new) is (importlib.util.find_spec("cupy") is None)
    assert starts_own_workers(old) is False and starts_own_workers(cluster) is False


def _broken_workload() -> Workload:
    base = get_workload("tiny-digits")

    def fail() -> torch.nn.Module:
        raise RuntimeError("no model today")

    return replace(base, name="broken", build_model=fail)


def test_a_failed_local_baseline_is_a_sweep_error_naming_the_cause() -> None:
    with pytest.raises(SweepError, match="the baseline could not be trained: RuntimeError: no model today"):
        LocalBaseline(_broken_workload(), 0, threads=1).result()


def test_a_workload_error_in_the_local_baseline_stays_a_workload_error() -> None:
    base = get_workload("tiny-digits")

    def fail() -> torch.nn.Module:
        raise WorkloadError("the workload says no")

    broken = replace(base, name="broken", build_model=fail)
    with pytest.raises(WorkloadError, match="the workload says no"):
        LocalBaseline(broken, 0, threads=1).result()


def test_the_installed_ray_has_what_the_lean_start_replaces() -> None:
    check_private_api()  # fails when a Ray release renames them: update _ray_private.py


def test_a_setting_this_ray_does_not_know_is_left_out_of_the_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A key Ray does not know would stop its GCS from starting (ray.init then times out):
    check_private_api names it, and lean_settings leaves it out, with a warning."""
    from crest.orchestrator import _ray_private
    from crest.orchestrator._ray_private import lean_settings

    # found by ray._raylet.Config's getter, and by its name in Ray's core library
    assert _ray_private._knows_setting("raylet_client_connect_timeout_milliseconds")
    assert _ray_private._knows_setting("prestart_worker_first_driver")
    assert lean_settings(idle_workers=False) == {**_ray_private.QUICK_CONNECT, **_ray_private.NO_IDLE_WORKERS}
    assert lean_settings() == _ray_private.QUICK_CONNECT
    monkeypatch.setattr(_ray_private, "NO_IDLE_WORKERS", {"crest_no_such_setting": False})
    with pytest.raises(RuntimeError, match="the setting crest_no_such_setting"):
        check_private_api()
    with caplog.at_level("WARNING", logger="crest"):
        assert lean_settings(idle_workers=False) == _ray_private.QUICK_CONNECT
    assert "has no setting crest_no_such_setting" in caplog.text
    with lean_local_start() as lean:
        assert lean is True  # the rest of the lean start does not depend on it


def test_the_lean_start_puts_rays_functions_back_even_after_an_error() -> None:
    from ray._private import services, utils
    from ray._private.node import Node

    before = {name: Node.__dict__[name] for name in SKIPPED}
    get_node = services.get_node
    dependency_error = utils.get_dashboard_dependency_error
    with pytest.raises(KeyError), lean_local_start() as lean:
        assert lean is True
        assert all(Node.__dict__[name] is not before[name] for name in SKIPPED)
        assert services.get_node is not get_node
        assert isinstance(utils.get_dashboard_dependency_error(), ImportError)  # the agent starts --minimal
        raise KeyError("boom")
    assert {name: Node.__dict__[name] for name in SKIPPED} == before
    assert services.get_node is get_node
    assert utils.get_dashboard_dependency_error is dependency_error


START_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from crest._reaper import descendants
    from crest.orchestrator._cluster import RayStart

    def cmdline(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    start = RayStart(None, cpus_needed=1, lean=sys.argv[1] == "lean", idle_workers=sys.argv[2] == "idle")
    started = start.result()
    time.sleep(1.0)  # the starting thread must keep Ray's processes alive after the start
    def is_worker(line):  # a Python worker (idle, or still starting), not the raylet naming its command
        return line.startswith("ray::IDLE") or ("default_worker.py" in line and not line.split(" ")[0].endswith("raylet"))

    idle = [p for p in descendants(os.getpid()) if is_worker(cmdline(p))]  # before any task
    import ray

    @ray.remote
    def square(x):
        return x * x

    answer = ray.get(square.remote(7), timeout=60)
    from ray._raylet import Config
    retry_ms = Config.raylet_client_connect_timeout_milliseconds()  # what this Ray took
    names = [cmdline(p) for p in descendants(os.getpid())]
    start.stop()
    start.stop()  # a second stop does nothing
    time.sleep(0.5)
    left = [p for p in descendants(os.getpid()) if cmdline(p)]  # a zombie has an empty command line
    print(json.dumps({"started": started, "answer": answer, "names": names, "left": left,
                      "seconds": start.seconds, "idle": len(idle), "retry_ms": retry_ms}))
    """
)


@pytest.mark.parametrize(("mode", "idle"), [("lean", "none"), ("lean", "idle"), ("full", "none")])
def test_ray_started_on_a_thread_serves_the_driver_and_stops(tmp_path: Path, mode: str, idle: str) -> None:
    """A lean start skips three of Ray's processes, and without idle workers (a driver that
    starts its own at once) its raylet starts none; a full one is ``ray.init``'s own, idle
    workers included whatever is asked."""
    (tmp_path / "start.py").write_text(START_SCRIPT)
    run = subprocess.run([sys.executable, "start.py", mode, idle], cwd=tmp_path, check=False, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["started"] is True and out["answer"] == 49 and out["seconds"] > 0
    names = "\n".join(out["names"])
    assert "gcs_server" in names and "raylet" in names
    skipped = ["autoscaler/_private/monitor.py", "_private/log_monitor.py", "dashboard/dashboard.py"]
    if mode == "lean":
        assert not [s for s in skipped if s in names], names
        assert out["retry_ms"] == 20, "a lean Ray's clients try to connect again after 20 ms, not 1 s"
        raylet = [line for line in out["names"] if line.split(" ")[0].endswith("raylet")]
        assert len(raylet) == 1 and "--minimal" in raylet[0], "the raylet starts the dashboard agent --minimal"
    else:
        assert all(s in names for s in skipped), names
        assert out["retry_ms"] == 1000, "a full start is ray.init's own"
    if mode == "lean" and idle == "none":
        assert out["idle"] == 0, "the raylet started idle workers though the driver starts its own"
    else:
        assert out["idle"] >= 1, "ray.init's own start has the raylet start idle workers"
    assert out["left"] == [], "Ray's processes outlived stop()"
    assert "SIGTERM handler is not set" not in run.stderr


def test_a_ray_start_that_fails_raises_in_the_caller() -> None:
    code = textwrap.dedent(
        """
        from crest.exceptions import SweepError
        from crest.orchestrator._cluster import RayStart
        start = RayStart("nohost", cpus_needed=1)
        try:
            start.result()
        except SweepError as e:
            print(e)
        start.stop()  # nothing was started: nothing to stop, no error
        """
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cannot connect to the Ray cluster at nohost" in run.stdout


def test_memory_freed_by_a_large_training_goes_back_to_the_system() -> None:
    """After a large short-lived allocation is freed, release_freed_memory lowers the
    process's RSS (glibc keeps freed memory in its arenas otherwise)."""
    code = textwrap.dedent(
        """
        import threading
        from crest.orchestrator._baseline import release_freed_memory

        def rss_mb():
            return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024

        def churn():  # many mid-sized blocks, as a training's tensors are, on a thread's arena
            blocks = [bytearray(100_000) for _ in range(3000)]
            del blocks[::2]
            keep = blocks[-1:]
            del blocks
            return keep

        kept = []
        t = threading.Thread(target=lambda: kept.append(churn()))
        t.start(); t.join()
        before = rss_mb()
        assert release_freed_memory() is True
        print(before, rss_mb())
        """
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    before, after = (int(x) for x in run.stdout.split())
    assert after < before - 50, (before, after)
