"""A local sweep's start: Ray on a thread, the baseline in a process of its own, a lean local Ray."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from crest.config import parse_sweep
from crest.exceptions import SweepError, WorkloadError
from crest.orchestrator._baseline import LocalBaseline, early_baseline
from crest.orchestrator._baseline_child import ERROR, SUMMARY, read_frame
from crest.orchestrator._ray_private import SKIPPED, check_private_api, lean_local_start
from crest.tasks import get_workload
from crest.tasks._model_summary import ModelSummary

from ..helpers import TINY_SWEEP


@pytest.mark.usefixtures("ray_local")
def test_the_baseline_trained_in_its_own_process_is_the_one_a_worker_trains() -> None:
    """Same seed, same thread count: the same bytes, whichever process trains it (so a
    local study's baseline does not depend on where it was trained); the summary it sends
    first is the model's."""
    import ray

    from crest.orchestrator._worker import TrialWorker

    local = LocalBaseline("tiny-digits", 3, threads=1)
    actor = ray.remote(TrialWorker).options(num_cpus=1).remote("tiny-digits", None, [], 1)  # type: ignore[attr-defined]
    try:
        remote_blob, remote_acc = ray.get(actor.train_baseline.remote(3), timeout=300)
    finally:
        ray.kill(actor)
    assert local.summary() == ModelSummary.of(get_workload("tiny-digits").build_model())
    blob, acc = local.result()
    assert blob == remote_blob and acc == remote_acc
    assert acc > 0.5 and local.seconds > 0
    assert local._proc.returncode == 0, "the process ended once it had sent the baseline"


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
    assert early is not None and early.workload == "tiny-digits"
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


BROKEN = """
from dataclasses import replace
from crest.exceptions import WorkloadError
from crest.tasks import get_workload

def _failing(error):
    def fail():
        raise error
    return fail

def plain():
    return replace(get_workload("tiny-digits"), name="broken", build_model=_failing(RuntimeError("no model today")))

def refusing():
    return replace(get_workload("tiny-digits"), name="broken", build_model=_failing(WorkloadError("the workload says no")))

def slow():
    import time
    def build():
        print("building", flush=True)  # the workload's output goes to stderr, not into the frames
        time.sleep(600)
    return replace(get_workload("tiny-digits"), name="slow", build_model=build)
"""


def _broken(tmp_path: Path, function: str, **kw: int) -> LocalBaseline:
    (tmp_path / "broken_wl.py").write_text(BROKEN)
    return LocalBaseline(f"broken_wl:{function}", 0, threads=1, search_path=[str(tmp_path)], **kw)


def test_a_failed_local_baseline_is_a_sweep_error_naming_the_cause(tmp_path: Path) -> None:
    local = _broken(tmp_path, "plain")
    with pytest.raises(SweepError, match="the baseline could not be trained: RuntimeError: no model today"):
        local.summary()
    with pytest.raises(SweepError, match="no model today"):
        local.result()


def test_a_workload_error_in_the_local_baseline_stays_a_workload_error(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="the workload says no"):
        _broken(tmp_path, "refusing").result()
    with pytest.raises(WorkloadError, match="cannot import|No module|not found|no_such"):
        LocalBaseline("no_such_module_here:make", 0, threads=1).summary()


def _gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_a_training_baseline_at_once(tmp_path: Path) -> None:
    local = _broken(tmp_path, "slow")
    time.sleep(0.5)
    t0 = time.monotonic()
    local.stop()
    local.stop()  # idempotent
    assert time.monotonic() - t0 < 5 and local._proc.returncode is not None
    with pytest.raises(SweepError, match="ended"):
        local.result()


def test_the_baseline_process_ends_when_its_driver_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the driver leaves no training behind: the child sees its stdin close."""
    (tmp_path / "broken_wl.py").write_text(BROKEN)
    code = textwrap.dedent(f"""
        import sys, time
        from crest.orchestrator._baseline import LocalBaseline
        local = LocalBaseline("broken_wl:slow", 0, threads=1, search_path=[{str(tmp_path)!r}])
        print(local._proc.pid, flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        time.sleep(1.0)  # the child is in the workload's build
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        assert _gone(child, within=10), "the baseline's process outlived its driver"
    finally:
        driver.kill()


def test_a_frame_is_read_within_its_kinds_limit_and_never_beyond() -> None:
    """The child's reply is bounded: an unknown kind, a length over its kind's limit (no
    allocation of what the header merely names) or a cut frame is an error."""
    def frame(kind: bytes, payload: bytes, length: int | None = None) -> io.BytesIO:
        return io.BytesIO(struct.pack(">cQ", kind, len(payload) if length is None else length) + payload)

    limits = {SUMMARY: 100}
    assert read_frame(frame(SUMMARY, b"x" * 10), limits) == (SUMMARY, b"x" * 10)
    assert read_frame(io.BytesIO(b""), limits) is None
    with pytest.raises(ValueError, match="unexpected frame kind"):
        read_frame(frame(ERROR, b"{}"), limits)
    with pytest.raises(ValueError, match="over its limit"):
        read_frame(frame(SUMMARY, b"", length=1 << 62), limits)
    with pytest.raises(ValueError, match="ended 5 bytes before"):
        read_frame(frame(SUMMARY, b"x" * 5, length=10), limits)
    with pytest.raises(ValueError, match="ended"):
        read_frame(io.BytesIO(b"S\0\0"), limits)


def test_a_model_summary_round_trips_and_a_malformed_one_is_refused() -> None:
    model = get_workload("tiny-digits").build_model()
    summary = ModelSummary.of(model)
    assert ModelSummary.from_json(summary.to_json()) == summary
    assert summary.dense_bytes == 4 * sum(p.numel() for p in model.parameters())
    good = json.loads(summary.to_json())
    first = good["shapes"][0][0]
    hostile = [
        b"not json",
        json.dumps({**good, "prunable": ["nope.weight"]}).encode(),  # not a parameter
        json.dumps({**good, "dense_bytes": good["dense_bytes"] + 4}).encode(),  # inconsistent
        json.dumps({**good, "dense_bytes": True}).encode(),
        json.dumps({**good, "shapes": [[first, [-1, 3]]]}).encode(),
        json.dumps({**good, "shapes": [[first, [1] * 9]]}).encode(),
        json.dumps({**good, "shapes": [[7, [1]]]}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "embeddings"}).encode(),
        b" " * ((64 << 20) + 1),
    ]
    for data in hostile:
        with pytest.raises(SweepError, match="summary"):
            ModelSummary.from_json(data)


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


def test_the_driver_of_a_new_local_study_never_imports_torch(tmp_path: Path) -> None:
    """The quick start's path (a new SQLite file), and a new study in a file that exists:
    the baseline's process sends the model's summary, so the driver resolves the plan,
    checks its node and runs the sweep without torch."""
    import yaml

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "n_trials": 2}))
    code = textwrap.dedent(
        """
        import sys
        from crest.cli import main
        sys.argv = ["crest", "launch", "sweep.yaml", "-q", *sys.argv[1:]]
        try:
            main()
        except SystemExit as e:
            print("exit", e.code, "torch" in sys.modules)
        """
    )
    for args in ([], ["--study", "another"]):  # the second finds crest.db there
        run = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, check=False)
        assert run.stdout.strip().splitlines()[-1] == "exit 0 False", run.stdout[-2000:] + run.stderr[-3000:]
        assert "2 complete trials" in run.stdout


def test_the_baseline_does_not_depend_on_what_the_driver_draws_meanwhile() -> None:
    """torch's global random generator is one per process: a baseline trained on a thread
    of the driver drew its initial weights from it while the driver built its own copy
    of the model (for the plan), and came out different under load (the 22M-parameter
    model of bench/scale.py: 0.113 top-1 against 0.203 alone, one epoch). In a process of
    its own it is the same whatever the driver draws."""
    from crest.tasks import train_baseline

    local = LocalBaseline("tiny-digits", 5, threads=1)
    torch.manual_seed(123)
    while not local._done.is_set():  # the driver builds models, drawing from its generator
        get_workload("tiny-digits").build_model()
    blob, accuracy = local.result()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (blob, accuracy) == train_baseline(get_workload("tiny-digits"), seed=5)
    finally:
        torch.set_num_threads(threads)


FAKE_CHILD = """
import json, os, struct, sys, time
os.read(0, 65536)
out = os.fdopen(1, "wb")
summary = json.dumps({"shapes": [["w", [2, 2]]], "prunable": ["w"], "embeddings": [], "dense_bytes": 16,
                      "state_bytes": 16}).encode()
def frame(kind, payload, length=None):
    out.write(struct.pack(">cQ", kind, len(payload) if length is None else length) + payload)
    out.flush()
how = sys.argv[1]
if how == "deep":
    frame(b"S", b"[" * 100000)
elif how == "short":
    frame(b"S", summary); frame(b"B", b"\\x00" * 3)
elif how == "huge":
    frame(b"S", summary); frame(b"B", b"", length=1 << 40)
elif how == "kind":
    frame(b"Z", b"")
elif how == "cut":  # ends within a frame's header
    frame(b"S", summary); out.write(b"B"); out.flush(); os._exit(0)
elif how == "orphan":  # ends without a word, while what it forked holds its stdout open
    if os.fork() == 0:
        time.sleep(600)
    os._exit(3)
time.sleep(600)  # a broken child that would not end by itself
"""


@pytest.mark.parametrize("how", ["deep", "short", "huge", "kind", "cut", "orphan"])
def test_a_broken_reply_fails_at_once_and_ends_the_child(tmp_path: Path, how: str) -> None:
    """Whatever the child sends (JSON nested too deep, a short or oversized baseline, an
    unknown kind, a cut frame), the driver raises a SweepError without waiting for the
    child, ends it, and allocates nothing the frame merely names."""
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    local = LocalBaseline("tiny-digits", 0, threads=1, command=[sys.executable, str(script), how])
    t0 = time.monotonic()
    with pytest.raises(SweepError, match="broken reply|ended"):
        local.result()
    assert time.monotonic() - t0 < 60
    local._reader.join(timeout=30)
    assert not local._reader.is_alive() and local._proc.poll() is not None, "the child was ended and reaped"


def test_a_child_killed_while_training_is_a_sweep_error_with_its_exit_code(tmp_path: Path) -> None:
    local = _broken(tmp_path, "slow")
    time.sleep(0.5)
    os.kill(local._proc.pid, signal.SIGKILL)
    with pytest.raises(SweepError, match=r"ended \(exit code -9\) before sending it"):
        local.result()


def test_a_failure_in_the_child_is_logged_with_its_traceback_at_debug_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("DEBUG", logger="crest"), pytest.raises(SweepError, match="no model today"):
        _broken(tmp_path, "plain").result()
    assert "the baseline's process failed" in caplog.text and "Traceback" in caplog.text
    assert "broken_wl.py" in caplog.text


def test_a_tied_embedding_is_listed_under_the_name_the_model_gives_its_weight() -> None:
    """A head registered before the embedding it shares its weight with: the weight is
    named once (``head.weight``), and stays an embedding table under that name (globs
    leave it alone); the summary reads back."""
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(8, 20, bias=False)
            self.embed = torch.nn.Embedding(20, 8)
            self.embed.weight = self.head.weight

    summary = ModelSummary.of(Tied())
    assert list(summary.shapes) == ["head.weight"] and summary.embeddings == ["head.weight"]
    assert ModelSummary.from_json(summary.to_json()) == summary
