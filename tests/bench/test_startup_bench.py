"""bench/startup.py and bench/optimizer_import.py: what they read, and one real run each."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench._load import load_bench


@pytest.fixture(scope="module")
def startup() -> Any:
    return load_bench("startup")


def test_the_parts_are_read_from_the_driver_s_log(startup: Any, tmp_path: Path) -> None:
    log = tmp_path / "driver.log"
    log.write_text(
        "2026-11-29 15:00:01,500 INFO crest.orchestrator._cluster: started a local Ray: 2.0 CPUs, 0 GPUs\n"
        "2026-11-29 15:00:01,510 INFO crest.orchestrator._driver: start-up: Ray took 1.25 s "
        "(the driver waited 0.40 s for it)\n"
        "a line without a time stamp\n"
        "2026-11-29 15:00:03,000 INFO crest.orchestrator._driver: baseline of study 'q': accuracy 0.9420, 10 bytes\n"
        "2026-11-29 15:00:03,250 INFO crest.orchestrator._sweep_loop: start-up: the first trial was sent 3.1 s after\n"
    )
    marks = startup.log_times(log)
    assert marks["baseline_s"] - marks["ray_up_s"] == pytest.approx(1.5)
    assert marks["first_sent_s"] - marks["baseline_s"] == pytest.approx(0.25)
    assert (marks["ray_start_s"], marks["ray_waited_s"]) == (1.25, 0.40)


def test_the_cpu_clock_counts_busy_time(startup: Any) -> None:
    with startup.CpuClock(period=0.01) as clock:
        start = time.time()
        while time.time() - start < 0.3:  # busy on one core
            pass
        end = time.time()
        time.sleep(0.05)
    busy = clock.between(start, end)
    assert 0.15 < busy < 0.5 * (os.cpu_count() or 1)  # this process's 0.3 s at least; no more than every core's


def test_torch_s_first_optimizer_imports_the_compiler_and_crest_s_does_not() -> None:
    bench = load_bench("optimizer_import")
    torch_sample, crest_sample = bench.sample("torch"), bench.sample("crest")
    assert torch_sample["dynamo_imported"] is True and crest_sample["dynamo_imported"] is False
    assert torch_sample["cpu_s"] > 0 and crest_sample["cpu_s"] >= 0


@pytest.mark.slow
def test_one_quick_start_launch_reports_every_part(startup: Any, tmp_path: Path) -> None:
    out = startup.launch("lean", tmp_path)
    for key in ("startup_s", "ray_up_s", "baseline_s", "first_sent_s", "ray_start_s", "ray_waited_s", "cpu_busy_s"):
        assert out[key] is not None and out[key] >= 0, (key, out)
    assert out["ray_up_s"] < out["first_sent_s"] and out["baseline_s"] < out["first_sent_s"]
    assert out["cpu_floor_s"] == pytest.approx(out["cpu_busy_s"] / (os.cpu_count() or 1))


@pytest.mark.slow
def test_the_two_chains_alone_report_when_each_ended(startup: Any) -> None:
    out = startup.chains("chain_both")
    assert 0 < out["ray_up_s"] < out["worker_ready_s"]
    assert out["baseline_done_s"] > 0
    assert out["startup_floor_s"] == max(out["worker_ready_s"], out["baseline_done_s"])
    summary = startup.summary({"chain_both": [{"repeat": 0, **out}]})
    assert summary["chain_both"]["startup_floor_s"] == out["startup_floor_s"]
    assert "| both |" in startup.table(summary)
