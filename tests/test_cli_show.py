"""``crest show`` and ``crest best``'s summary for wide models, on real sweeps (local Ray, SQLite)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crest.cli import app
from crest.config import parse_sweep
from crest.orchestrator import DriverOptions, SweepDriver
from crest.storage import Store

from .helpers import TINY_SWEEP
from .wide_workload import LINEARS

pytestmark = pytest.mark.slow  # each module fixture runs a sweep

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2, search_path=(str(ROOT),))
WIDE = [f"{m}.weight" for m in LINEARS]

DETAILS = {
    "timings": {"train": 1.25, "quantize": 0.5, "encode": 0.01},
    "latency": {"dense": {"batch_1": 0.0002}},
    "fit_warning": "fit never called ctx.after_step()",
    "peak_rss_bytes": 123456789,
}


@dataclass(frozen=True)
class Swept:
    url: str
    root: Path


def _sweep(root: Path, **changes: Any) -> Swept:
    url = f"sqlite:///{root / 'crest.db'}"
    config = parse_sweep({**TINY_SWEEP, **changes}, overrides={"storage": url})
    SweepDriver(config, sweep_yaml="# test\n", options=OPTIONS).run()
    return Swept(url, root)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Swept:
    """TINY_SWEEP's 4 trials, plus a PRUNED, a FAIL and a retried trial recorded as the driver records them."""
    swept = _sweep(tmp_path_factory.mktemp("tiny"), n_trials=4)
    store = Store(swept.url, create=False)
    try:
        info = store.require_study("tiny")
        store.record_trial(info.id, optuna_trial_id=10_000, number=100, state="PRUNED", params={"prune/fc1.weight/quality": 2.0},
                           attempt=1, size_bytes=900, ratio=10.7, reason="cannot beat trial 2 ([red]900[/red] bytes)",
                           wall_seconds=0.5, node="node-a", device="cpu", details=DETAILS)
        store.record_trial(info.id, optuna_trial_id=10_001, number=101, state="FAIL", params={}, attempt=1,
                           error="worker died: boom\nsecond line", node="node-b", device="cuda:0")
        store.record_trial(info.id, optuna_trial_id=10_002, number=102, state="FAIL", params={}, attempt=2,
                           retry_of=101, error="interrupted")
    finally:
        store.close()
    return swept


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Swept:
    """A wide user model (8 Linear, LayerNorm, Embedding) swept with ``*.weight`` and one exact 1-D name."""
    return _sweep(
        tmp_path_factory.mktemp("wide"), study="wide", workload="tests.wide_workload:make", n_trials=3,
        stages=[
            {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.5]}}},
            {"type": "quantize", "layers": {"norm.weight": {"bits": 6}, "*.weight": {"bits": [3, 5]}}},
        ],
    )


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_show_a_complete_trial_in_full(tiny: Swept) -> None:
    out = _cli("show", "tiny", "2", "--storage", tiny.url).output
    report = json.loads(_cli("show", "tiny", "2", "--storage", tiny.url, "--json").output)
    assert report["state"] == "COMPLETE" and report["study"] == "tiny" and report["trial"] == 2
    layers = {row["layer"]: row for row in report["layers"]}
    assert set(layers) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert layers["fc1.weight"]["shape"] == [32, 64] and layers["fc1.weight"]["parameters"] == 2048
    assert layers["fc1.weight"]["bits"] == report["params"]["quantize/fc1.weight/bits"]
    assert layers["fc1.weight"]["encoding"] == "sparse" and layers["fc1.weight"]["bytes"] > 0
    assert sum(row["bytes"] for row in layers.values()) < report["size_bytes"]  # plus the header
    assert report["device"] == "cpu" or report["device"] is None or report["device"].startswith("cuda")
    assert 0 < report["summary"]["sparsity"] < 1
    for words in ("trial 2 of 'tiny': COMPLETE", "fc1.weight", "32x64", "2,048", "sparse",
                  "quantize/fc1.weight/bits", f"{report['accuracy']:.4f}", f"{report['size_bytes']:,} bytes"):
        assert words in out, words


def test_show_pruned_and_failed_trials_with_their_details(tiny: Swept) -> None:
    pruned = _cli("show", "tiny", "100", "--storage", tiny.url).output
    for words in ("PRUNED", "at least 900 bytes", "[red]900[/red]", "device     cpu", "node node-a",
                  "timings.train", "1.25", "latency.dense.batch_1", "fit never called ctx.after_step()",
                  "peak_rss_bytes", "123,456,789", "prune/fc1.weight/quality"):
        assert words in pruned, words
    assert json.loads(_cli("show", "tiny", "100", "--json", "--storage", tiny.url).output)["details"] == DETAILS
    failed = _cli("show", "tiny", "101", "--storage", tiny.url).output
    assert "FAIL" in failed and "worker died: boom?second line" in failed and "cuda:0" in failed
    retry = _cli("show", "tiny", "102", "--storage", tiny.url).output
    assert "attempt    2 (retry of trial 101)" in retry


def test_show_unknown_study_or_trial_is_one_line_exit_2(tiny: Swept) -> None:
    for args, words in (
        (["show", "nope", "1"], "no study named 'nope'"),
        (["show", "tiny", "99"], "study 'tiny' has no finished trial 99 (its finished trials are 0..102)"),
    ):
        out = subprocess.run([sys.executable, "-m", "crest", *args, "--storage", tiny.url], capture_output=True,
                             text=True, timeout=120, cwd=tiny.root, check=False)
        assert out.returncode == 2 and out.stdout == "", (args, out.stderr)
        assert out.stderr.count("\n") == 1 and words in out.stderr, out.stderr


def test_a_wide_model_s_globs_leave_1d_and_embedding_weights_alone(wide: Swept) -> None:
    store = Store(wide.url, create=False, upgrade=False, read_only=True)
    try:
        trials = store.trials(store.require_study("wide").id, state="COMPLETE")
    finally:
        store.close()
    assert trials
    for t in trials:
        searched = {key.split("/")[1] for key in t.params if key.count("/") == 2}
        assert searched == {*WIDE, "norm.weight"}
        assert t.layers["norm.weight"]["bits"] == 6  # named exactly, so quantized
        for name in ("emb.weight", "norm.bias", "inp.bias", "head.bias"):
            assert t.layers[name]["bits"] is None and t.layers[name]["sparsity"] < 0.5, name


def test_best_summarises_a_wide_model_and_show_lists_every_layer(wide: Swept) -> None:
    out = _cli("best", "wide", "--max-drop", "1", "--storage", wide.url).output
    for words in ("sparsity", "mean bits", "most pruned", "least pruned"):
        assert words in out, words
    rows = json.loads(_cli("best", "wide", "--max-drop", "1", "--json", "--storage", wide.url).output)
    assert rows and set(rows[0]["layers"]) >= {*WIDE, "emb.weight", "norm.weight"}  # JSON keeps every layer
    csv_header = _cli("best", "wide", "--max-drop", "1", "--csv", "--storage", wide.url).output.splitlines()[0]
    assert all(f"sparsity:{name}" in csv_header for name in WIDE)
    first = rows[0]
    sparsities = {name: first["layers"][name]["sparsity"] for name in (*WIDE, "norm.weight")}
    most = max(sparsities, key=lambda n: sparsities[n])
    least = min(sparsities, key=lambda n: sparsities[n])
    line = next(row for row in out.splitlines() if row.startswith(f"│ {first['trial']} "))
    assert f"{most} {sparsities[most]:.2f}" in line and f"{least} {sparsities[least]:.2f}" in line
    sizes = {name: first["layers"][name]["shape"] for name in first["layers"]}
    total = sum(math.prod(s) for s in sizes.values())
    zeros = sum(v["sparsity"] * math.prod(v["shape"]) for v in first["layers"].values())
    assert f"{zeros / total:.3f}" in line
    shown = _cli("show", "wide", str(first["trial"]), "--storage", wide.url).output
    for name in (*WIDE, "emb.weight", "norm.weight", "norm.bias"):
        assert name in shown, name
    assert "4x16" in shown and "mean bits" in shown


def test_sensitivity_leaves_embedding_tables_out_unless_named(wide: Swept) -> None:
    """By default every weight of 2+ dimensions but the embedding table; named, it is measured."""
    config = parse_sweep({**TINY_SWEEP, "study": "wide", "workload": "tests.wide_workload:make", "n_trials": 3,
                          "stages": [{"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.5]}}},
                                     {"type": "quantize", "layers": {"norm.weight": {"bits": 6},
                                                                     "*.weight": {"bits": [3, 5]}}}]},
                         overrides={"storage": wide.url})
    driver = SweepDriver(config, sweep_yaml="# test\n", options=OPTIONS)
    table = driver.sensitivity([0.5])
    assert set(table) == set(WIDE), "the 8 Linear weights: no embedding, no 1-D weight"
    named = driver.sensitivity([0.5], layers=["emb.weight"])
    assert set(named) == {"emb.weight"} and len(named["emb.weight"]) == 1
