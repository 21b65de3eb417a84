"""Import a benchmark script of bench/ as a module (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def load_bench(name: str) -> Any:
    """The module ``bench/<name>.py``, registered as ``crest_bench_<name>``."""
    spec = importlib.util.spec_from_file_location(f"crest_bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
