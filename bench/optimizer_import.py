"""What the first optimizer of a process costs: ``torch.optim.Adam`` against crest's Adam.

The first ``torch.optim`` optimizer a process builds imports ``torch._dynamo``; crest's
training loops use :class:`crest.tasks._adam.Adam` instead (the same arithmetic, tested
bit for bit). Each sample is a fresh process that imports torch and crest's Adam, builds
LeNet-300-100's layers, then times (wall and process CPU) building the optimizer and
taking one step. The two are interleaved, ``--repeats`` times each.

Run: ``python bench/optimizer_import.py [--repeats 7] [--out bench/results/optimizer_import.json]``
(a few seconds per sample). Prints the medians and writes the JSON.
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

from overhead import crest_source, machine, write_json

SAMPLE = """
import json, sys, time
import torch
from torch import nn
from crest.tasks._adam import Adam
model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
model(torch.randn(8, 784)).sum().backward()
wall, cpu = time.perf_counter(), time.process_time()
opt = torch.optim.Adam(model.parameters(), lr=1e-3) if sys.argv[1] == "torch" else Adam(model.parameters(), lr=1e-3)
opt.step()
print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                  "dynamo_imported": "torch._dynamo" in sys.modules}))
"""


def sample(kind: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", SAMPLE, kind], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "optimizer_import.json")
    args = parser.parse_args()
    started = time.time()
    runs: dict[str, list[dict[str, float]]] = {"torch": [], "crest": []}
    for r in range(args.repeats):
        for kind in (("torch", "crest") if r % 2 == 0 else ("crest", "torch")):
            runs[kind].append(sample(kind))
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")} for k, v in runs.items()}
    doc = {"what": "first optimizer of a process: build + one step (s)", "date":
           datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(time.time() - started, 1),
           "machine": machine(), "crest_source": crest_source(None), "repeats": args.repeats,
           "summary": summary, "ratio_crest_to_torch_wall": summary["crest"]["wall_s"] / summary["torch"]["wall_s"],
           "runs": runs}
    write_json(args.out, doc)
    for kind, s in summary.items():
        print(f"{kind:6s} first optimizer + step: {s['wall_s'] * 1000:8.1f} ms wall, {s['cpu_s'] * 1000:8.1f} ms CPU")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
