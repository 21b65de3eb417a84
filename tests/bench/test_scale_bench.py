"""bench/scale.py: the model is at real scale, its globs leave 1-D and embedding weights
alone, and a trial's time is split into crest's phases and the user's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from crest.config import parse_sweep
from crest.tasks import embedding_tables, resolve_plan
from tests.bench._load import load_bench


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_bench("scale")


def test_the_model_has_over_20_million_parameters_and_learns_from_shipped_code(bench: Any) -> None:
    model = bench.ScaleTransformer()
    assert sum(p.numel() for p in model.parameters()) >= 20_000_000
    w = bench.workload()
    x, y = w.train_set[:4]
    assert model(x).shape == (4, bench.CLASSES) and y.dtype == torch.int64


def test_the_sweep_prunes_matrices_only(bench: Any, tmp_path: Any) -> None:
    import argparse

    args = argparse.Namespace(trials=6, workers=1, retrain_epochs=1)
    config = parse_sweep(json.loads(bench.sweep_yaml(args, tmp_path / "store", tmp_path / "x.db")), source="scale")
    model = bench.ScaleTransformer()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plan = resolve_plan(config.stages, list(shapes), shapes=shapes, embeddings=embedding_tables(model))
    pruned = {name for stage in plan.stages if stage.type in ("prune", "quantize") for name in stage.layers}
    assert pruned and all(len(shapes[n]) == 2 for n in pruned)
    assert not pruned & {"tokens.weight", "positions.weight", "norm.weight", "blocks.0.norm1.weight"}


def test_a_trial_is_split_into_crest_s_phases_and_the_user_s(bench: Any) -> None:
    trial = {"trial": 3, "wall_seconds": 9.0, "details": {"timings": {
        "train": 6.0, "evaluate": 1.0, "prune": 0.25, "quantize": 0.5, "encode": 0.5, "decode": 0.25}}}
    row = bench.split(trial, record=1.0)
    assert row["seconds"] == 10.0
    assert row["crest_share"] == pytest.approx(2.5 / 10.0)
    assert row["other_seconds"] == pytest.approx(0.5)
    summary = bench.summarise([row, {**row, "crest_share": 0.05, "peak_rss_bytes": 7}])
    assert summary["max_crest_share"] == 0.25 and summary["goal_crest_share_at_most_10pct"] is False
    assert summary["peak_rss_bytes_max"] == 7


def test_record_seconds_are_read_from_the_driver_log(bench: Any, tmp_path: Any) -> None:
    log = tmp_path / "driver.log"
    log.write_text("crest: DEBUG: trial 0 recorded in 0.6299 s\nother\ncrest: DEBUG: trial 12 recorded in 0.0824 s\n")
    assert bench.record_seconds(log) == {0: 0.6299, 12: 0.0824}


def test_the_baseline_process_is_found_among_the_drivers_children(bench: Any) -> None:
    """The memory sampler finds the driver's child that trains the baseline, and nothing once it is gone."""
    import os

    from crest.orchestrator._baseline import LocalBaseline

    local = LocalBaseline("tiny-digits", 0, threads=1)
    try:
        assert bench._baseline_pid(os.getpid()) == local._proc.pid
    finally:
        local.stop()
    assert bench._baseline_pid(os.getpid()) is None
