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
  cores. Run it on an idle machine (``load_before`` is the 1-minute load at launch).

Variants, interleaved (each repeat runs every variant once, the order rotated):

- ``lean``: the default (``ray: {local: lean}``): a local Ray without the autoscaler
  monitor, the log monitor and the dashboard's API server;
- ``full``: ``ray: {local: full}``, Ray started as ``ray.init`` starts it;
- ``before`` (with ``--before PATH``): crest from another source tree, e.g. the commit
  before this work (``git worktree add /tmp/crest-before 70ef2ff``), with its own
  defaults; its log names fewer parts.

Also, in the same run and interleaved, ``ray.init`` alone (``ray_init_lean`` /
``ray_init_full``): a fresh process that imports Ray, times
``crest.orchestrator._cluster.connect`` of a local Ray, and stops it.

Run: ``python bench/startup.py [--repeats 5] [--before PATH] [--out bench/results/startup.json]``; about
20 s per launch. Prints a table and writes the JSON (machine, crest's git commit, every
run, medians, the goal).
"""

from __future__ import annotations

import argparse
import os
import re
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


def launch(variant: str, root: Path, before: Path | None = None) -> dict[str, Any]:
    """One quick-start launch with ``variant``; its start-up and parts (s after Popen)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=root))
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep.update(n_trials=TRIALS)
    if variant != "before":
        sweep.update(ray={"local": variant})
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    load_before = os.getloadavg()[0]
    with CpuClock() as cpu:
        launched = time.time()
        done = subprocess.run([sys.executable, "-m", "crest", "--log-level", "info", "--log-file", "driver.log",
                               "launch", "sweep.yaml", "-q"], cwd=workdir,
                              env=env(before if variant == "before" and before else REPO), capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: crest exited with {done.returncode}:\n{done.stderr[-3000:]}")
    first = min(t["start"] for t in crest_trials(workdir))
    marks = log_times(workdir / "driver.log")
    busy = cpu.between(launched, first)
    out: dict[str, Any] = {"startup_s": first - launched, "load_before": load_before, "cpu_busy_s": busy,
                           "cpu_floor_s": busy / (os.cpu_count() or 1)}
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


def _git_head(tree: Path) -> dict[str, str]:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False)
    return {"git_head": done.stdout.strip()}


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = ("startup_s", "ray_up_s", "baseline_s", "first_sent_s", "ray_start_s", "ray_waited_s", "cpu_busy_s",
            "cpu_floor_s", "ray_init_s")
    out: dict[str, Any] = {}
    for variant, reps in runs.items():
        medians = {k: _median(reps, k) for k in keys}
        out[variant] = {k: v for k, v in medians.items() if v is not None}
        out[variant]["range_startup_s"] = [min(r["startup_s"] for r in reps), max(r["startup_s"] for r in reps)] \
            if reps and "startup_s" in reps[0] else None
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a crest source tree to launch as the variant 'before'")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "startup.json")
    args = parser.parse_args()
    started = time.time()
    variants = [*VARIANTS, *(["before"] if args.before else []), "ray_init_lean", "ray_init_full"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="crest-startup-") as tmp:
        for repeat, variant in schedule(variants, args.repeats):
            if variant.startswith("ray_init"):
                result = ray_only(variant.rsplit("_", 1)[1])
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
        "sweep": str(SWEEP.relative_to(REPO)), "n_trials": TRIALS, "repeats": args.repeats,
        "before": None if args.before is None else {"tree": str(args.before), **_git_head(args.before)},
        "summary": s, "goal": {"startup_under_4s": None if lean is None else lean < GOAL_STARTUP_S,
                               "startup_s": lean, "goal_s": GOAL_STARTUP_S},
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
