"""The arithmetic behind bench/early_stopping.py: compute to a target, best at equal compute."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench._load import load_bench


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_bench("early_stopping")


def _h(trial: int, seconds: float, ratio: float | None, feasible: bool, state: str = "COMPLETE") -> dict[str, Any]:
    return {"trial": trial, "seconds": seconds, "ratio": ratio, "feasible": feasible, "state": state}


OFF = [_h(0, 2.0, 10.0, True), _h(1, 2.0, 30.0, False), _h(2, 2.0, 20.0, True), _h(3, 2.0, 25.0, True)]
ON = [_h(0, 2.0, 10.0, True), _h(1, 0.5, 30.0, False, "PRUNED"), _h(2, 0.1, 12.0, False, "PRUNED"),
      _h(3, 2.0, 25.0, True)]


def test_compute_to_counts_every_trial_up_to_the_first_feasible_hit(bench: Any) -> None:
    assert bench.compute_to(OFF, 25.0) == 8.0
    assert bench.compute_to(ON, 25.0) == pytest.approx(4.6)
    assert bench.compute_to(OFF, 30.0) is None  # an infeasible 30x is no hit
    assert bench.compute_to(OFF, 10.0) == 2.0


def test_best_within_a_budget(bench: Any) -> None:
    assert bench.best_within(OFF, 4.0) == 10.0
    assert bench.best_within(ON, 4.6) == 25.0
    assert bench.best_within(ON, 1.0) is None


def test_a_pair_and_its_summary(bench: Any) -> None:
    off = {"history": OFF, "best_ratio": 25.0, "compute_seconds": 8.0, "wall_seconds": 9.0}
    on = {"history": ON, "best_ratio": 25.0, "compute_seconds": 4.6, "wall_seconds": 5.0}
    c = bench.compare(off, on)
    assert c["saving"] == pytest.approx(8.0 / 4.6, abs=1e-3) and c["reached"]
    assert c["best_at_equal_compute"]["0.5"] == {"budget_seconds": 4.0, "off": 10.0, "on": 10.0}
    missed = bench.compare(off, {**on, "history": ON[:3], "best_ratio": 10.0})
    assert missed["saving"] is None and not missed["reached"]
    summary = bench.summarise([{"space": "a", "comparison": c}, {"space": "a", "comparison": missed}])
    assert summary["a"]["savings"] == [pytest.approx(1.739, abs=1e-3), 0.0]  # a miss is no saving
    assert summary["a"]["pairs_final_best_not_lower"] == 1


def test_pruned_reasons_name_their_rule(bench: Any) -> None:
    assert bench._rule("size-dominated: at least 1 bytes") == "size"
    assert bench._rule("dominated: at least 1 bytes and accuracy 0.9") == "dominated"
    assert bench._rule("score 0.1 after epoch 1 is below 0.8, the 10th percentile of 5 trials") == "percentile"
    assert bench._rule("score 0.1 after epoch 1 reaches at most 0.5 at the best rate seen") == "unreachable"
