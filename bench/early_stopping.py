"""Early stopping: worker-seconds to the same best ratio, with and without, through the real driver.

For each search space (LeNet-300-100 and LeNet-5 as in ``examples/``, and the wide
LeNet-300-100 space of ``bench/compression.py --search-experiment``) and each seed, the
same sweep runs twice through crest's real driver (:class:`crest.orchestrator.SweepDriver`:
Optuna TPE, one Ray worker, a SQLite file): without early stopping, and with
``early_stopping: {}`` (every rule at its defaults). The two runs of a pair start from
the same dense baseline (trained once per workload), have the same seed and the same
``n_trials``; the pairs run one after the other, the two arms in alternating order, so
both see the same machine. With one worker the trials run in number order, so the
cumulative compute after trial k is well defined.

Compute is worker-seconds really spent: each trial's busy time on its worker (the time
inside the trial's calls: the whole trial without early stopping; the sum of its steps
with it, including the per-epoch scoring), as crest records it (``wall_seconds``). Idle
time between steps and the driver's own time are not in it; the wall time of every run is
reported beside it.

Reported per pair: the best feasible ratio each arm found in ``n_trials``; the compute each
needed to first reach the best ratio the arm without early stopping found (the saving is
their quotient). Two runs of TPE rarely end on the same best, so when the run with early
stopping has not reached that ratio in ``n_trials`` it is continued, as ``crest resume
--n-trials`` would, up to three times its trials; a run that still misses counts as no
saving. Also: each arm's best ratio at equal compute (fractions of the compute the arm
without early stopping spent); what was pruned and by which rule; whether every reported
size bound held. Aggregated: the median saving per space and overall, and the final bests
at equal trial counts.

With ``--rule-check N`` it first runs N random trials of each space in-process (real
trials, each epoch scored) and asks the stopping policy about each of them as a
candidate: a trial smaller than the feasible trials it is compared with, which is what
every trial that passes the size rule is. It counts how many trials that ended feasible
(possible new bests) and how many that ended infeasible each curve rule would have
stopped: the evidence behind the defaults (``percentile`` off, ``unreachable`` on).

Run: ``python bench/early_stopping.py [--seeds 0,1,2] [--spaces lenet300,lenet5,wide]``
(about 25 minutes on a 2-core CPU with the defaults). Writes
``bench/results/early_stopping.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import optuna
import torch

from crest.config import parse_sweep
from crest.orchestrator import DriverOptions, SweepDriver
from crest.storage import Store
from crest.tasks import dense_fp32_bytes, get_workload, train_baseline

RESULTS = Path(__file__).parent / "results"
GOAL_SAVING = 2.0  # the goal: at least 2x less compute to the same best ratio

# the searched stages (the sweep files' syntax), as in examples/*.yaml and bench/compression.py
SPACES: dict[str, dict[str, Any]] = {
    "lenet300": {
        "workload": "lenet300-mnist",
        "n_trials": 24,
        "stages": [
            {"type": "prune", "layers": {"fc1.weight": {"sparsity": [0.92, 0.99]},
                                         "fc2.weight": {"sparsity": [0.85, 0.97]},
                                         "fc3.weight": {"sparsity": [0.5, 0.9]}}},
            {"type": "retrain", "epochs": 3, "rounds": [1, 2]},
            {"type": "quantize", "layers": {"*.weight": {"bits": [2, 5]}}, "finetune_epochs": 1},
        ],
    },
    "lenet5": {
        "workload": "lenet5-mnist",
        "n_trials": 20,
        "stages": [
            {"type": "prune", "layers": {"conv1.weight": {"sparsity": [0.2, 0.7]},
                                         "conv2.weight": {"sparsity": [0.8, 0.95]},
                                         "fc1.weight": {"sparsity": [0.95, 0.995]},
                                         "fc2.weight": {"sparsity": [0.7, 0.93]}}},
            {"type": "retrain", "epochs": 2},
            {"type": "quantize", "layers": {"conv*.weight": {"bits": [3, 5]}, "fc*.weight": {"bits": [2, 5]}},
             "finetune_epochs": 1},
        ],
    },
    "wide": {
        "workload": "lenet300-mnist",
        "n_trials": 40,
        "stages": [
            {"type": "prune", "layers": {"fc1.weight": {"sparsity": [0.0, 0.99]},
                                         "fc2.weight": {"sparsity": [0.0, 0.99]},
                                         "fc3.weight": {"sparsity": [0.0, 0.99]}}},
            {"type": "retrain", "epochs": 3, "rounds": [1, 2]},
            {"type": "quantize", "layers": {"*.weight": {"bits": [1, 8]}}, "finetune_epochs": 1},
        ],
    },
}
BUDGETS = (0.25, 0.5, 0.75, 1.0)  # fractions of the compute the run without early stopping spent
MAX_DROP = 0.01


def _rule(reason: str | None) -> str:
    """Which early-stopping rule a PRUNED trial's reason names."""
    text = reason or ""
    for prefix, rule in (("size-dominated", "size"), ("dominated", "dominated")):
        if text.startswith(prefix):
            return rule
    if "percentile" in text:
        return "percentile"
    return "unreachable" if "best rate" in text else "other"


def _prepare(db: Path, name: str, space: dict[str, Any], seed: int, arm: str, baseline: tuple[bytes, float, int]) -> Any:
    """A study in a new SQLite file holding the shared baseline; returns its config."""
    sweep: dict[str, Any] = {"study": name, "workload": space["workload"], "n_trials": space["n_trials"],
                             "workers": 1, "seed": seed, "constraints": {"max_accuracy_drop": MAX_DROP},
                             "stages": space["stages"]}
    if arm == "on":
        sweep["early_stopping"] = {}
    config = parse_sweep(sweep, overrides={"storage": f"sqlite:///{db}"})
    store = Store(config.storage, create=True)  # type: ignore[arg-type]
    try:
        info = store.create_study(config, sweep_yaml=json.dumps(sweep))
        blob, accuracy, dense = baseline
        store.set_baseline(info.id, blob, accuracy=accuracy, dense_bytes=dense)
    finally:
        store.close()
    return config


def _history(url: str, name: str) -> list[dict[str, Any]]:
    """Every finished trial of a study, in number order, with what the analysis needs."""
    store = Store(url, create=False)
    try:
        info = store.require_study(name)
        records = store.trials(info.id)
        study = optuna.load_study(study_name=name, storage=store.optuna_storage())
        bounds = {t.number: t.user_attrs.get("size_bounds") for t in study.trials}
    finally:
        store.close()
    rows = []
    for t in records:
        rows.append({
            "trial": t.number, "state": t.state, "size_bytes": t.size_bytes,
            "ratio": None if t.ratio is None else round(t.ratio, 3),
            "accuracy": t.accuracy,
            "feasible": t.state == "COMPLETE" and (t.accuracy_drop or 0.0) <= MAX_DROP + 1e-12,
            "seconds": round(t.wall_seconds or 0.0, 4),
            "size_bounds": bounds.get(t.number),
            "rule": _rule(t.reason) if t.state == "PRUNED" else None,
            "reason": t.reason,
        })
    return rows


def run_arm(workdir: Path, space_name: str, seed: int, arm: str, baseline: tuple[bytes, float, int]) -> dict[str, Any]:
    """One sweep of ``n_trials`` through the real driver; its trials and times."""
    space = SPACES[space_name]
    name = f"{space_name}-s{seed}-{arm}"
    config = _prepare(workdir / f"{name}.db", name, space, seed, arm, baseline)
    wall = _drive(config)
    history = _history(config.storage, name)
    n = space["n_trials"]
    return {"arm": arm, "config": config, "name": name, "n_trials": n, "wall_seconds": round(wall, 2),
            "complete": sum(h["state"] == "COMPLETE" for h in history),
            "pruned": sum(h["state"] == "PRUNED" for h in history), "history": history, **_arm_stats(history)}


def _drive(config: Any) -> float:
    """Run (or continue) a study to its ``n_trials``; the wall seconds it took."""
    options = DriverOptions(lease_ttl=30, heartbeat=2.0, poll=0.2)
    start = time.perf_counter()
    SweepDriver(config, sweep_yaml="# bench\n", options=options).run()
    return time.perf_counter() - start


def extend(result: dict[str, Any], target: float, log: Any) -> None:
    """Continue a run that has not reached ``target`` (raising its ``n_trials``, as ``crest
    resume --n-trials`` does), in steps of half its trials, to at most three times them."""
    n = result["n_trials"]
    for total in (n + n // 2, 2 * n, 2 * n + n // 2, 3 * n):
        if compute_to(result["history"], target) is not None:
            return
        config = result["config"].replace(n_trials=total)
        result["extension_wall_seconds"] = round(result.get("extension_wall_seconds", 0.0) + _drive(config), 2)
        result["history"] = _history(config.storage, result["name"])
        result["extended_to"] = total
        log(f"  extended {result['name']} to {total} trials: best "
            f"{max((h['ratio'] for h in result['history'] if h['feasible']), default=None)}x")


def _arm_stats(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Best feasible ratio, worker-seconds, pruned trials by rule, and the size bounds' record."""
    feasible = [h["ratio"] for h in history if h["feasible"]]
    rules: dict[str, int] = {}
    for h in history:
        if h["state"] == "PRUNED":
            rules[h.get("rule") or "other"] = rules.get(h.get("rule") or "other", 0) + 1
    checked = [h for h in history if h["state"] == "COMPLETE" and h.get("size_bounds")]
    held = [h for h in checked if h["size_bounds"][0] <= h["size_bytes"] <= h["size_bounds"][1]]
    return {
        "best_ratio": max(feasible, default=None),
        "compute_seconds": round(sum(h["seconds"] for h in history), 3),
        "pruned_by_rule": rules,
        "size_bounds": {"checked": len(checked), "held": len(held),
                        "exact": sum(1 for h in checked if h["size_bounds"][0] == h["size_bounds"][1]),
                        "at_high": sum(1 for h in checked if h["size_bytes"] == h["size_bounds"][1]),
                        "mean_width": round(statistics.fmean([h["size_bounds"][1] - h["size_bounds"][0]
                                                              for h in checked]), 1) if checked else None},
    }


def compute_to(history: list[dict[str, Any]], target: float) -> float | None:
    """Worker-seconds spent up to and including the first feasible trial with ratio >= target."""
    spent = 0.0
    for h in history:
        spent += h["seconds"]
        if h["feasible"] and h["ratio"] is not None and h["ratio"] >= target - 1e-9:
            return spent
    return None


def best_within(history: list[dict[str, Any]], budget: float) -> float | None:
    """The best feasible ratio among the trials finished within ``budget`` worker-seconds."""
    spent, best = 0.0, None
    for h in history:
        spent += h["seconds"]
        if spent > budget + 1e-9:
            break
        if h["feasible"]:
            best = h["ratio"] if best is None else max(best, h["ratio"])
    return best


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """The pair's figures: compute to the target (the run with early stopping continued past
    ``n_trials`` when it needed to), best at equal compute, final bests at equal trial counts."""
    target = off["best_ratio"]
    n = off.get("n_trials", len(off["history"]))
    first_n = [h for h in on["history"] if h["trial"] < n]
    off_to = compute_to(off["history"], target) if target is not None else None
    on_to = compute_to(on["history"], target) if target is not None else None
    total = off["compute_seconds"]
    return {
        "target_ratio": target,
        "off_compute_to_target": None if off_to is None else round(off_to, 3),
        "on_compute_to_target": None if on_to is None else round(on_to, 3),
        "saving": None if not (off_to and on_to) else round(off_to / on_to, 3),
        "saving_to_95pct": _saving(off["history"], on["history"], 0.95 * target) if target is not None else None,
        "reached": on_to is not None,
        "reached_within_n_trials": target is not None and compute_to(first_n, target) is not None,
        "on_trials_run": len(on["history"]),
        "best_at_equal_compute": {
            f"{f:g}": {"budget_seconds": round(f * total, 3), "off": best_within(off["history"], f * total),
                       "on": best_within(on["history"], f * total)} for f in BUDGETS},
        "final_best": {"off": off["best_ratio"], "on": _arm_stats(first_n)["best_ratio"]},
        "total_compute": {"off": off["compute_seconds"], "on": _arm_stats(first_n)["compute_seconds"]},
        "wall_seconds": {"off": off["wall_seconds"], "on": on["wall_seconds"]},
    }


def _saving(off: list[dict[str, Any]], on: list[dict[str, Any]], target: float) -> float | None:
    """Off's compute to ``target`` over on's (None when either never reaches it)."""
    off_to, on_to = compute_to(off, target), compute_to(on, target)
    return round(off_to / on_to, 3) if off_to and on_to else None


def _equal_compute(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget: the median of on's best minus off's (a run with nothing feasible yet counts
    0x) and how many pairs had on at least as good."""
    out: dict[str, Any] = {}
    for f in BUDGETS:
        diffs = [(p["comparison"]["best_at_equal_compute"][f"{f:g}"]["on"] or 0.0)
                 - (p["comparison"]["best_at_equal_compute"][f"{f:g}"]["off"] or 0.0) for p in group]
        out[f"{f:g}"] = {"median_on_minus_off": round(statistics.median(diffs), 3),
                         "pairs_on_not_lower": sum(1 for d in diffs if d >= -1e-9)}
    return out


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over pairs; a pair whose arm with early stopping missed the target counts as no saving."""
    out: dict[str, Any] = {}
    groups: dict[str, list[dict[str, Any]]] = {"all": pairs}
    for p in pairs:
        groups.setdefault(p["space"], []).append(p)
    for key, group in groups.items():
        savings = [p["comparison"]["saving"] if p["comparison"]["reached"] else 0.0 for p in group]
        finals = [(p["comparison"]["final_best"]["on"] or 0.0) - (p["comparison"]["final_best"]["off"] or 0.0)
                  for p in group]
        off_c = sum(p["comparison"]["total_compute"]["off"] for p in group)
        on_c = sum(p["comparison"]["total_compute"]["on"] for p in group)
        out[key] = {
            "pairs": len(group),
            "reached_target": sum(1 for p in group if p["comparison"]["reached"]),
            "reached_target_within_n_trials": sum(1 for p in group if p["comparison"].get("reached_within_n_trials")),
            "savings": savings,
            "median_saving": statistics.median(savings) if savings else None,
            "median_saving_to_95pct": statistics.median([p["comparison"].get("saving_to_95pct") or 0.0
                                                         for p in group]),
            "best_at_equal_compute": _equal_compute(group),
            "median_total_compute_ratio_off_over_on": statistics.median(
                [p["comparison"]["total_compute"]["off"] / p["comparison"]["total_compute"]["on"] for p in group]),
            "pairs_with_saving_at_least_goal": sum(1 for s in savings if s >= GOAL_SAVING),
            "final_best_on_minus_off": [round(d, 3) for d in finals],
            "median_final_best_on_minus_off": round(statistics.median(finals), 3) if finals else None,
            "pairs_final_best_not_lower": sum(1 for d in finals if d >= -1e-9),
            "total_compute_ratio_off_over_on": round(off_c / on_c, 3) if on_c else None,
        }
    return out


def _random_trials(space_name: str, n: int, baseline: tuple[bytes, float, int], log: Any) -> list[dict[str, Any]]:
    """``n`` trials of a space with uniformly random parameters, every epoch scored."""
    import numpy as np

    from crest.tasks import ScoreReport, TrialRunner, resolve_plan, training_schedule

    space = SPACES[space_name]
    wl = get_workload(space["workload"])
    named = list(wl.build_model().named_parameters())
    cfg = parse_sweep({"study": "x", "workload": space["workload"], "n_trials": 1, "stages": space["stages"]})
    plan = resolve_plan(cfg.stages, [k for k, _ in named], shapes={k: tuple(p.shape) for k, p in named})
    runner = TrialRunner(wl, plan, baseline[0], baseline[1])
    rng = np.random.default_rng(12345)
    trials = []
    for i in range(n):
        params: dict[str, Any] = dict(plan.fixed_params())
        for spec in plan.searched():
            low, high = spec.low, spec.high
            params[spec.name] = (int(rng.integers(int(low), int(high) + 1)) if spec.kind == "int"  # type: ignore[arg-type]
                                 else float(rng.uniform(low, high)))  # type: ignore[arg-type]
        gen, curve = runner.steps(params, seed=i, sizes=True, scores=True), {}
        while True:
            try:
                report = next(gen)
            except StopIteration as done:
                out = done.value
                break
            if isinstance(report, ScoreReport):
                curve[report.step] = report.score
        trials.append({"size": out.size_bytes, "accuracy": out.accuracy, "feasible": out.accuracy_drop <= MAX_DROP,
                       "curve": curve, "keys": training_schedule(plan, params)})
    log(f"rule check {space_name}: {n} random trials, {sum(t['feasible'] for t in trials)} feasible")
    return trials


def rule_check(trials: list[dict[str, Any]], baseline_accuracy: float) -> dict[str, Any]:
    """Each curve rule's stops among ``trials``, each judged as a candidate smaller than the
    feasible trials it is compared with (percentile) or beside 12 other trials (unreachable)."""
    import numpy as np

    from crest.config import EarlyStopping
    from crest.orchestrator._stopping import StoppingPolicy

    rules = {f"percentile {p:g}": {"percentile": float(p), "unreachable": False} for p in (0, 10, 25)}
    rules["unreachable"] = {"percentile": None, "unreachable": True}
    out: dict[str, Any] = {}
    for name, cfg in rules.items():
        rng = np.random.default_rng(0)
        counts = {"feasible_stopped": 0, "feasible": 0, "infeasible_stopped": 0, "infeasible": 0}
        for x in trials:
            others = [t for t in trials if t is not x]
            if cfg["percentile"] is not None:
                refs = [t for t in others if t["feasible"] and t["size"] > x["size"]]
            else:
                refs = [others[j] for j in rng.choice(len(others), size=min(12, len(others)), replace=False)]
            policy = StoppingPolicy(EarlyStopping(**cfg), objectives=["size"], baseline_accuracy=baseline_accuracy,
                                    max_drop=MAX_DROP)
            for j, t in enumerate(refs):
                policy.add(j, size=t["size"], accuracy=t["accuracy"], feasible=t["feasible"], curve=t["curve"],
                           keys=t["keys"])
            stopped = any(policy.after_epoch(x["keys"], s, x["curve"][s], low=None) for s in sorted(x["curve"]))
            kind = "feasible" if x["feasible"] else "infeasible"
            counts[kind] += 1
            counts[f"{kind}_stopped"] += int(stopped)
        out[name] = counts
    return out


def _baselines(spaces: list[str], log: Any) -> dict[str, tuple[bytes, float, int]]:
    out: dict[str, tuple[bytes, float, int]] = {}
    for workload in sorted({SPACES[s]["workload"] for s in spaces}):
        t0 = time.perf_counter()
        wl = get_workload(workload)
        blob, accuracy = train_baseline(wl, seed=0)
        out[workload] = (blob, accuracy, dense_fp32_bytes(wl.build_model()))
        log(f"baseline {workload}: accuracy {accuracy:.4f} ({time.perf_counter() - t0:.1f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the pairs and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--spaces", default="lenet300,lenet5,wide")
    ap.add_argument("--trials", type=int, default=0, help="n_trials of every space (0: each space's own)")
    ap.add_argument("--rule-check", type=int, default=0, help="random trials per space for the curve-rule check")
    ap.add_argument("--out", default=str(RESULTS / "early_stopping.json"))
    ap.add_argument("--summarise", action="store_true", help="recompute the comparisons of the report at --out")
    args = ap.parse_args(argv)
    if args.summarise:
        report = json.loads(Path(args.out).read_text())
        for pair in report["pairs"]:
            pair["comparison"] = compare(pair["off"], pair["on"])
        report["summary"] = summarise(report["pairs"])
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["summary"]["all"], indent=1))
        return 0
    if args.trials:
        for space in SPACES.values():
            space["n_trials"] = args.trials
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    spaces = [s for s in args.spaces.split(",") if s]

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False, configure_logging=False)
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "optuna": optuna.__version__, "ray": ray.__version__},
        "setup": {"spaces": {k: SPACES[k] for k in spaces}, "seeds": seeds, "workers": 1, "max_accuracy_drop": MAX_DROP,
                  "early_stopping": parse_sweep({"study": "x", "workload": "tiny-digits", "n_trials": 1,
                                                 "stages": SPACES["lenet300"]["stages"],
                                                 "early_stopping": {}}).early_stopping.model_dump(),  # type: ignore[union-attr]
                  "budgets": list(BUDGETS), "goal_saving": GOAL_SAVING},
        "pairs": [],
    }
    try:
        baselines = _baselines(spaces, log)
        report["baselines"] = {k: v[1] for k, v in baselines.items()}
        if args.rule_check:
            report["rule_check"] = {}
            for space in spaces:
                base = baselines[SPACES[space]["workload"]]
                trials = _random_trials(space, args.rule_check, base, log)
                report["rule_check"][space] = rule_check(trials, base[1])
                log(f"  {report['rule_check'][space]}")
        with tempfile.TemporaryDirectory(prefix="crest-es-") as tmp:
            for i, (seed, space) in enumerate([(s, sp) for s in seeds for sp in spaces]):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                arms = {}
                for arm in order:
                    arms[arm] = run_arm(Path(tmp), space, seed, arm, baselines[SPACES[space]["workload"]])
                    a = arms[arm]
                    log(f"{space} seed {seed} {arm:3s}: best {a['best_ratio']}x, {a['complete']} complete, "
                        f"{a['pruned']} pruned {a['pruned_by_rule']}, {a['compute_seconds']:.1f} worker-s, "
                        f"{a['wall_seconds']:.1f} s wall")
                if arms["off"]["best_ratio"] is not None:
                    extend(arms["on"], arms["off"]["best_ratio"], log)
                comparison = compare(arms["off"], arms["on"])
                if "extended_to" in arms["on"]:
                    arms["on"]["extended"] = _arm_stats(arms["on"]["history"])
                for result in arms.values():
                    result.pop("config", None)
                log(f"  -> target {comparison['target_ratio']}x: off {comparison['off_compute_to_target']} s, "
                    f"on {comparison['on_compute_to_target']} s, saving {comparison['saving']}")
                report["pairs"].append({"space": space, "seed": seed, "order": list(order), "comparison": comparison,
                                        "off": arms["off"], "on": arms["on"]})
                report["summary"] = summarise(report["pairs"])
                report["seconds"] = round(time.perf_counter() - started, 1)
                Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        ray.shutdown()
    summary = report.get("summary", {}).get("all", {})
    log(f"overall: median saving {summary.get('median_saving')}, {summary.get('pairs_with_saving_at_least_goal')} "
        f"of {summary.get('pairs')} pairs at least {GOAL_SAVING}x; final best not lower in "
        f"{summary.get('pairs_final_best_not_lower')} pairs; {report.get('seconds')} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
