"""What a bounded sampler view costs in search quality, and what it saves per ``ask``.

crest's driver proposes each trial from an in-memory view of the study
(:class:`crest.orchestrator._sampler_view.SamplerView`). With ``sampler_window`` the view
holds the best trials by each objective and the most recent ones, at most about the
window, instead of every finished trial. This benchmark runs crest's TPE (the sampler
settings of :func:`crest.orchestrator._space.sampler_for`) through that same view class,
with the window and without it, on synthetic compression-like problems where a trial costs
nothing, and records:

- the best feasible objective reached after each checkpoint (median over seeds), with and
  without the window, and their ratio (window / full; 1.0 is equal, > 1 is worse for a
  minimised objective);
- the median milliseconds per ``ask`` + ``tell`` in the last 100 trials before each
  checkpoint.

The problems (``--problems``): ``layers8`` is 8 layers, each a prune quality (float) and a
code width (int 2-8); the objective is a size model (kept weights x bits), the constraint
an accuracy-drop model that grows with each layer's pruning and falls with its bits, plus
seeded noise; ``rosen6`` is a 6-D Rosenbrock with a disc constraint. The seeds of a problem
run with and without the window interleaved.

Run: ``python bench/sampler_window.py [--trials 2000] [--seeds 4] [--window 500]``; writes
``bench/results/sampler_window.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crest.orchestrator._sampler_view import SamplerView
from crest.orchestrator._space import sampler_for

RESULTS = REPO / "bench" / "results"

Problem = Callable[[optuna.trial.Trial, np.random.Generator], tuple[float, float]]


def layers8(trial: optuna.trial.Trial, rng: np.random.Generator) -> tuple[float, float]:
    """(size, constraint): a size model of 8 pruned, quantized layers and a drop model."""
    sizes = [4096, 65536, 16384, 1024, 32768, 8192, 2048, 512]
    sensitivity = [0.02, 0.004, 0.01, 0.05, 0.006, 0.012, 0.03, 0.08]
    size = drop = 0.0
    for i, (n, s) in enumerate(zip(sizes, sensitivity, strict=True)):
        q = trial.suggest_float(f"layer{i}.quality", 0.0, 2.0)
        bits = trial.suggest_int(f"layer{i}.bits", 2, 8)
        kept = math.exp(-1.5 * q)
        size += n * kept * bits / 8 + 4 * 2**bits
        drop += s * (q**2) * 0.5 + s * 2.0 ** (3 - bits)
    drop += float(rng.normal(0, 0.002))
    return size, drop - 0.02


def rosen6(trial: optuna.trial.Trial, rng: np.random.Generator) -> tuple[float, float]:
    """(value, constraint): 6-D Rosenbrock in [-2, 2]^6, feasible inside a disc of radius 2."""
    x = [trial.suggest_float(f"x{i}", -2.0, 2.0) for i in range(6)]
    value = sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(5))
    return value + float(rng.normal(0, 0.01)), sum(v * v for v in x) - 4.0


PROBLEMS: dict[str, Problem] = {"layers8": layers8, "rosen6": rosen6}


def run(problem: Problem, *, seed: int, trials: int, window: int | None,
        checkpoints: list[int]) -> dict[str, Any]:
    """One study of ``trials`` trials proposed through a :class:`SamplerView`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        db = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                 sampler=sampler_for("tpe", seed=seed, n_trials=trials), directions=["minimize"])
    view = SamplerView(db, window=window)
    view.load()
    rng = np.random.default_rng(seed + 10_000)
    best = math.inf
    out: dict[str, Any] = {"best": {}, "ms_per_trial": {}, "view_trials": {}}
    times: list[float] = []
    for i in range(trials):
        t0 = time.perf_counter()
        trial = view.memory.ask()
        value, constraint = problem(trial, rng)
        key = -(i + 1)  # no database here: a key of the view's own
        view._ids[key] = (trial._trial_id, trial.number)
        view.finished(key, optuna.trial.TrialState.COMPLETE, [value], [constraint])
        times.append(time.perf_counter() - t0)
        if constraint <= 0:
            best = min(best, value)
        if i + 1 in checkpoints:
            out["best"][str(i + 1)] = best
            out["ms_per_trial"][str(i + 1)] = statistics.median(times[-100:]) * 1000
            out["view_trials"][str(i + 1)] = len(view.memory.get_trials(deepcopy=False))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--out", type=Path, default=RESULTS / "sampler_window.json")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = sorted({c for c in (200, 500, 1000, 2000, 5000, args.trials) if c <= args.trials})
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.time()
    for name in args.problems.split(","):
        runs[name] = {"full": [], "window": []}
        for seed in range(args.seeds):
            for variant, window in (("full", None), ("window", args.window))[:: 1 if seed % 2 == 0 else -1]:
                r = run(PROBLEMS[name], seed=seed, trials=args.trials, window=window, checkpoints=checkpoints)
                runs[name][variant].append(r)
                print(f"{name} seed {seed} {variant:6s}: best {r['best'][str(args.trials)]:.4g}, "
                      f"{r['ms_per_trial'][str(args.trials)]:.2f} ms/trial at {args.trials}", flush=True)
    summary: dict[str, Any] = {}
    for name, variants in runs.items():
        rows = {}
        for c in map(str, checkpoints):
            full = statistics.median(r["best"][c] for r in variants["full"])
            win = statistics.median(r["best"][c] for r in variants["window"])
            rows[c] = {
                "best_full": full, "best_window": win, "best_ratio_window_over_full": win / full if full else None,
                "seeds_window_not_worse": sum(w["best"][c] <= f["best"][c] for w, f in
                                              zip(variants["window"], variants["full"], strict=True)),
                "ms_full": statistics.median(r["ms_per_trial"][c] for r in variants["full"]),
                "ms_window": statistics.median(r["ms_per_trial"][c] for r in variants["window"]),
            }
        summary[name] = rows
    doc = {
        "benchmark": "sampler_window", "trials": args.trials, "seeds": args.seeds, "window": args.window,
        "checkpoints": checkpoints, "summary": summary, "runs": runs, "seconds": time.time() - started,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "optuna": optuna.__version__,
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, args.out)
    for name, rows in summary.items():
        for c, row in rows.items():
            print(f"{name} @ {c}: best full {row['best_full']:.4g}, window {row['best_window']:.4g} "
                  f"(ratio {row['best_ratio_window_over_full']:.3f}, window not worse in "
                  f"{row['seeds_window_not_worse']}/{args.seeds}); ms/trial {row['ms_full']:.2f} vs {row['ms_window']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
