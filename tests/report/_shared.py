"""What the report tests share: the sweep they run once, and crest as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..helpers import TINY_SWEEP

# two objectives, so that optuna-dashboard draws its Pareto front; the wide quality range
# and one retraining epoch leave some trials over the 5-point limit and some within it
REPORT_SWEEP = {
    **TINY_SWEEP,
    "study": "tiny-report",
    "n_trials": 8,
    "objectives": ["size", "accuracy"],
    "constraints": {"max_accuracy_drop": 0.05},
    "stages": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 2.5]}}},
        {"type": "retrain", "epochs": 1},
        {"type": "quantize", "layers": {"*.weight": {"bits": [2, 5]}}},
    ],
}


def run_crest(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``crest ARGS`` in a real process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "crest", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ), check=False,
    )


@dataclass(frozen=True)
class Swept:
    """The sweep's files: ``url`` has a sensitivity table, ``bare_url`` not (both have the study note)."""

    dir: Path
    url: str
    bare_url: str
    study: str = "tiny-report"
