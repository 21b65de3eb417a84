"""Helpers shared by test modules (test modules import from here, never from each other)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

TINY_SWEEP: dict[str, Any] = {
    "study": "tiny",
    "workload": "tiny-digits",
    "n_trials": 4,
    "workers": 2,
    "seed": 0,
    "constraints": {"max_accuracy_drop": 0.05},
    "stages": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.2]}}},
        {"type": "retrain", "epochs": 1},
        {"type": "quantize", "layers": {"*.weight": {"bits": [3, 5]}}},
    ],
}


def sqlite_revision(path: Path) -> str:
    """crest's schema revision in a SQLite file, read with the standard library alone."""
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT version_num FROM crest_alembic_version").fetchone()[0])
