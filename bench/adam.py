"""crest's Adam, fused (its default) against one tensor at a time (torch's CPU default).

Each sample is a fresh process with 1 torch thread (a worker's) that, on the quick
start's workload (``examples/lenet300-mnist.yaml``: LeNet-300-100, 5,000 MNIST images),
trains and encodes the dense baseline (``train_baseline``, on the critical path of a
sweep's start), then runs one whole trial of the quick start's plan (prune in 2 rounds
with retraining, quantize with fine-tuning, encode, evaluate) with every searched
parameter at the middle of its range. It reports CPU-seconds of each and the baseline's
accuracy and SHA-256. The form is chosen by passing ``fused=False`` to every Adam crest's
loops build (the bench's harness wraps the class; crest has no such switch). The forms
are interleaved, ``--repeats`` times each.

Run: ``python bench/adam.py [--repeats 5] [--out bench/results/adam.json]`` (about 15 s per
sample). Prints the medians and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from overhead import crest_source, machine, schedule, write_json

SWEEP = REPO / "examples" / "lenet300-mnist.yaml"
FORMS = ("fused", "one")

SAMPLE = """
import hashlib, json, sys, time
import torch
torch.set_num_threads(1)
import crest.tasks._adam as adam
if sys.argv[1] == "one":
    init = adam.Adam.__init__
    def one_at_a_time(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "fused": False})
    adam.Adam.__init__ = one_at_a_time
calls = {"fused": 0, "one": 0, "foreach": 0}  # optimizer steps per form: what was measured
def counted(form, method):
    def step(self, *args):
        calls[form] += 1
        return method(self, *args)
    return step
for form, name in (("fused", "_step_fused"), ("one", "_step_one"), ("foreach", "_step_foreach")):
    setattr(adam.Adam, name, counted(form, getattr(adam.Adam, name)))
from crest.config import load_sweep
from crest.tasks import TrialRunner, get_workload, resolve_plan
from crest.tasks._pipeline import train_baseline
config, _ = load_sweep(sys.argv[2])
wl = get_workload(config.workload)
named = list(wl.build_model().named_parameters())
plan = resolve_plan(config.stages, [n for n, _ in named], shapes={n: tuple(p.shape) for n, p in named})
params = plan.fixed_params()
for p in plan.searched():
    mid = p.choices[len(p.choices) // 2] if p.choices else (p.low + p.high) / 2
    params[p.name] = int(round(mid)) if p.kind == "int" else mid
cpu = time.process_time()
blob, acc = train_baseline(wl, seed=config.seed, device="cpu")
baseline_cpu = time.process_time() - cpu
runner = TrialRunner(wl, plan, blob, acc, device="cpu")
cpu = time.process_time()
out = runner.run(params, seed=1)
trial_cpu = time.process_time() - cpu
print(json.dumps({"baseline_cpu_s": baseline_cpu, "baseline_accuracy": acc,
                  "baseline_sha256": hashlib.sha256(blob).hexdigest(), "trial_cpu_s": trial_cpu,
                  "trial_accuracy": out.accuracy, "trial_bytes": out.size_bytes, "trial_ratio": out.ratio, "params": params,
                  "adam_calls": calls}))
"""


def sample(form: str) -> dict[str, object]:
    """One fresh process's measurement with ``form``."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SAMPLE, form, str(SWEEP)], capture_output=True, text=True,
                          check=False, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"bench/adam.py: the {form} sample failed:\n{done.stderr[-3000:]}")
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    calls = out["adam_calls"]
    if not isinstance(calls, dict) or not calls[form] or sum(calls.values()) != calls[form]:
        raise SystemExit(f"bench/adam.py: the {form} sample stepped other forms too: {calls}")
    out["wall_s"] = time.monotonic() - began
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "adam.json")
    args = parser.parse_args()
    began = time.monotonic()
    runs: list[dict[str, object]] = []
    for r, form in schedule(list(FORMS), args.repeats):
        run = {"form": form, "repeat": r, **sample(form)}
        runs.append(run)
        print(f"{form:6} repeat {r}: baseline {run['baseline_cpu_s']:.2f} CPU-s (accuracy {run['baseline_accuracy']:.4f}), "
              f"trial {run['trial_cpu_s']:.2f} CPU-s (accuracy {run['trial_accuracy']:.4f}, {run['trial_bytes']} bytes)",
              flush=True)
    medians = {}
    for form in FORMS:
        mine = [r for r in runs if r["form"] == form]
        medians[form] = {key: statistics.median(float(r[key]) for r in mine)  # type: ignore[arg-type]
                         for key in ("baseline_cpu_s", "trial_cpu_s")}
        medians[form]["baseline_shas"] = sorted({str(r["baseline_sha256"]) for r in mine})
    ratios = {key: medians["fused"][key] / medians["one"][key] for key in ("baseline_cpu_s", "trial_cpu_s")}
    print("| form | baseline CPU-s | one trial CPU-s |\n|---|---|---|")
    for form in FORMS:
        print(f"| {form} | {medians[form]['baseline_cpu_s']:.2f} | {medians[form]['trial_cpu_s']:.2f} |")
    print(f"fused / one: baseline {ratios['baseline_cpu_s']:.2f}x, trial {ratios['trial_cpu_s']:.2f}x")
    write_json(args.out, {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                          "crest": crest_source(None), "sweep": str(SWEEP.relative_to(REPO)), "runs": runs,
                          "medians": medians, "fused_over_one": ratios, "seconds": time.monotonic() - began})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
