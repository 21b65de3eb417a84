"""Devices in a sweep: GPU-aware placement, each trial's device and details, latency as an objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crest.cli import app
from crest.config import parse_sweep
from crest.orchestrator import DriverOptions, SweepDriver
from crest.orchestrator._pool import plan_placement, worker_slots
from crest.storage import Store
from crest.tasks._device import count_workers

from ..helpers import TINY_SWEEP


def test_placement_never_gives_a_node_more_gpus_than_it_has() -> None:
    assert worker_slots({"CPU": 16, "GPU": 1}, 1, 0.25) == 4  # four trials share the GPU
    assert worker_slots({"CPU": 16, "GPU": 3}, 1, 0.1) == 16  # 30 GPU slots, 16 CPUs
    assert worker_slots({"CPU": 64, "GPU": 3}, 1, 0.1) == 30  # 3 / 0.1 is 30, not 29
    assert worker_slots({"CPU": 16, "GPU": 2}, 1, 1) == 2
    assert worker_slots({"CPU": 16}, 1, 0.5) == 0  # a node without GPUs takes no GPU workers
    assert worker_slots({"CPU": 2, "GPU": 8}, 1, 0) == 2  # CPU workers: GPUs do not count
    capacity = {"a": worker_slots({"CPU": 16, "GPU": 1}, 1, 0.5), "b": worker_slots({"CPU": 16, "GPU": 2}, 1, 0.5)}
    targets = plan_placement(capacity, {}, 10)
    assert targets.count("a") == 2 and targets.count("b") == 4


def test_count_workers_reads_the_recorded_trials() -> None:
    rows = [("cuda:0", {"worker": "h:1"}), ("cuda:0", {"worker": "h:2"}), ("cuda:0", {"worker": "h:1"}),
            ("cpu", {"worker": "h:3"}), ("cpu", None), (None, {"worker": "h:4"}), ("cpu", {"worker": 7})]
    assert count_workers(rows) == {"gpu": 2, "cpu": 1}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_cpu_sweep_records_device_details_and_minimises_latency(sqlite_url: str) -> None:
    cfg = parse_sweep({**TINY_SWEEP, "n_trials": 3, "device": "cpu", "objectives": ["size", "latency"],
                       "latency": {"warmup": 1, "repeats": 2}}, overrides={"storage": sqlite_url})
    summary = SweepDriver(cfg, sweep_yaml="# test\n", options=DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2)).run()
    assert summary.complete == 3
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        trials = store.trials(info.id, state="COMPLETE")
        import optuna

        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        told = {t.number: t.values for t in study.trials}
    finally:
        store.close()
    for t in trials:
        assert t.device == "cpu" and t.details is not None
        assert set(t.details["timings"]) >= {"train", "quantize", "encode", "decode", "evaluate"}
        latency = t.details["latency"]
        assert latency["compressed_b1_ms"] > 0 and latency["dense_batch_ms"] > 0 and latency["repeats"] == 2
        assert told[t.number] == [float(t.size_bytes), pytest.approx(latency["compressed_b1_ms"])]
        assert ":" in t.details["worker"] and t.details["peak_rss_bytes"] > 0
    result = CliRunner().invoke(app, ["status", "tiny", "--storage", sqlite_url, "--json"])
    assert result.exit_code == 0, result.output
    workers = json.loads(result.output)["workers"]
    assert workers["gpu"] == 0 and 1 <= workers["cpu"] <= 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_complete_trial_recorded_but_not_told_is_told_its_latency_and_lists_its_artifact(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The driver died between crest's row and Optuna's end of the trial (a crest that wrote
    them in two commits): the next driver tells Optuna the row's objectives, its latency
    too, and lists its stored artifact in Optuna's artifact metadata."""
    import optuna

    sweep = {**TINY_SWEEP, "device": "cpu", "objectives": ["size", "latency"], "latency": {"warmup": 1, "repeats": 2},
             "artifacts": str(tmp_path / "store"), "artifact_inline_max": 0}
    options = DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2)
    SweepDriver(parse_sweep({**sweep, "n_trials": 1}, overrides={"storage": sqlite_url}), sweep_yaml="",
                options=options).run()
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        (done,) = store.trials(info.id, state="COMPLETE")
        blob = store.get_artifact(done.artifact_sha256)  # type: ignore[arg-type]
        details = {**(done.details or {}), "latency": {**done.details["latency"], "compressed_b1_ms": 1.25}}  # type: ignore[index]
        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        orphan = study.ask()
        store.record_trial(info.id, optuna_trial_id=orphan._trial_id, number=orphan.number, state="COMPLETE",
                           params={}, attempt=1, blob=blob, accuracy=done.accuracy, accuracy_drop=done.accuracy_drop,
                           ratio=done.ratio, layers=done.layers, wall_seconds=0.1, device="cpu", details=details)
    finally:
        store.close()
    summary = SweepDriver(parse_sweep({**sweep, "n_trials": 2}, overrides={"storage": sqlite_url}), sweep_yaml="",
                          options=options).run()
    assert summary.complete == 2 and summary.ran_this_run == 0
    store = Store(sqlite_url, create=False)
    try:
        told = optuna.load_study(study_name="tiny", storage=store.optuna_storage()).trials[orphan.number]
    finally:
        store.close()
    assert told.state.name == "COMPLETE" and told.values == [float(len(blob)), 1.25]
    assert f"artifacts:{done.artifact_sha256}" in told.system_attrs
