"""The statistics behind bench/compression.py's TPE-vs-random comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.bench._load import load_bench


@pytest.fixture(scope="module")
def bench() -> object:
    return load_bench("compression")


@pytest.mark.parametrize(("k", "n"), [(0, 300), (1, 300), (5, 1200), (40, 100), (99, 100)])
def test_clopper_pearson_upper_matches_the_beta_quantile(bench: object, k: int, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    want = stats.beta.ppf(0.95, k + 1, n - k)
    assert bench._clopper_pearson_upper(k, n, 0.05) == pytest.approx(want, rel=1e-6)


def test_clopper_pearson_upper_without_hits_is_closed_form(bench: object) -> None:
    assert bench._clopper_pearson_upper(0, 300, 0.05) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-9)
    assert bench._clopper_pearson_upper(7, 7, 0.05) == 1.0


def test_geometric_median_matches_simulation(bench: object) -> None:
    rng = np.random.default_rng(0)
    for p in (0.3, 0.1, 0.05):  # the CDF at the median is well away from 0.5 for these
        draws = rng.geometric(p, size=200_000)  # trials up to and including the first success
        assert bench._geometric_median(p) == float(np.median(draws))
    assert bench._geometric_median(0.1) == math.ceil(math.log(0.5) / math.log(0.9))


def test_random_pool_counts_only_feasible_hits_at_the_target(bench: object) -> None:
    runs = [
        {"history": [[1, 45.0, 0.94, True], [2, 50.0, 0.90, False], [3, 10.0, 0.95, True]]},
        {"history": [[1, 39.9, 0.94, True], [2, 40.0, 0.94, True]]},
    ]
    est = bench.random_pool_estimate(runs, 40.0)
    assert (est["trials"], est["hits"]) == (5, 2)
    assert est["hit_rate"] == pytest.approx(0.4)
    assert est["median_trials"] == bench._geometric_median(0.4)
    assert est["median_trials_lower_95"] <= est["median_trials"]
    none = bench.random_pool_estimate([{"history": [[1, 5.0, 0.9, True]] * 10}], 40.0)
    assert none["hits"] == 0 and none["median_trials"] is None and none["median_trials_lower_95"] > 1


def test_median_upper_bound_is_the_right_order_statistic(bench: object) -> None:
    runs = [23, 60, 37, 20, 25, 22, 26, 29, 56, 11]
    bound, coverage = bench.median_upper_bound(runs, 0.9)
    # P(Bin(10, 1/2) <= 7) = 968/1024 is the first cumulative value >= 0.9: the 8th smallest
    assert (bound, coverage) == (37.0, pytest.approx(968 / 1024))
    rng = np.random.default_rng(1)
    covered = sum(bench.median_upper_bound(list(rng.exponential(size=10)), 0.9)[0] >= np.log(2) for _ in range(4000))
    assert covered / 4000 == pytest.approx(968 / 1024, abs=0.015)
