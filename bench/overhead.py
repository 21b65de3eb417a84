"""Orchestration overhead per trial: crest against Ray Tune + OptunaSearch and Optuna alone.

Issue 14 ("A driver that keeps up"). One run measures, interleaved and repeated, five
systems on the same trial function at 2 workers:

- ``crest``: ``crest launch`` (the CLI, as a user runs it) on a SQLite file;
- ``crest-ray-full`` (only when named in ``--systems``): the same with ``ray: {local: full}``
  (a local Ray with the processes a lean one leaves out);
- ``tune-default``: Ray Tune with ``OptunaSearch``, defaults (a new actor per trial);
- ``tune-reuse``: the same with ``reuse_actors=True``;
- ``optuna-sqlite``: Optuna alone, RDB storage on a SQLite file, ``n_jobs=2`` (threads);
- ``optuna-memory``: Optuna alone, in-memory storage, ``n_jobs=2``.

The trial function. Every system runs a real crest trial: crest's own trial pipeline
(:class:`crest.tasks.TrialRunner`: prune, weight sharing, encode, decode, score the
decoded bytes) on a tiny workload defined here (:func:`bench_workload`: a 32-16-10 MLP,
300 synthetic training and 100 test samples made from a fixed seed, nothing read from
disk). crest reaches it as any user workload (``module:function``, ``overhead:bench_workload``,
imported from ``PYTHONPATH``); the peers call ``TrialRunner.run`` with the same parameter
space (4 parameters: a prune quality and a code width per weight tensor), each worker
process building its runner once. A trivial fixed-cost function would be simpler, but
crest can only run its own pipeline, and running that pipeline everywhere means the
same trial code, the same parameters and the same artifact work on every system. Each
peer trains the same dense baseline once in its driver before its first trial, as crest
does in its start-up. The sampler is TPE everywhere (seeded, multivariate, crest's
``n_startup_trials``); crest also passes its accuracy constraint to TPE, the peers do
not. ``--trial`` changes the trial function for every system at once: ``tiny`` (the
default, no retraining), ``sleep:MS`` (the workload's scoring also sleeps MS ms: a fixed
extra cost per trial), ``epochs:N`` (N retraining epochs), or both (``sleep:20,epochs:1``).

What is measured, per run:

- overhead per trial = (workers x wall time - time inside the trial function) / trials.
  Time inside is the pipeline's own clock of each trial (``TrialOutcome.seconds``, what
  crest records as ``wall_seconds``), the same number for every system. The wall time runs
  from the first trial's start to the last trial's end: for the peers both are read by the
  trial function itself; for crest the end is when the driver recorded the last trial
  (``crest_trials.finished_at``) and the start is the first trial's ``finished_at`` minus
  its time inside, so crest is charged the latency of recording those trials and the
  peers are not (this favours the peers, by a few ms per run). Start-up and teardown are
  not in this figure.
- start-up: from launching the process (``Popen``) to the first trial's start.
- peak memory: the largest sum of RSS over the launched process and all its descendants
  (Ray's GCS, raylet, agents and workers), sampled every 0.5 s. RSS counts shared pages
  (torch's libraries) once per process, so it overstates what the machine needs. Also the
  launched process's own RSS (crest's driver; a peer's driver process): its peak, and its
  last sample before it exited (``driver_peak_rss_mb``, ``driver_last_rss_mb``).
- completed trials lost to one kill -9 of the driver: the trial function writes a line to
  a probe file as each trial ends (in the workload's scoring, the last step of a trial);
  when ``--kill-after`` trials have ended, the driver gets SIGKILL (and whatever it
  started that survives it is killed too). Lost = trials ended before the kill minus the
  trials the system kept: crest's COMPLETE rows, the TERMINATED trials of Tune's saved
  experiment state, Optuna's COMPLETE rows (in-memory keeps nothing). A trial that had
  ended on its worker but whose result had not reached the driver's storage yet counts as
  lost. crest is then resumed (``crest resume``) to its trial count, which checks that
  the study ends with exactly ``n_trials`` complete trials and counts the trial runs that
  were wasted (runs of the trial function beyond ``n_trials``).

Goals (issue 14): crest's overhead at most a third of ``tune-reuse`` in the same run;
crest's overhead at the large size at most 1.5x its overhead at the small size; crest's
start-up under 4 s. ``tune-default`` runs only at the small size (at 5,000 trials, about
2.7 s per trial, it would take hours); the JSON says so.

Run (the defaults take hours, mostly the 5,000-trial runs; ``--large-trials 1000
--large-repeats 1 --default-repeats 1`` took 33 minutes on the 2-core machine):
``python bench/overhead.py [--trials 200] [--large-trials 5000] [--repeats 3]
[--large-repeats 3] [--systems crest,tune-reuse,...] [--trial tiny] [--kill-trials 200]
[--kill-after 100] [--kill-systems ...] [--default-repeats N] [--no-kill]``;
``--large-trials 0`` skips the large size, ``--default-repeats`` runs ``tune-default`` (seconds
per trial) fewer times than the others. crest is imported from a copy of ``crest/`` made when
the run starts (``--no-snapshot``: from the working tree), so that edits made meanwhile do not
reach the systems measured; the JSON names the git commit, the files changed since and a
digest of the sources. Needs the
peers: ``pip install -e '.[bench]'``. Writes ``bench/results/overhead.json`` (``--out``)
and prints a summary table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch
from torch import nn
from torch.utils.data import TensorDataset

from crest.tasks import TrialPlan, TrialRunner, Workload, resolve_plan, train_baseline

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
WORKERS = 2
SEED = 0
STUDY = "overhead"
WORKLOAD_REF = "overhead:bench_workload"
TRIAL_ENV = "CREST_BENCH_TRIAL"  # the trial function's spec, read by every process
PROBE_ENV = "CREST_BENCH_PROBE"  # the file each trial's end is written to
SYSTEMS = ("crest", "crest-ray-full", "tune-default", "tune-reuse", "optuna-sqlite", "optuna-memory")
LABELS = {
    "crest": "crest (SQLite)",
    "crest-ray-full": "crest (SQLite), ray.local: full",
    "tune-default": "Ray Tune + OptunaSearch, defaults",
    "tune-reuse": "Ray Tune + OptunaSearch, reuse_actors=True",
    "optuna-sqlite": "Optuna alone, SQLite, n_jobs=2",
    "optuna-memory": "Optuna alone, in memory, n_jobs=2",
}
SMALL_ONLY = ("tune-default",)  # hours at 5,000 trials
GOAL_VS_TUNE = 1 / 3
GOAL_FLAT = 1.5
GOAL_STARTUP_S = 4.0
N_FEATURES, N_HIDDEN, N_CLASSES, N_TRAIN, N_TEST = 32, 16, 10, 300, 100
RAY_INIT = {"include_dashboard": False, "object_store_memory": 256 * 1024 * 1024, "log_to_driver": False}
CHILD_TIMEOUT_S = 4 * 3600


# --------------------------------------------------------------------------- the trial


@dataclass(frozen=True)
class TrialSpec:
    """The trial function: extra sleep in the scoring (ms) and retraining epochs."""

    sleep_ms: float = 0.0
    epochs: int = 0

    @classmethod
    def parse(cls, text: str) -> TrialSpec:
        """``tiny``, ``sleep:MS``, ``epochs:N`` or a comma-separated mix of the last two."""
        sleep_ms, epochs = 0.0, 0
        for part in (p.strip() for p in text.split(",") if p.strip() and p.strip() != "tiny"):
            key, _, value = part.partition(":")
            if key == "sleep":
                sleep_ms = float(value)
            elif key == "epochs":
                epochs = int(value)
            else:
                raise ValueError(f"--trial: unknown part {part!r} (tiny, sleep:MS, epochs:N)")
        return cls(sleep_ms, epochs)

    def __str__(self) -> str:
        parts = ([f"sleep:{self.sleep_ms:g}"] if self.sleep_ms else []) + ([f"epochs:{self.epochs}"] if self.epochs else [])
        return ",".join(parts) or "tiny"


def current_spec() -> TrialSpec:
    """The trial spec this process runs (from ``CREST_BENCH_TRIAL``; ``tiny`` by default)."""
    return TrialSpec.parse(os.environ.get(TRIAL_ENV, "tiny"))


class TinyNet(nn.Module):
    """32-16-10 fully connected (698 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, N_HIDDEN)
        self.fc2 = nn.Linear(N_HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return logits


def synthetic_data(n: int, seed: int) -> TensorDataset:
    """``n`` samples of 10 Gaussian clusters in 32 dimensions (fixed centres, seeded noise)."""
    centres = torch.randn(N_CLASSES, N_FEATURES, generator=torch.Generator().manual_seed(SEED))
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=gen)
    x = centres[labels] + 0.8 * torch.randn(n, N_FEATURES, generator=gen)
    return TensorDataset(x, labels)


def _probe(kind: str) -> None:
    """Append ``kind pid time`` to the probe file, when one is set."""
    path = os.environ.get(PROBE_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def _in_baseline() -> bool:
    """Whether the caller runs inside baseline training (crest's or a peer's)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "train_baseline":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _scorer(test: TensorDataset, sleep_ms: float) -> Callable[[nn.Module], float]:
    """Top-1 accuracy on ``test``, then the spec's sleep, then a probe line (a trial's last step)."""
    x, y = test.tensors

    def score(model: nn.Module) -> float:
        with torch.no_grad():
            accuracy = float((model(x).argmax(dim=1) == y).float().mean())
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        _probe("baseline" if _in_baseline() else "trial")
        return accuracy

    return score


def make_workload(spec: TrialSpec) -> Workload:
    """The tiny workload of ``spec``."""
    test = synthetic_data(N_TEST, seed=2)
    return Workload(
        name="overhead-tiny",
        build_model=TinyNet,
        train_set=synthetic_data(N_TRAIN, seed=1),
        test_set=test,
        baseline_epochs=3,
        batch_size=64,
        lr=3e-3,
        evaluate=_scorer(test, spec.sleep_ms),
        description="32-16-10 MLP on 300/100 synthetic samples (bench/overhead.py)",
    )


def bench_workload() -> Workload:
    """crest's entry point (``overhead:bench_workload``): the workload of ``CREST_BENCH_TRIAL``."""
    return make_workload(current_spec())


def sweep(spec: TrialSpec, n_trials: int) -> dict[str, Any]:
    """crest's sweep file (as a mapping) for ``spec``: prune, [retrain], quantize."""
    stages: list[dict[str, Any]] = [{"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}}]
    if spec.epochs:
        stages.append({"type": "retrain", "epochs": spec.epochs})
    stages.append({"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}})
    return {"study": STUDY, "workload": WORKLOAD_REF, "n_trials": n_trials, "workers": WORKERS, "seed": SEED,
            "constraints": {"max_accuracy_drop": 0.05}, "stages": stages}


def trial_plan(spec: TrialSpec) -> TrialPlan:
    """The resolved plan of ``spec``'s sweep, as crest's driver resolves it."""
    from crest.config import parse_sweep

    config = parse_sweep(sweep(spec, 1))
    named = list(TinyNet().named_parameters())
    return resolve_plan(config.stages, [n for n, _ in named], shapes={n: tuple(p.shape) for n, p in named})


_LOCAL = threading.local()  # one runner per thread (Optuna's n_jobs) and per process


def _runner(baseline: tuple[bytes, float]) -> TrialRunner:
    """This thread's runner, built once (the workload and the decoded baseline)."""
    runner = getattr(_LOCAL, "runner", None)
    if runner is None:
        torch.set_num_threads(1)
        spec = current_spec()
        runner = TrialRunner(make_workload(spec), trial_plan(spec), baseline[0], baseline[1])
        _LOCAL.runner = runner
    return runner


def run_trial(params: dict[str, Any], baseline: tuple[bytes, float]) -> dict[str, float]:
    """The peers' trial function: one crest trial; returns its clock and its result."""
    start = time.time()
    runner = _runner(baseline)
    outcome = runner.run({**runner.plan.fixed_params(), **params}, seed=SEED)
    return {"start": start, "end": time.time(), "seconds": outcome.seconds,
            "size": float(outcome.size_bytes), "accuracy": outcome.accuracy}


def tune_key(index: int) -> str:
    """Tune's name of the plan's ``index``-th searched parameter (Tune nests keys at "/")."""
    return f"p{index}"


def tune_trainable(config: dict[str, Any], baseline: tuple[bytes, float] | None = None) -> None:
    """Ray Tune's function trainable: one trial, one report."""
    from ray import tune

    assert baseline is not None
    names = [p.name for p in _runner(baseline).plan.searched()]
    tune.report(run_trial({name: config[tune_key(i)] for i, name in enumerate(names)}, baseline))


# --------------------------------------------------------------------------- the peers (child processes)


def distributions(plan: TrialPlan) -> dict[str, Any]:
    """The plan's searched parameters as Optuna distributions (crest's suggest, as data)."""
    import optuna.distributions as d

    space: dict[str, Any] = {}
    for p in plan.searched():
        if p.choices is not None:
            space[p.name] = d.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            space[p.name] = d.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            space[p.name] = d.FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.log)  # type: ignore[arg-type]
    return space


def sampler(n_trials: int) -> Any:
    """TPE as crest configures it (seeded, multivariate, its startup trials), without constraints."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=SEED, multivariate=True, n_startup_trials=min(10, max(2, n_trials // 4)))


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    """One parameter through Optuna's public suggest API."""
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def child_optuna(n_trials: int, storage: str | None) -> list[dict[str, float]]:
    """Optuna alone: ``study.optimize`` with ``n_jobs=2`` threads; the trials' clocks."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = current_spec()
    baseline = train_baseline(make_workload(spec), seed=SEED)
    store = None if storage is None else optuna.storages.RDBStorage(
        storage, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(study_name=STUDY, storage=store, sampler=sampler(n_trials), direction="minimize")
    space = distributions(trial_plan(spec))
    records: list[dict[str, float]] = []

    def objective(trial: Any) -> float:
        result = run_trial({name: _suggest(trial, name, dist) for name, dist in space.items()}, baseline)
        records.append(result)
        return result["size"]

    study.optimize(objective, n_trials=n_trials, n_jobs=WORKERS)
    return records


def child_tune(n_trials: int, reuse: bool, workdir: Path) -> list[dict[str, float]]:
    """Ray Tune + OptunaSearch on a local Ray of 2 CPUs, one CPU per trial; the trials' clocks."""
    import logging

    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address="local", num_cpus=WORKERS, logging_level=logging.WARNING, **RAY_INIT)  # type: ignore[arg-type]
    spec = current_spec()
    baseline = train_baseline(make_workload(spec), seed=SEED)
    space = {tune_key(i): dist for i, dist in enumerate(distributions(trial_plan(spec)).values())}
    search = OptunaSearch(space=space, metric="size", mode="min", sampler=sampler(n_trials))
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, baseline=baseline), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=n_trials, max_concurrent_trials=WORKERS,
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(name="exp", storage_path=str(workdir), verbose=0),
    )
    grid = tuner.fit()
    keys = ("start", "end", "seconds")
    results = [grid[i] for i in range(len(grid))]
    return [{k: float(r.metrics[k]) for k in keys} for r in results if r.metrics and all(k in r.metrics for k in keys)]


def child_main(system: str, n_trials: int, workdir: Path) -> None:
    """Run one peer in this process and write its trials' clocks to ``workdir/trials.json``."""
    if system == "optuna-sqlite":
        records = child_optuna(n_trials, f"sqlite:///{workdir / 'optuna.db'}")
    elif system == "optuna-memory":
        records = child_optuna(n_trials, None)
    elif system in ("tune-default", "tune-reuse"):
        records = child_tune(n_trials, system == "tune-reuse", workdir)
    else:
        raise ValueError(f"unknown peer {system!r}")
    (workdir / "trials.json").write_text(json.dumps(records))


# --------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _identity(pid: int) -> str:
    """``pid``'s start time (clock ticks since boot): tells it from a later process with the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class TreeSampler:
    """Samples a process tree every ``period`` s (on a thread, between :meth:`start` and
    :meth:`stop`): the peak sum of RSS, the root's own RSS (its peak, and its last sample:
    the driver near the run's end), and every process seen with its start time."""

    def __init__(self, root: int, period: float = 0.5) -> None:
        self.root, self.period = root, period
        self.peak_bytes = 0
        self.root_peak_bytes = self.root_last_bytes = 0
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """One sample: the tree's processes now and the sum of their RSS."""
        tree = process_tree(self.root)
        for pid in tree:
            if pid not in self.seen:
                self.seen[pid] = _identity(pid)
        self.peak_bytes = max(self.peak_bytes, sum(_rss(pid) for pid in tree))
        root = _rss(self.root)
        if root:  # 0 once the root has exited: its last reading is kept
            self.root_last_bytes = root
            self.root_peak_bytes = max(self.root_peak_bytes, root)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def kill_survivors(self) -> list[int]:
        """SIGKILL every process seen in the tree that still runs (Ray's agents outlive a
        killed driver); their pids."""
        killed = []
        for pid, started in self.seen.items():
            if started and _identity(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        return killed


def snapshot_crest(root: Path) -> Path:
    """Copy the working tree's ``crest`` package to ``root/src`` (what every system imports
    from then on, so edits made while the benchmark runs do not reach it); returns ``root/src``."""
    src = root / "src"
    shutil.copytree(REPO / "crest", src / "crest", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def crest_source(src: Path | None) -> dict[str, Any]:
    """Which crest was measured: git HEAD, the files changed since, a digest of the snapshot."""
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    digest = hashlib.sha256()
    for path in sorted((src or REPO).glob("crest/**/*.py")):
        digest.update(path.relative_to(src or REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return {"git_head": git("rev-parse", "HEAD"), "changed_since_head": git("status", "--porcelain", "crest").splitlines(),
            "snapshot": src is not None, "sources_sha256": digest.hexdigest()}


def child_env(spec: TrialSpec, workdir: Path) -> dict[str, str]:
    """The environment of a system launched in ``workdir``: the trial spec, the probe file,
    ``overhead`` importable, and crest from the snapshot beside ``workdir`` when there is one."""
    env = dict(os.environ)
    src = workdir.parent / "src"
    paths = [str(BENCH_DIR), str(src if (src / "crest").is_dir() else REPO)]
    paths += [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env.update({TRIAL_ENV: str(spec), PROBE_ENV: str(workdir / "probe.log"),
                "PYTHONPATH": os.pathsep.join(paths), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                "PYTHONUNBUFFERED": "1"})
    return env


def command(system: str, n_trials: int, workdir: Path, spec: TrialSpec, *, lease_ttl: float | None = None) -> list[str]:
    """The command line that runs ``system`` for ``n_trials`` trials in ``workdir``."""
    if system.startswith("crest"):
        sweep_file = workdir / "sweep.json"  # JSON is YAML
        config = sweep(spec, n_trials)
        if system == "crest-ray-full":
            config["ray"] = {"local": "full"}
        sweep_file.write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "crest", "launch", str(sweep_file), "--storage", crest_url(workdir), "-q"]
        return cmd + (["--lease-ttl", str(lease_ttl)] if lease_ttl else [])
    return [sys.executable, str(Path(__file__).resolve()), "--child", system, "--trials", str(n_trials),
            "--workdir", str(workdir)]


def crest_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'crest.db'}"


@dataclass
class Launched:
    """A system started in its own directory."""

    system: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    launched_at: float
    sampler: TreeSampler

    def log_tail(self) -> str:
        text = (self.workdir / "output.log").read_text(errors="replace")
        return text[-3000:]


@contextmanager
def launch(system: str, n_trials: int, root: Path, spec: TrialSpec, *, lease_ttl: float | None = None
           ) -> Iterator[Launched]:
    """Start ``system`` in a new directory under ``root``, sampling its process tree."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{system}-{n_trials}-", dir=root))
    cmd = command(system, n_trials, workdir, spec, lease_ttl=lease_ttl)
    with open(workdir / "output.log", "wb") as log:
        launched_at = time.time()
        proc = subprocess.Popen(cmd, cwd=workdir, env=child_env(spec, workdir), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        tree = TreeSampler(proc.pid)
        tree.start()
        try:
            yield Launched(system, workdir, proc, launched_at, tree)
        finally:
            tree.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            time.sleep(0.5)
            tree.kill_survivors()


def probe_lines(workdir: Path, kind: str = "trial") -> list[float]:
    """Times of the probe lines of ``kind`` written in ``workdir``."""
    path = workdir / "probe.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [float(p[2]) for p in lines if len(p) == 3 and p[0] == kind]


# --------------------------------------------------------------------------- reading the results


def _epoch(text: str) -> float:
    """A datetime stored by SQLAlchemy in SQLite (UTC, with or without an offset) as epoch seconds."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def crest_trials(workdir: Path) -> list[dict[str, float]]:
    """crest's complete trials: start (recorded end minus time inside), recorded end, time inside."""
    with sqlite3.connect(workdir / "crest.db") as conn:
        rows = conn.execute("SELECT wall_seconds, finished_at FROM crest_trials WHERE state = 'COMPLETE'").fetchall()
    return [{"start": _epoch(end) - float(sec), "end": _epoch(end), "seconds": float(sec)} for sec, end in rows]


def count_rows(db: Path, sql: str) -> int:
    """One count from a SQLite file (0 when the file is not there)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # killed before the table was created
            return 0


def tune_saved(workdir: Path) -> int:
    """Trials that Tune's saved experiment state holds as TERMINATED (0 when none was saved)."""
    exp = workdir / "exp"
    if not any(exp.glob("experiment_state*.json")):
        return 0
    from ray.tune import ExperimentAnalysis

    return sum(t.status == "TERMINATED" for t in ExperimentAnalysis(str(exp)).trials)


def saved_trials(system: str, workdir: Path) -> int:
    """Complete trials ``system`` kept in its storage."""
    if system.startswith("crest"):
        return count_rows(workdir / "crest.db", "SELECT count(*) FROM crest_trials WHERE state = 'COMPLETE'")
    if system == "optuna-sqlite":
        return count_rows(workdir / "optuna.db", "SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
    if system.startswith("tune"):
        return tune_saved(workdir)
    return 0


def overhead(trials: list[dict[str, float]], launched_at: float, workers: int = WORKERS) -> dict[str, float]:
    """Overhead per trial (ms), start-up (s) and their parts, from the trials' clocks."""
    first = min(t["start"] for t in trials)
    wall = max(t["end"] for t in trials) - first
    inside = sum(t["seconds"] for t in trials)
    return {"trials": len(trials), "overhead_ms": (workers * wall - inside) / len(trials) * 1000,
            "startup_s": first - launched_at, "wall_s": wall, "inside_s": inside,
            "trial_ms": inside / len(trials) * 1000}


# --------------------------------------------------------------------------- measuring


def measure(system: str, n_trials: int, root: Path, spec: TrialSpec) -> dict[str, Any]:
    """Run ``system`` to ``n_trials`` trials; its overhead, start-up and peak memory."""
    load_before = os.getloadavg()[0]
    with launch(system, n_trials, root, spec) as run:
        rc = run.proc.wait(timeout=CHILD_TIMEOUT_S)
        total = time.time() - run.launched_at
        if rc != 0:
            raise RuntimeError(f"{system} exited with {rc}:\n{run.log_tail()}")
    trials = crest_trials(run.workdir) if system.startswith("crest") else json.loads((run.workdir / "trials.json").read_text())
    if not trials:
        raise RuntimeError(f"{system}: no complete trial\n{run.log_tail()}")
    result = overhead(trials, run.launched_at)
    result.update(total_s=total, peak_rss_mb=run.sampler.peak_bytes / 2**20,
                  driver_peak_rss_mb=run.sampler.root_peak_bytes / 2**20,
                  driver_last_rss_mb=run.sampler.root_last_bytes / 2**20,
                  probe_trials=len(probe_lines(run.workdir)), processes=len(run.sampler.seen),
                  load_before=load_before, load_after=os.getloadavg()[0])
    return result


def wait_for_trials(run: Launched, count: int, timeout: float) -> None:
    """Poll the probe until ``count`` trials have ended (RuntimeError if the run ends first)."""
    deadline = time.time() + timeout
    while len(probe_lines(run.workdir)) < count:
        if run.proc.poll() is not None:
            raise RuntimeError(f"{run.system} ended before {count} trials:\n{run.log_tail()}")
        if time.time() > deadline:
            raise RuntimeError(f"{run.system}: {count} trials not reached in {timeout:.0f} s")
        time.sleep(0.05)


def kill_test(system: str, n_trials: int, kill_after: int, root: Path, spec: TrialSpec) -> dict[str, Any]:
    """kill -9 the driver after ``kill_after`` trials ended; what it kept (crest: then resume)."""
    lease_ttl = 2.0 if system.startswith("crest") else None
    with launch(system, n_trials, root, spec, lease_ttl=lease_ttl) as run:
        wait_for_trials(run, kill_after, timeout=CHILD_TIMEOUT_S)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        ended = len(probe_lines(run.workdir))
        time.sleep(1.0)
        survivors = run.sampler.kill_survivors()
    saved = saved_trials(system, run.workdir)
    result: dict[str, Any] = {"trials": n_trials, "ended_before_kill": ended, "saved": saved,
                              "lost": ended - saved, "left_running_after_1s": len(survivors)}
    if system.startswith("crest"):
        result.update(resume_crest(run.workdir, n_trials, lease_ttl or 0.0, spec))
    return result


def resume_crest(workdir: Path, n_trials: int, lease_ttl: float, spec: TrialSpec) -> dict[str, Any]:
    """``crest resume`` to the end; whether the study is exact and how many trial runs were wasted."""
    time.sleep(lease_ttl + 0.5)  # the dead driver's lease goes stale
    cmd = [sys.executable, "-m", "crest", "resume", STUDY, "--storage", crest_url(workdir), "-q",
           "--workload", WORKLOAD_REF]
    done = subprocess.run(cmd, check=False, cwd=workdir, env=child_env(spec, workdir), capture_output=True,
                          timeout=CHILD_TIMEOUT_S, start_new_session=True)
    complete = count_rows(workdir / "crest.db", "SELECT count(*) FROM crest_trials WHERE state = 'COMPLETE'")
    runs = len(probe_lines(workdir))
    return {"resume_rc": done.returncode, "complete_after_resume": complete, "exact": complete == n_trials,
            "trial_runs_total": runs, "wasted_runs": runs - complete,
            **({"resume_error": done.stderr.decode(errors="replace")[-1500:]} if done.returncode else {})}


# --------------------------------------------------------------------------- the whole run


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


def summarise(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per system and size: the medians of the repeats."""
    out: dict[str, dict[str, Any]] = {}
    for system, sizes in runs.items():
        keys = ("overhead_ms", "startup_s", "peak_rss_mb", "driver_peak_rss_mb", "driver_last_rss_mb", "trial_ms",
                "total_s")
        out[system] = {str(n): {k: _median(reps, k) for k in keys} | {"repeats": len(reps)}
                       for n, reps in sizes.items() if reps}
    return out


def goals(summary: dict[str, dict[str, Any]], small: int, large: int) -> dict[str, Any]:
    """The issue's three goals, as booleans (None where a figure is missing)."""
    def fig(system: str, n: int, key: str) -> float | None:
        value = summary.get(system, {}).get(str(n), {}).get(key)
        return None if value is None else float(value)

    crest_s, crest_l = fig("crest", small, "overhead_ms"), fig("crest", large, "overhead_ms")
    tune = fig("tune-reuse", small, "overhead_ms")
    startup = fig("crest", small, "startup_s")
    return {
        "crest_overhead_at_most_third_of_tune_reuse": None if crest_s is None or tune is None
        else crest_s <= GOAL_VS_TUNE * tune,
        "crest_large_at_most_1_5x_small": None if crest_s is None or crest_l is None else crest_l <= GOAL_FLAT * crest_s,
        "crest_startup_under_4s": None if startup is None else startup < GOAL_STARTUP_S,
        "figures": {"crest_overhead_ms_small": crest_s, "crest_overhead_ms_large": crest_l,
                    "tune_reuse_overhead_ms_small": tune, "crest_startup_s": startup},
    }


def machine() -> dict[str, Any]:
    """Cores, CPU model, Python and the versions of the systems measured."""
    import optuna

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions: dict[str, str | None] = {"optuna": optuna.__version__, "torch": torch.__version__}
    for name in ("ray", "sqlalchemy", "crest"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), **versions}


def schedule(systems: list[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, system) in run order: each repeat runs every system once, the systems'
    order rotated by one per repeat (interleaved)."""
    order = []
    for r in range(repeats):
        k = r % len(systems)
        order += [(r, s) for s in systems[k:] + systems[:k]]
    return order


def table(summary: dict[str, dict[str, Any]], kills: dict[str, Any], small: int, large: int | None) -> str:
    """The summary as a Markdown table (no large column when ``large`` is None)."""
    def cell(value: Any, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    sizes_head = f"ms/trial at {small} |" + (f" ms/trial at {large} |" if large else "")
    lines = [f"| system | {sizes_head} start-up s | peak RSS MB | lost to kill -9 |",
             "|---|---|" + ("---|" if large else "") + "---|---|---|"]
    for system, sizes in summary.items():
        s = sizes.get(str(small), {})
        big = f" {cell(sizes.get(str(large), {}).get('overhead_ms'), '.1f')} |" if large else ""
        kill = kills.get(system)
        lost = "—" if kill is None or "lost" not in kill else f"{kill['lost']} of {kill['ended_before_kill']}"
        lines.append(f"| {LABELS[system]} | {cell(s.get('overhead_ms'), '.1f')} |{big} "
                     f"{cell(s.get('startup_s'), '.2f')} | {cell(s.get('peak_rss_mb'), '.0f')} | {lost} |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a temporary file in the same directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=200, help="the small size (trials per run)")
    p.add_argument("--large-trials", type=int, default=5000, help="the large size; 0 skips it")
    p.add_argument("--repeats", type=int, default=3, help="repeats at the small size (the median is reported)")
    p.add_argument("--large-repeats", type=int, default=3, help="repeats at the large size")
    p.add_argument("--default-repeats", type=int, default=None,
                   help="repeats of tune-default (seconds per trial), default --repeats")
    p.add_argument("--systems", default=",".join(s for s in SYSTEMS if s != "crest-ray-full"),
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--large-systems", default=None, help="systems at the large size (default: --systems but tune-default)")
    p.add_argument("--trial", default="tiny", help="the trial function: tiny, sleep:MS, epochs:N (or sleep:MS,epochs:N)")
    p.add_argument("--kill-trials", type=int, default=None, help="trials of each kill -9 run (default --trials)")
    p.add_argument("--kill-after", type=int, default=None, help="trials ended before the kill (default half)")
    p.add_argument("--kill-systems", default=None, help="systems of the kill -9 test (default --systems)")
    p.add_argument("--no-kill", action="store_true", help="skip the kill -9 test")
    p.add_argument("--no-snapshot", action="store_true",
                   help="import crest from the working tree (default: a copy made at the start)")
    p.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _systems(text: str | None, default: list[str]) -> list[str]:
    chosen = default if text is None else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    return chosen


Runs = dict[str, dict[int, list[dict[str, Any]]]]


def document(args: argparse.Namespace, runs: Runs, kills: dict[str, Any], started: float, source: dict[str, Any],
             done: bool) -> dict[str, Any]:
    """The JSON document of what has been measured so far (``done``: the whole run)."""
    summary = summarise(runs)
    large = args.large_trials or args.trials
    systems = list(runs)
    not_run = {s: f"not run at {args.large_trials} trials: a new actor per trial costs seconds, that run would take hours"
               for s in systems if s in SMALL_ONLY and args.large_trials}
    return {
        "issue": 14, "what": "orchestration overhead per trial at 2 workers, same trial function for every system",
        "complete": done, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1), "machine": machine(), "trial": str(TrialSpec.parse(args.trial)),
        "workers": WORKERS, "command": " ".join(sys.argv), "crest_source": source,
        "sizes": [args.trials] + ([args.large_trials] if args.large_trials else []),
        "repeats": {str(args.trials): args.repeats, str(args.large_trials): args.large_repeats,
                    **({"tune-default": args.default_repeats} if args.default_repeats is not None else {})},
        "systems": {s: LABELS[s] for s in systems}, "not_run": not_run,
        "summary": summary, "kill9": kills, "goals": goals(summary, args.trials, large),
        "runs": {s: {str(n): reps for n, reps in sizes.items()} for s, sizes in runs.items()},
        "table": table(summary, kills, args.trials, args.large_trials or None),
    }


def measure_size(runs: Runs, systems: list[str], n: int, repeats: int, root: Path, spec: TrialSpec,
                 save: Callable[[], None], limits: dict[str, int] | None = None) -> None:
    """Every system at ``n`` trials, ``repeats`` times interleaved (a system of ``limits``
    only in its first repeats); saves after each run."""
    for repeat, system in schedule(systems, repeats):
        if repeat >= (limits or {}).get(system, repeats):
            continue
        result = measure(system, n, root, spec)
        runs[system].setdefault(n, []).append({"repeat": repeat, **result})
        print(f"  {system:14s} {n:5d} trials, repeat {repeat}: {result['overhead_ms']:8.1f} ms/trial, "
              f"start-up {result['startup_s']:.2f} s, peak {result['peak_rss_mb']:.0f} MB "
              f"(driver peak {result['driver_peak_rss_mb']:.0f}, last {result['driver_last_rss_mb']:.0f})", flush=True)
        save()


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """The small size, the kill tests, then the large size; the JSON document, rewritten
    (atomically) after every run so that a run cut short keeps what it measured."""
    spec = TrialSpec.parse(args.trial)
    systems = _systems(args.systems, list(SYSTEMS))
    large_systems = _systems(args.large_systems, [s for s in systems if s not in SMALL_ONLY])
    runs: Runs = {s: {} for s in systems}
    kills: dict[str, Any] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="crest-overhead-") as tmp:
        root = Path(tmp)
        source = crest_source(None if args.no_snapshot else snapshot_crest(root))

        def save() -> None:
            write_json(args.out, document(args, runs, kills, started, source, done=False))

        limits = {} if args.default_repeats is None else {"tune-default": args.default_repeats}
        measure_size(runs, systems, args.trials, args.repeats, root, spec, save, limits)
        if not args.no_kill:
            kill_tests(args, systems, root, spec, kills, save)
        if args.large_trials:
            measure_size(runs, large_systems, args.large_trials, args.large_repeats, root, spec, save)
        doc = document(args, runs, kills, started, source, done=True)
    write_json(args.out, doc)
    return doc


def kill_tests(args: argparse.Namespace, systems: list[str], root: Path, spec: TrialSpec, out: dict[str, Any],
               save: Callable[[], None]) -> None:
    """One kill -9 per system into ``out`` (optuna-memory keeps nothing: every ended trial is lost)."""
    n = args.kill_trials or args.trials
    after = args.kill_after or max(1, n // 2)
    for system in _systems(args.kill_systems, systems):
        out[system] = kill_test(system, n, after, root, spec)
        print(f"  kill -9 {system:14s}: {out[system]}", flush=True)
        save()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        # run in the module `overhead`, not `__main__`, so that Ray pickles the trainable by reference
        sys.path.insert(0, str(BENCH_DIR))
        import overhead as module

        module.child_main(args.child, args.trials, args.workdir)
        return
    doc = run_all(args)
    print(doc["table"])
    print("goals:", json.dumps({k: v for k, v in doc["goals"].items() if k != "figures"}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
