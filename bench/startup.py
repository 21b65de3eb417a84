"""Start-up of the quick start, part by part (issue 14's third goal: under 4 s).

Each run launches the README's quick-start sweep (``examples/lenet300-mnist.yaml``, the
``crest`` CLI, a new SQLite file in a fresh directory, a local Ray) as a user does, with
``n_trials`` cut to 4 (start-up does not depend on it), and reads:

- ``startup_s``: from launching the process (``Popen``) to the first trial's start (its
  recorded end minus its time inside, as ``bench/overhead.py`` reads it);
- the parts, from the driver's log (``--log-file``), each in seconds after ``Popen``:
  ``ray_up_s`` (the local Ray answers), ``baseline_s`` (the baseline is stored),
  ``first_sent_s`` (the first trial is sent to a worker); and ``ray_start_s`` (how long
  Ray's start took, begun on its own thread at the CLI's start) and ``ray_waited_s`` (how
  long the driver waited for it after its own set-up);
- ``cpu_busy_s``: CPU-seconds the whole machine spent busy (all cores, ``/proc/stat``,
  sampled every 20 ms) from ``Popen`` to the first trial's start, and ``cpu_floor_s`` =
  ``cpu_busy_s`` / cores: the start-up if that work were spread perfectly over the
  cores. Each launch waits first until the machine is idle (``settled_s``: less than
  0.1 core busy over half a second, at most 20 s; ``load_before`` is the 1-minute load
  at launch);
- ``cpu_by_role``: the same window's CPU-seconds of the launched process and its
  descendants, by role (``driver``, ``workers``, ``ray_agents``, ``ray_daemons``: the GCS
  and the raylet, ``other``: crest's Ray watchdog), from ``/proc/<pid>/stat`` read every
  50 ms (new processes found every 200 ms; the last reading before the first trial's
  start).

Variants, interleaved (each repeat runs every variant once, the order rotated):

- ``lean``: the default (``ray: {local: lean}``): a local Ray without the autoscaler
  monitor, the log monitor and the dashboard's API server, its dashboard agent minimal,
  its clients trying to connect every 20 ms, and (the study is new) no idle workers;
- ``full``: ``ray: {local: full}``, Ray started as ``ray.init`` starts it;
- ``before`` (with ``--before PATH``): crest from another source tree, e.g. the commit
  before this work (``git worktree add /tmp/crest-before 70ef2ff``), with its own
  defaults; its log names fewer parts.

Also, in the same run and interleaved, ``ray.init`` alone (``ray_init_lean`` /
``ray_init_full``): a fresh process that imports Ray, times
``crest.orchestrator._cluster.connect`` of a local Ray, and stops it; and the two chains of
the start-up alone (``chain_baseline``, ``chain_worker``, and ``chain_both``, the two at
once; see :data:`WORKER_ONLY`): ``chain_both``'s end is a lower bound, measured, of the
first trial's start for any driver that trains the baseline at launch and runs trials in
Ray actors on this machine.

Run: ``python bench/startup.py [--repeats 5] [--before PATH] [--out bench/results/startup.json]``; about
20 s per launch. Prints a table and writes the JSON (machine, crest's git commit, every
run, medians, the goal).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from overhead import _median, crest_source, crest_trials, machine, schedule, write_json

SWEEP = REPO / "examples" / "lenet300-mnist.yaml"
GOAL_STARTUP_S = 4.0
TRIALS = 4
VARIANTS = ("lean", "full")
CHAINS = ("chain_baseline", "chain_worker", "chain_both")
TIMEOUT_S = 600

# what the driver logs, and the part each line marks
MARKS = {
    "ray_up_s": re.compile(r"started a local Ray"),
    "baseline_s": re.compile(r"baseline of study '.*': accuracy"),
    "first_sent_s": re.compile(r"start-up: the first trial was sent"),
}
RAY_TOOK = re.compile(r"start-up: Ray took ([0-9.]+) s \(the driver waited ([0-9.]+) s for it\)")

RAY_ONLY = """
import sys, time
t = time.monotonic()
from crest.orchestrator._cluster import connect, disconnect
started = connect(None, cpus_needed=2, lean=sys.argv[1] == "lean")
print(time.monotonic() - t)
disconnect(started)
"""


# The two chains any start-up of this design has, alone, each from a fresh process's
# launch on an otherwise idle machine: the baseline (a process that imports torch, loads
# the quick start's workload and trains its baseline on 1 thread, as crest's baseline process does) and
# one worker (a process that starts a lean local Ray and one actor that imports torch and
# loads the workload, as a crest worker does at its start). ``both`` runs them together,
# the baseline in a process of its own begun first: nothing of crest's driver (Optuna,
# the database, the decoder check) and no second worker, so its end is a lower bound of
# the first trial's start for a driver that trains the baseline at launch and runs trials
# in Ray actors on this machine.
BASELINE_ONLY = """
import time
import torch
torch.set_num_threads(1)
from crest.tasks import get_workload, train_baseline
train_baseline(get_workload("lenet300-mnist"), seed=0, device="cpu")
print(time.time())
"""

WORKER_ONLY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=subprocess.PIPE, text=True) \
    if sys.argv[1] == "both" else None
import ray
from crest.orchestrator._cluster import connect, disconnect
started = connect(None, cpus_needed=2, lean=True, idle_workers=False)
up = time.time()

@ray.remote(num_cpus=1)
class Worker:
    def __init__(self):
        import torch
        torch.set_num_threads(1)
        from crest.tasks import get_workload
        self.workload = get_workload("lenet300-mnist")

    def ready(self):
        return time.time()

ready = ray.get(Worker.remote().ready.remote())
baseline = float(child.communicate()[0].split()[-1]) if child is not None else None
print(up, ready, baseline)
disconnect(started)
"""


def env(tree: Path = REPO) -> dict[str, str]:
    """The environment of a launch: crest imported from ``tree``."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}


def log_times(log: Path) -> dict[str, float]:
    """Epoch seconds of each mark in the driver's log, and Ray's own figures."""
    out: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for key, pattern in MARKS.items():
            if key not in out and pattern.search(line):
                out[key] = at
        took = RAY_TOOK.search(line)
        if took:
            out["ray_start_s"], out["ray_waited_s"] = float(took.group(1)), float(took.group(2))
    return out


class CpuClock:
    """Samples the machine's busy CPU-seconds (``/proc/stat``, all cores) on a thread."""

    def __init__(self, period: float = 0.02) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    @staticmethod
    def busy() -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append((time.time(), self.busy()))

    def __enter__(self) -> Self:
        self.samples.append((time.time(), self.busy()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> float:
        """Busy CPU-seconds from ``start`` to ``end`` (epoch seconds; nearest samples after each)."""
        def at(t: float) -> float:
            return next((busy for when, busy in self.samples if when >= t), self.samples[-1][1])

        return at(end) - at(start)


class ProcClock:
    """Samples, on a thread, the CPU-seconds of process ``root`` and its descendants
    (``/proc/<pid>/stat``), each with its role read once from its command line."""

    def __init__(self, root: int, period: float = 0.05) -> None:
        self.root = root
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.roles: dict[int, str] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _stat(self, pid: int) -> tuple[int, float] | None:
        """(parent pid, CPU-seconds) of ``pid``, or None when it has ended."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick

    def _stats(self) -> dict[int, tuple[int, float]]:
        """pid -> (parent pid, CPU-seconds) of every process."""
        stats = {int(e.name): self._stat(int(e.name)) for e in os.scandir("/proc") if e.name.isdigit()}
        return {pid: st for pid, st in stats.items() if st is not None}

    def _run(self, period: float) -> None:
        """Every ``period``, the CPU of the known tree; every fourth, a scan of all of
        ``/proc`` for new descendants first (the sampler's own cost stays small)."""
        tree: set[int] = {self.root}
        last: dict[int, float] = {}
        tick = 0
        while not self._stop.wait(period):
            if tick % 4 == 0:
                stats = self._stats()
                grew = True
                while grew:
                    grew = False
                    for pid, (ppid, _) in stats.items():
                        if ppid in tree and pid not in tree:
                            tree.add(pid)
                            grew = True
                for pid in tree - self.roles.keys():
                    self.roles[pid] = self._role(pid)
            tick += 1
            for pid in tree:
                st = self._stat(pid)
                if st is not None:
                    last[pid] = st[1]  # a process that ended keeps its last reading
            self.samples.append((time.time(), dict(last)))

    def _role(self, pid: int) -> str:
        if pid == self.root:
            return "driver"
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "other"
        first = line.split(" ", 1)[0]
        if first.endswith(("gcs_server", "raylet")):
            return "ray_daemons"
        if first.endswith("Agent") or "dashboard/agent.py" in line or "runtime_env/agent" in line:
            return "ray_agents"
        if first.startswith("ray::") or "default_worker.py" in line:
            return "workers"
        return "other"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self, at: float) -> dict[str, float]:
        """CPU-seconds per role at the last sample before ``at`` (epoch seconds)."""
        before = [cpu for when, cpu in self.samples if when <= at]
        out: dict[str, float] = {}
        for pid, seconds in (before[-1] if before else {}).items():
            role = self.roles.get(pid, "other")
            out[role] = out.get(role, 0.0) + seconds
        return {k: round(v, 3) for k, v in sorted(out.items())}


def settle(limit_s: float = 20.0, window_s: float = 0.5, busy_cores: float = 0.1) -> float:
    """Wait until the machine is idle (less than ``busy_cores`` busy over ``window_s``: the
    last launch's Ray has wound down), at most ``limit_s``; returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        before = CpuClock.busy()
        time.sleep(window_s)
        if CpuClock.busy() - before < busy_cores * window_s:
            break
    return time.monotonic() - began


def launch(variant: str, root: Path, before: Path | None = None) -> dict[str, Any]:
    """One quick-start launch with ``variant``; its start-up and parts (s after Popen)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=root))
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep.update(n_trials=TRIALS)
    if variant != "before":
        sweep.update(ray={"local": variant})
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    waited = settle()
    load_before = os.getloadavg()[0]
    with CpuClock() as cpu:
        launched = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "crest", "--log-level", "info", "--log-file", "driver.log",
                                 "launch", "sweep.yaml", "-q"], cwd=workdir,
                                env=env(before if variant == "before" and before else REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs = ProcClock(proc.pid)
        try:
            _, stderr = proc.communicate(timeout=TIMEOUT_S)
        finally:
            procs.stop()
            if proc.poll() is None:
                proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: crest exited with {proc.returncode}:\n{stderr[-3000:]}")
    first = min(t["start"] for t in crest_trials(workdir))
    marks = log_times(workdir / "driver.log")
    busy = cpu.between(launched, first)
    out: dict[str, Any] = {"startup_s": first - launched, "load_before": load_before, "settled_s": waited,
                           "cpu_busy_s": busy,
                           "cpu_floor_s": busy / (os.cpu_count() or 1), "cpu_by_role": procs.by_role(first)}
    for key in MARKS:
        out[key] = marks[key] - launched if key in marks else None
    out["ray_start_s"], out["ray_waited_s"] = marks.get("ray_start_s"), marks.get("ray_waited_s")
    return out


def ray_only(variant: str) -> dict[str, Any]:
    """``connect`` of a local Ray alone, in a fresh process (seconds, imports excluded)."""
    done = subprocess.run([sys.executable, "-c", RAY_ONLY, variant], env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ray.init ({variant}) exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return {"ray_init_s": float(done.stdout.strip().splitlines()[-1])}


def chains(variant: str) -> dict[str, Any]:
    """The chains alone (see :data:`WORKER_ONLY`), each time in seconds after ``Popen``:
    ``ray_up_s``, ``worker_ready_s``, ``baseline_done_s`` and ``startup_floor_s``, the
    later of the chains this variant runs."""
    settle()
    launched = time.time()
    if variant == "chain_baseline":
        cmd = [sys.executable, "-c", BASELINE_ONLY]
    else:
        cmd = [sys.executable, "-c", WORKER_ONLY, "both" if variant == "chain_both" else "worker", BASELINE_ONLY]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    fields = done.stdout.strip().splitlines()[-1].split()
    after = [None if f == "None" else float(f) - launched for f in fields]  # epoch seconds -> after Popen
    keys = ("baseline_done_s",) if variant == "chain_baseline" else ("ray_up_s", "worker_ready_s", "baseline_done_s")
    out = {k: v for k, v in zip(keys, after, strict=True) if v is not None}
    out["startup_floor_s"] = max(out.get("worker_ready_s", 0.0), out.get("baseline_done_s", 0.0))
    return out


def _git_head(tree: Path) -> dict[str, str]:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False)
    return {"git_head": done.stdout.strip()}


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = ("startup_s", "ray_up_s", "baseline_s", "first_sent_s", "ray_start_s", "ray_waited_s", "cpu_busy_s",
            "cpu_floor_s", "ray_init_s", "worker_ready_s", "baseline_done_s", "startup_floor_s")
    out: dict[str, Any] = {}
    for variant, reps in runs.items():
        medians = {k: _median(reps, k) for k in keys}
        out[variant] = {k: v for k, v in medians.items() if v is not None}
        out[variant]["range_startup_s"] = [min(r["startup_s"] for r in reps), max(r["startup_s"] for r in reps)] \
            if reps and "startup_s" in reps[0] else None
        roles = sorted({role for r in reps for role in r.get("cpu_by_role", {})})
        if roles:
            out[variant]["cpu_by_role"] = {
                role: statistics.median(r.get("cpu_by_role", {}).get(role, 0.0) for r in reps) for role in roles}
    return out


def table(s: dict[str, Any]) -> str:
    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    head = ("| variant | start-up s (range) | Ray up | baseline stored | first trial sent | Ray's start | "
            "driver waited for Ray | busy CPU-s | floor s |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for v in [*VARIANTS, "before"]:
        if v not in s:
            continue
        row = s.get(v, {})
        rng = row.get("range_startup_s")
        lines.append(f"| {v} | {cell(row.get('startup_s'))} ({cell(rng[0]) if rng else '—'}-{cell(rng[1]) if rng else '—'})"
                     f" | {cell(row.get('ray_up_s'))} | {cell(row.get('baseline_s'))} | {cell(row.get('first_sent_s'))}"
                     f" | {cell(row.get('ray_start_s'))} | {cell(row.get('ray_waited_s'))}"
                     f" | {cell(row.get('cpu_busy_s'))} | {cell(row.get('cpu_floor_s'))} |")
    lines.append(f"| `ray.init` alone, lean / full | | | | | {cell(s.get('ray_init_lean', {}).get('ray_init_s'))} / "
                 f"{cell(s.get('ray_init_full', {}).get('ray_init_s'))} | | | |")
    if any(c in s for c in CHAINS):
        lines += ["", "The chains alone, from a fresh process's launch (median, s; see ``WORKER_ONLY``):", "",
                  "| chain | Ray up | worker ready | baseline trained | the later |", "|---|---|---|---|---|"]
        for c in CHAINS:
            row = s.get(c, {})
            if row:
                lines.append(f"| {c.removeprefix('chain_')} | {cell(row.get('ray_up_s'))} | "
                             f"{cell(row.get('worker_ready_s'))} | {cell(row.get('baseline_done_s'))} | "
                             f"{cell(row.get('startup_floor_s'))} |")
    roles = ("driver", "workers", "ray_agents", "ray_daemons", "other")
    lines += ["", "CPU-seconds before the first trial, by process (median):", "",
              "| variant | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for v in [*VARIANTS, "before"]:
        by_role = s.get(v, {}).get("cpu_by_role")
        if by_role:
            lines.append(f"| {v} | " + " | ".join(cell(by_role.get(r)) for r in roles) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a crest source tree to launch as the variant 'before'")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "startup.json")
    args = parser.parse_args()
    started = time.time()
    variants = [*VARIANTS, *(["before"] if args.before else []), "ray_init_lean", "ray_init_full", *CHAINS]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="crest-startup-") as tmp:
        for repeat, variant in schedule(variants, args.repeats):
            if variant.startswith("ray_init"):
                result = ray_only(variant.rsplit("_", 1)[1])
            elif variant in CHAINS:
                result = chains(variant)
            else:
                result = launch(variant, Path(tmp), args.before)
            runs[variant].append({"repeat": repeat, **result})
            print(f"{variant:14s} repeat {repeat}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()
                                                                if isinstance(v, float)), flush=True)
    s = summary(runs)
    lean = s.get("lean", {}).get("startup_s")
    doc = {
        "issue": 14, "what": "start-up of the quick start (Popen to the first trial's start) and its parts",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(time.time() - started, 1),
        "machine": machine(), "crest_source": crest_source(None), "command": " ".join(sys.argv),
        "interpreter": sys.executable, "ray_dashboard_packages": importlib.util.find_spec("aiohttp") is not None,
        "sweep": str(SWEEP.relative_to(REPO)), "n_trials": TRIALS, "repeats": args.repeats,
        "before": None if args.before is None else {"tree": str(args.before), **_git_head(args.before)},
        "summary": s, "goal": {"startup_under_4s": None if lean is None else lean < GOAL_STARTUP_S,
                               "startup_s": lean, "goal_s": GOAL_STARTUP_S},
        "chains_both_floor_s": s.get("chain_both", {}).get("startup_floor_s"),
        "ratio_lean_to_chains_both": None if lean is None or not s.get("chain_both", {}).get("startup_floor_s")
        else lean / s["chain_both"]["startup_floor_s"],
        "ratio_lean_to_full": None if lean is None or not s.get("full", {}).get("startup_s")
        else lean / s["full"]["startup_s"],
        "ratio_lean_to_before": None if lean is None or not s.get("before", {}).get("startup_s")
        else lean / s["before"]["startup_s"],
        "runs": runs, "table": table(s),
    }
    write_json(args.out, doc)
    print(doc["table"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
