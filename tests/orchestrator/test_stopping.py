"""The early-stopping rules, one by one, and the sweep file's ``early_stopping`` key."""

from __future__ import annotations

import pytest

from crest.config import EarlyStopping, parse_sweep
from crest.exceptions import ConfigError
from crest.orchestrator._stopping import StoppingPolicy, pruned_constraint

from ..helpers import TINY_SWEEP

KEYS = [("retrain", 1, 1, e) for e in (1, 2, 3)]  # one round of three epochs
BASE, DROP = 0.90, 0.01  # feasible: score >= 0.89


def _policy(objectives: tuple[str, ...] = ("size",), **cfg: object) -> StoppingPolicy:
    return StoppingPolicy(EarlyStopping(**cfg), objectives=list(objectives), baseline_accuracy=BASE, max_drop=DROP)


def _add(p: StoppingPolicy, number: int, size: int, accuracy: float, curve: list[float]) -> None:
    p.add(number, size=size, accuracy=accuracy, feasible=accuracy >= BASE - DROP,
          curve={i + 1: s for i, s in enumerate(curve)}, keys=KEYS)


def test_single_objective_stops_what_cannot_be_smaller_than_the_best_feasible() -> None:
    p = _policy()
    assert p.before_training(10_000) is None  # nothing feasible yet
    _add(p, 0, 9_000, 0.85, [0.8, 0.82, 0.85])  # infeasible: not a bar
    assert p.before_training(10_000) is None
    _add(p, 1, 12_000, 0.90, [0.85, 0.88, 0.9])
    _add(p, 2, 11_000, 0.895, [0.85, 0.88, 0.9])
    stop = p.before_training(11_000)
    assert stop is not None and stop.rule == "size" and "11,000" in stop.reason and "trial 2" in stop.reason
    assert p.before_training(10_999) is None
    assert _policy(size_dominated=False).before_training(10**9) is None


def test_pareto_stops_a_trial_dominated_even_at_its_best_accuracy() -> None:
    p = _policy(("size", "accuracy"))
    _add(p, 0, 10_000, 0.89, [0.8, 0.85, 0.89])
    assert p.before_training(20_000) is None  # smaller, but less accurate than this one could be
    _add(p, 1, 15_000, 0.905, [0.8, 0.85, 0.9])  # beats the baseline: the ceiling rises with it
    stop = p.before_training(15_000)
    assert stop is not None and stop.rule == "dominated" and "trial 1" in stop.reason
    assert p.before_training(14_999) is None


def test_percentile_rule_waits_for_its_warm_up_and_compares_like_epochs() -> None:
    p = _policy(percentile=10.0, unreachable=False, n_startup_trials=3)
    for n, start in enumerate((0.80, 0.82, 0.84)):
        _add(p, n, 1_000, 0.9, [start, 0.88, 0.9])
    _add(p, 3, 1_000, 0.5, [0.1, 0.2, 0.5])  # ended infeasible: never a bar
    assert p.after_epoch(KEYS, 1, 0.79, low=None) is not None  # below all three
    assert p.after_epoch(KEYS, 1, 0.81, low=None) is None  # above the 10th percentile (0.804)
    assert p.after_epoch(KEYS, 2, 0.87, low=None) is not None
    other = [("retrain", 1, 2, 1)]  # the first epoch of a two-round trial: no reference yet
    assert p.after_epoch(other, 1, 0.1, low=None) is None
    warm = _policy(percentile=10.0, unreachable=False, n_startup_trials=4)
    for n in range(3):
        _add(warm, n, 1_000, 0.9, [0.8, 0.88, 0.9])
    assert warm.after_epoch(KEYS, 1, 0.1, low=None) is None  # 3 feasible trials < 4


def test_unreachable_uses_the_best_rate_seen_from_that_epoch() -> None:
    p = _policy(percentile=None, n_startup_trials=2, margin=0.0)
    _add(p, 0, 1_000, 0.90, [0.70, 0.80, 0.90])  # +0.10 an epoch after epoch 1; tail 0
    _add(p, 1, 1_000, 0.80, [0.78, 0.80, 0.82])  # tail -0.02
    # after epoch 1, 2 epochs to go: 0.68 + 2 x 0.10 + 0.0 = 0.88 < 0.89
    stop = p.after_epoch(KEYS, 1, 0.68, low=None)
    assert stop is not None and stop.rule == "unreachable" and "0.8800" in stop.reason
    assert p.after_epoch(KEYS, 1, 0.70, low=None) is None  # 0.90 reachable
    assert p.after_epoch(KEYS, 3, 0.885, low=None) is not None  # last epoch: only the tail is left
    assert _policy(percentile=None, n_startup_trials=2, n_warmup_steps=1).after_epoch(KEYS, 1, 0.0, low=None) is None


def test_unreachable_keeps_trials_within_the_margin() -> None:
    """By default the margin is the allowed drop: only a trial that would end more than
    that below the constraint at the best rate seen is stopped."""
    p = _policy(percentile=None, n_startup_trials=2)
    _add(p, 0, 1_000, 0.90, [0.70, 0.80, 0.90])
    _add(p, 1, 1_000, 0.80, [0.78, 0.80, 0.82])
    assert p.after_epoch(KEYS, 1, 0.68, low=None) is None  # at most 0.88: within 0.01 of 0.89
    stop = p.after_epoch(KEYS, 1, 0.67, low=None)  # at most 0.87
    assert stop is not None and "more than 0.01 below" in stop.reason


def test_pareto_stops_a_trial_dominated_at_the_best_rate_seen() -> None:
    p = _policy(("size", "accuracy"), percentile=None, n_startup_trials=2, margin=0.0)
    _add(p, 0, 1_000, 0.95, [0.90, 0.93, 0.95])
    _add(p, 1, 5_000, 0.92, [0.90, 0.91, 0.92])
    # best rate from epoch 1: +0.025 an epoch, so at most 0.91 + 2 x 0.025 = 0.96 > 0.95: not dominated
    assert p.after_epoch(KEYS, 1, 0.91, low=2_000) is None
    stop = p.after_epoch(KEYS, 1, 0.89, low=2_000)  # at most 0.94 < 0.95 with 1,000 bytes
    assert stop is not None and stop.rule == "dominated"
    assert p.after_epoch(KEYS, 1, 0.89, low=900) is None  # smaller than every feasible trial


def test_a_stopped_trial_is_always_infeasible_to_optuna() -> None:
    assert pruned_constraint({}, baseline_accuracy=BASE, max_drop=DROP) == 1.0
    assert pruned_constraint({1: 0.5, 2: 0.6}, baseline_accuracy=BASE, max_drop=DROP) == pytest.approx(0.29)
    assert pruned_constraint({1: 0.95}, baseline_accuracy=BASE, max_drop=DROP) > 0


def test_the_sweep_file_key() -> None:
    assert parse_sweep(TINY_SWEEP).early_stopping is None
    cfg = parse_sweep({**TINY_SWEEP, "early_stopping": {"size_dominated": True}}).early_stopping
    assert cfg is not None and cfg.size_dominated and cfg.percentile is None and cfg.unreachable
    assert cfg.scores_needed()
    assert not EarlyStopping(percentile=None, unreachable=False).scores_needed()
    with pytest.raises(ConfigError, match=r"early_stopping\.percentile"):
        parse_sweep({**TINY_SWEEP, "early_stopping": {"percentile": 101}})
    with pytest.raises(ConfigError, match=r"early_stopping\.patience: unknown key"):
        parse_sweep({**TINY_SWEEP, "early_stopping": {"patience": 3}})
    # the policy is part of the search: a study launched without it is not resumed with it
    assert parse_sweep(TINY_SWEEP).search_identity() != parse_sweep(
        {**TINY_SWEEP, "early_stopping": {}}).search_identity()
