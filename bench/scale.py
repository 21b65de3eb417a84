"""A sweep at real-model scale: a 22M-parameter transformer through ``crest launch``.

The model is built in code (:class:`ScaleTransformer`: token and position embeddings,
7 pre-norm transformer blocks of width 512 with a 2048-wide MLP, LayerNorm, a linear
head: 22.2M parameters, 88.7 MB of fp32), and so is its data: token sequences whose class
a fixed random bag-of-words teacher chose (seeded, no download). The sweep file prunes and
quantizes ``*.weight`` (the matrices of every block and the head; the LayerNorm weights
and the embedding tables are 1-D or embeddings and stay dense), retrains for
``--retrain-epochs``, and stores every artifact in a directory store
(``artifacts:``, ``artifact_inline_max: 0``). It runs as a user would run it: ``crest
launch`` in a subprocess, SQLite, local Ray.

Reported, per trial, from what each trial recorded (``crest best --json``'s ``details``):
its wall time split into train, prune, quantize, encode, decode and evaluate (the
worker's own phase timers), and ``record``, the driver's time to write its row and artifact (from the
driver's log); crest's own share, everything but the user's training and scoring
(prune (masks and the size bound) + quantize + encode + decode + record) over the trial's time; the worker's peak RSS; and
the database bytes and store bytes per trial (the SQLite file and the store directory
after the sweep, divided by the trials); and the driver process's peak RSS and its RSS at
the last look before it exited, and the peak RSS of the process that trains the baseline
(a local study's baseline trains in a process of its own, a child of the driver; both
sampled every 0.5 s). Goal: crest's share at most 10% of trial time.

Run: ``python bench/scale.py [--trials 6] [--workers 1] [--retrain-epochs 2]`` (about
10-20 minutes on a 2-core CPU). Writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VOCAB, SEQ, WIDTH, DEPTH, MLP, HEADS, CLASSES = 256, 16, 512, 7, 2048, 8, 8
CREST_PHASES = ("prune", "quantize", "encode", "decode", "record")
USER_PHASES = ("train", "evaluate")


class Block(nn.Module):
    """A pre-norm transformer block: attention (fused q/k/v projection) then an MLP."""

    def __init__(self, width: int, mlp: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, seq, width) on the block's device."""
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, w))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ScaleTransformer(nn.Module):
    """A 22.2M-parameter transformer classifier of (batch, SEQ) int64 tokens -> (batch, CLASSES) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(SEQ, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH, MLP, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def _data(n: int, seed: int) -> TensorDataset:
    """``n`` sequences labelled by a fixed random bag-of-words teacher (the same for every seed)."""
    teacher = torch.randn(VOCAB, CLASSES, generator=torch.Generator().manual_seed(1234))
    tokens = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(tokens, teacher[tokens].sum(dim=1).argmax(dim=1))


def workload() -> Any:
    """The workload ``crest launch`` imports (``scale:workload`` from this folder)."""
    from crest.tasks import Workload

    return Workload(
        name="scale-transformer", build_model=ScaleTransformer, train_set=_data(1024, 0), test_set=_data(256, 1),
        baseline_epochs=3, batch_size=32, lr=1e-3, description="a 22.2M-parameter transformer on synthetic tokens",
    )


def sweep_yaml(args: argparse.Namespace, store: Path, db: Path) -> str:
    """The sweep file of the run."""
    return json.dumps({
        "study": "scale", "workload": "scale:workload", "n_trials": args.trials, "workers": args.workers,
        "seed": 0, "storage": f"sqlite:///{db}", "artifacts": str(store), "artifact_inline_max": 0,
        "constraints": {"max_accuracy_drop": 0.05},
        "stages": [
            {"type": "prune", "layers": {"*.weight": {"quality": [0.2, 1.2]}}},
            {"type": "retrain", "epochs": args.retrain_epochs},
            {"type": "quantize", "layers": {"*.weight": {"bits": [4, 8]}}, "finetune_epochs": 0},
        ],
        "ray": {"cpus_per_worker": max(1, (os.cpu_count() or 2) // args.workers)},
    }, indent=1)


def _driver_memory(pid: int) -> tuple[int, int] | None:
    """The driver's (peak RSS, RSS) in bytes, from ``/proc`` (None once it is gone)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _baseline_pid(driver: int) -> int | None:
    """The driver's child that trains the baseline (``crest.orchestrator._baseline_child``), if alive."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if parent == driver and b"_baseline_child" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _launch(args: argparse.Namespace, work: Path) -> tuple[float, Path, dict[str, int]]:
    """Run ``crest launch`` from this folder; returns its wall seconds, its log file and
    the driver process's memory (peak RSS, and its RSS at the last look before it exited)
    and the baseline process's peak RSS, sampled every 0.5 s."""
    db, store, log = work / "scale.db", work / "store", work / "driver.log"
    sweep = work / "sweep.yaml"
    sweep.write_text(sweep_yaml(args, store, db))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crest", "--log-level", "debug", "--log-file", str(log), "launch", str(sweep), "-q"],
        cwd=HERE,
    )
    memory: dict[str, int] = {"baseline_process_peak_rss_bytes": 0}
    while proc.poll() is None:
        seen = _driver_memory(proc.pid)
        if seen is not None:
            memory.update(driver_peak_rss_bytes=seen[0], driver_last_rss_bytes=seen[1])
        child = _baseline_pid(proc.pid)
        child_memory = _driver_memory(child) if child is not None else None
        if child_memory is not None:
            memory["baseline_process_peak_rss_bytes"] = max(memory["baseline_process_peak_rss_bytes"],
                                                            child_memory[0])
        if time.perf_counter() - t0 > args.timeout:
            proc.kill()
            raise TimeoutError(f"crest launch ran past {args.timeout:.0f} s")
        time.sleep(0.5)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return time.perf_counter() - t0, log, memory


def _trials(db: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "crest", "best", "scale", "--storage", f"sqlite:///{db}", "--json", "--max-drop", "1", "--top", "100000"],
        check=True, capture_output=True, text=True,
    )
    return list(json.loads(out.stdout))


RECORD_LINE = re.compile(r"trial (\d+) recorded in ([0-9.]+) s")


def record_seconds(log: Path) -> dict[int, float]:
    """Trial number -> the driver's seconds to record its row and artifact, from its log."""
    return {int(m[1]): float(m[2]) for m in RECORD_LINE.finditer(log.read_text(errors="replace"))}


def split(trial: dict[str, Any], record: float | None) -> dict[str, Any]:
    """One trial's time by phase (seconds) and crest's share of it."""
    details = trial.get("details") or {}
    phases = {k: float(v) for k, v in (details.get("timings") or {}).items()}
    if record is not None:
        phases["record"] = record
    total = float(trial.get("wall_seconds") or 0.0) + phases.get("record", 0.0)
    own = sum(phases.get(k, 0.0) for k in CREST_PHASES)
    return {
        "trial": trial["trial"], "seconds": total, "phases": phases, "crest_share": own / total if total else None,
        "other_seconds": total - sum(phases.values()), "peak_rss_bytes": details.get("peak_rss_bytes"),
        "device": trial.get("device"), "ratio": trial.get("ratio"), "accuracy": trial.get("accuracy"),
        "size_bytes": trial.get("size_bytes"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """crest's share over the trials (median, max, the goal) and the largest worker RSS."""
    shares = [r["crest_share"] for r in rows if r["crest_share"] is not None]
    return {
        "median_crest_share": statistics.median(shares) if shares else None,
        "max_crest_share": max(shares) if shares else None,
        "goal_crest_share_at_most_10pct": bool(shares) and max(shares) <= 0.10,
        "peak_rss_bytes_max": max((r["peak_rss_bytes"] or 0 for r in rows), default=None),
    }


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--retrain-epochs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args(argv)
    params = sum(p.numel() for p in ScaleTransformer().parameters())
    with tempfile.TemporaryDirectory(prefix="crest-scale-") as tmp:
        work = Path(tmp)
        wall, log, memory = _launch(args, work)
        trials = [t for t in _trials(work / "scale.db") if t.get("state", "COMPLETE") == "COMPLETE"]
        records = record_seconds(log)
        rows = [split(t, records.get(t["trial"])) for t in sorted(trials, key=lambda t: t["trial"])]
        db_bytes, store_bytes = (work / "scale.db").stat().st_size, _bytes_under(work / "store")
    result = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "model": {"name": "ScaleTransformer", "parameters": params, "dense_fp32_bytes": params * 4},
        "setup": {"trials": args.trials, "workers": args.workers, "retrain_epochs": args.retrain_epochs},
        "sweep_wall_seconds": wall, "trials": rows, **memory,
        "db_bytes_per_trial": db_bytes / max(1, len(rows)), "store_bytes_per_trial": store_bytes / max(1, len(rows)),
        **summarise(rows),
    }
    from crest._atomic import write_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, (json.dumps(result, indent=1) + "\n").encode(), force=True)
    for r in rows:
        print(f"trial {r['trial']}: {r['seconds']:.1f} s, crest share {r['crest_share']:.1%}, "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
    print(f"median crest share {result['median_crest_share']}, db {result['db_bytes_per_trial']:,.0f} B/trial, "
          f"store {result['store_bytes_per_trial']:,.0f} B/trial, driver peak RSS "
          f"{memory.get('driver_peak_rss_bytes', 0) / 2**20:,.0f} MB, last {memory.get('driver_last_rss_bytes', 0) / 2**20:,.0f} MB, "
          f"baseline process peak RSS {memory.get('baseline_process_peak_rss_bytes', 0) / 2**20:,.0f} MB")
    return result


if __name__ == "__main__":
    main()
