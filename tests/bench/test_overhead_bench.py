"""bench/overhead.py: its arithmetic, its trial function, and a whole run at a tiny size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.bench._load import load_bench


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_bench("overhead")


def test_trial_specs_parse_and_print(bench: Any) -> None:
    spec = bench.TrialSpec.parse("sleep:20,epochs:1")
    assert (spec.sleep_ms, spec.epochs) == (20.0, 1)
    assert str(spec) == "sleep:20,epochs:1"
    assert bench.TrialSpec.parse("tiny") == bench.TrialSpec()
    assert str(bench.TrialSpec()) == "tiny"
    with pytest.raises(ValueError, match="unknown part"):
        bench.TrialSpec.parse("nap:3")


def test_overhead_is_idle_worker_time_per_trial(bench: Any) -> None:
    # two workers, 1 s of wall from the first start to the last end, 1.6 s inside 4 trials
    trials = [{"start": 10.0 + i * 0.25, "end": 10.4 + i * 0.2, "seconds": 0.4} for i in range(4)]
    result = bench.overhead(trials, launched_at=8.0)
    assert result["startup_s"] == pytest.approx(2.0)
    assert result["wall_s"] == pytest.approx(1.0)
    assert result["overhead_ms"] == pytest.approx((2 * 1.0 - 1.6) / 4 * 1000)
    assert result["trial_ms"] == pytest.approx(400.0)


def test_schedule_interleaves_and_rotates(bench: Any) -> None:
    order = bench.schedule(["a", "b", "c"], 3)
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]


def test_goals_and_table(bench: Any) -> None:
    summary = {
        "crest": {"200": {"overhead_ms": 10.0, "startup_s": 3.0, "peak_rss_mb": 900.0},
                  "5000": {"overhead_ms": 14.0}},
        "tune-reuse": {"200": {"overhead_ms": 33.0, "startup_s": 6.0, "peak_rss_mb": 800.0}},
    }
    goals = bench.goals(summary, 200, 5000)
    assert goals["crest_overhead_at_most_third_of_tune_reuse"] is True
    assert goals["crest_large_at_most_1_5x_small"] is True
    assert goals["crest_startup_under_4s"] is True
    assert bench.goals({"crest": {"200": {"overhead_ms": 12.0}}}, 200, 5000)[
        "crest_overhead_at_most_third_of_tune_reuse"] is None
    text = bench.table(summary, {"crest": {"lost": 0, "ended_before_kill": 100}}, 200, 5000)
    assert "| crest (SQLite) | 10.0 | 14.0 | 3.00 | 900 | 0 of 100 |" in text
    assert "| — |" in text  # tune-reuse: no large size, no kill test


def test_the_trial_function_runs_a_crest_trial_and_probes_its_end(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = tmp_path / "probe.log"
    monkeypatch.setenv(bench.PROBE_ENV, str(probe))
    monkeypatch.setenv(bench.TRIAL_ENV, "tiny")
    spec = bench.current_spec()
    baseline = bench.train_baseline(bench.make_workload(spec), seed=0)
    names = [p.name for p in bench.trial_plan(spec).searched()]
    assert len(names) == 4
    params = {n: (0.5 if "quality" in n else 4) for n in names}
    result = bench.run_trial(params, baseline)
    assert result["end"] >= result["start"] and 0 < result["seconds"] <= result["end"] - result["start"]
    assert result["size"] > 0
    kinds = [line.split()[0] for line in probe.read_text().splitlines()]
    assert kinds == ["baseline", "trial"]
    assert bench.probe_lines(tmp_path) == [pytest.approx(float(probe.read_text().split()[-1]))]


def test_process_tree_holds_this_process(bench: Any) -> None:
    assert bench.process_tree(os.getpid())[0] == os.getpid()
    tree = bench.TreeSampler(os.getpid(), period=0.05)
    tree.start()
    tree.sample()
    tree.stop()
    assert tree.peak_bytes > 0 and os.getpid() in tree.seen
    assert 0 < tree.root_last_bytes <= tree.root_peak_bytes <= tree.peak_bytes


@pytest.mark.slow
def test_a_whole_run_at_a_tiny_size(bench: Any, tmp_path: Path) -> None:
    """crest (with kill -9 and resume), Optuna in memory and Tune with reused actors, 6 trials."""
    pytest.importorskip("ray.tune", exc_type=ImportError)
    out = tmp_path / "overhead.json"
    bench.main(["--trials", "6", "--large-trials", "0", "--repeats", "1", "--systems",
                "crest,optuna-memory,tune-reuse", "--kill-systems", "crest", "--kill-after", "3", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["complete"] is True
    for system in ("crest", "optuna-memory", "tune-reuse"):
        run = doc["runs"][system]["6"][0]
        assert run["trials"] == 6 and run["probe_trials"] == 6
        assert run["startup_s"] > 0 and run["peak_rss_mb"] > 0
        assert 0 < run["driver_last_rss_mb"] <= run["driver_peak_rss_mb"] <= run["peak_rss_mb"]
    kill = doc["kill9"]["crest"]
    # a result on its way from a worker to the driver at the kill is lost (and run again on
    # resume): each worker holds at most ASK_AHEAD trials, so at most that many per worker
    from crest.orchestrator._sweep_loop import ASK_AHEAD

    assert kill["exact"] is True and kill["lost"] <= bench.WORKERS * ASK_AHEAD and kill["ended_before_kill"] >= 3
    assert set(doc["goals"]) >= {"crest_overhead_at_most_third_of_tune_reuse", "crest_startup_under_4s"}
    assert "| crest (SQLite) |" in doc["table"]
