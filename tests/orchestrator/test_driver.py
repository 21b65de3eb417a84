"""The driver on a real local Ray with a real database: run, resume, recover, refuse."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import optuna
import pytest

from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import ConfigError, LeaseError, WorkloadError
from crest.orchestrator import DriverOptions, Progress, SweepDriver
from crest.storage import Store, trial_state_counts
from crest.tasks import evaluate, get_workload, model_from_tensors

from ..helpers import TINY_SWEEP

pytestmark = pytest.mark.usefixtures("ray_local")

OPTIONS = DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2)


def _config(url: str, **changes: Any):  # type: ignore[no-untyped-def]
    return parse_sweep({**TINY_SWEEP, **changes}, overrides={"storage": url})


def _run(url: str, **changes: Any) -> tuple[Any, list[Progress]]:
    seen: list[Progress] = []
    driver = SweepDriver(_config(url, **changes), sweep_yaml="# test\n", options=OPTIONS, on_progress=seen.append)
    return driver.run(), seen


def test_sweep_records_every_trial_and_its_decodable_artifact(storage_url: str) -> None:
    summary, seen = _run(storage_url)
    assert summary.complete == 4 and summary.failed_this_run == 0
    assert seen[-1].complete == 4 and seen[-1].message == "done"
    store = Store(storage_url, create=False)
    try:
        info = store.require_study("tiny")
        assert info.baseline_accuracy is not None and info.baseline_accuracy > 0.85
        assert info.lease_owner is None, "the lease is released at the end"
        trials = store.trials(info.id, state="COMPLETE")
        assert [t.number for t in trials] == [0, 1, 2, 3]
        assert trial_state_counts(store, "tiny")["COMPLETE"] == 4
        wl = get_workload("tiny-digits")
        for t in trials:
            blob = store.get_artifact(t.artifact_sha256)
            assert hashlib.sha256(blob).hexdigest() == t.artifact_sha256
            assert t.size_bytes == len(blob)
            assert t.transport_bytes == gpu.transport_size(blob) == len(gpu.to_transport(blob))
            assert t.ratio == pytest.approx(4 * 2410 / len(blob))
            assert t.accuracy_drop == pytest.approx(info.baseline_accuracy - t.accuracy)
            # the recorded accuracy belongs to the stored bytes
            assert evaluate(model_from_tensors(wl, gpu.decode(blob)), wl) == t.accuracy
            assert set(t.layers) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
            for name in ("fc1.weight", "fc2.weight"):
                bits = t.params[f"quantize/{name}/bits"]
                assert t.layers[name]["bits"] == bits
                values = gpu.decode(blob)[name]
                assert len(np.unique(values[values != 0])) <= 2**bits - 1
            assert t.node and t.attempt == 1
        # the Optuna study is complete and told the constraint
        study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
        assert all("crest_constraint" in t.user_attrs for t in study.trials)
    finally:
        store.close()


@pytest.mark.slow
def test_launch_again_extends_and_never_reruns(sqlite_url: str) -> None:
    _run(sqlite_url)
    store = Store(sqlite_url, create=False)
    before = {t.number: t.artifact_sha256 for t in store.trials(store.require_study("tiny").id)}
    store.close()
    summary, _ = _run(sqlite_url, n_trials=6)
    assert summary.complete == 6 and summary.ran_this_run == 2
    store = Store(sqlite_url, create=False)
    try:
        after = {t.number: t.artifact_sha256 for t in store.trials(store.require_study("tiny").id)}
        assert len(after) == 6 and {k: after[k] for k in before} == before
        assert store.require_study("tiny").n_trials == 6
    finally:
        store.close()
    # already complete: nothing runs
    summary, _ = _run(sqlite_url, n_trials=6)
    assert summary.ran_this_run == 0


def test_a_changed_search_is_refused_before_anything_runs(sqlite_url: str) -> None:
    _run(sqlite_url, n_trials=2)
    with pytest.raises(ConfigError, match="different search.*seed"):
        _run(sqlite_url, n_trials=2, seed=7)


def test_second_driver_is_refused_while_the_first_is_alive(sqlite_url: str) -> None:
    _run(sqlite_url, n_trials=1)
    store = Store(sqlite_url, create=False)
    info = store.require_study("tiny")
    store.acquire_lease(info.id, "otherhost:1234:live", ttl=10)
    try:
        before = store.require_study("tiny")
        with pytest.raises(LeaseError, match="another driver"):
            _run(sqlite_url, n_trials=3, workers=1)
        assert len(store.trials(info.id)) == 1, "the refused driver ran nothing"
        after = store.require_study("tiny")
        assert (after.n_trials, after.config_json) == (before.n_trials, before.config_json), "and wrote nothing"
    finally:
        store.release_lease(info.id, "otherhost:1234:live")
        store.close()


def _orphan(study: optuna.Study) -> tuple[optuna.Trial, dict[str, Any]]:
    """What a killed driver leaves behind: a RUNNING trial with its parameters."""
    orphan = study.ask()
    params = {
        "prune/fc1.weight/quality": orphan.suggest_float("prune/fc1.weight/quality", 0.1, 1.2),
        "prune/fc2.weight/quality": orphan.suggest_float("prune/fc2.weight/quality", 0.1, 1.2),
        "quantize/fc1.weight/bits": orphan.suggest_int("quantize/fc1.weight/bits", 3, 5),
        "quantize/fc2.weight/bits": orphan.suggest_int("quantize/fc2.weight/bits", 3, 5),
    }
    return orphan, params


def _orphans_then_run_to_three(url: str, k: int) -> list[tuple[optuna.Trial, dict[str, Any]]]:
    """Two complete trials and ``k`` orphans, then a driver runs the study to 3 trials."""
    _run(url, n_trials=2)
    store = Store(url, create=False)
    orphans = [_orphan(optuna.load_study(study_name="tiny", storage=store.optuna_storage())) for _ in range(k)]
    store.close()
    summary, _ = _run(url, n_trials=3)
    assert summary.complete == 3
    return orphans


@pytest.mark.slow
def test_trials_left_running_by_a_dead_driver_are_failed_and_rerun(sqlite_url: str) -> None:
    [(orphan, params)] = _orphans_then_run_to_three(sqlite_url, 1)
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        failed = store.trials(info.id, state="FAIL")
        assert [t.number for t in failed] == [orphan.number]
        assert "driver stopped" in (failed[0].error or "")
        rerun = [t for t in store.trials(info.id, state="COMPLETE") if t.retry_of == orphan.number]
        assert len(rerun) == 1 and rerun[0].attempt == 2
        assert {k: rerun[0].params[k] for k in params} == params
        counts = trial_state_counts(store, "tiny")
        assert counts["RUNNING"] == 0 and counts["COMPLETE"] == 3 and counts["FAIL"] == 1
    finally:
        store.close()


@pytest.mark.slow
def test_no_retry_is_queued_beyond_the_trials_still_needed(sqlite_url: str) -> None:
    """Three trials were running when the driver died, one trial remains to run: one retry
    is queued and run, and nothing is left WAITING once the study is done."""
    orphans = [t.number for t, _ in _orphans_then_run_to_three(sqlite_url, 3)]
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        assert sorted(t.number for t in store.trials(info.id, state="FAIL")) == orphans
        retries = [t for t in store.trials(info.id, state="COMPLETE") if t.retry_of is not None]
        assert len(retries) == 1 and retries[0].retry_of in orphans
        counts = trial_state_counts(store, "tiny")
        assert counts["WAITING"] == 0 and counts["RUNNING"] == 0
        assert counts["COMPLETE"] == 3 and counts["FAIL"] == 3
    finally:
        store.close()


@pytest.mark.slow
def test_an_orphan_out_of_retries_does_not_crowd_out_another_s_retry(sqlite_url: str) -> None:
    """Two orphans, one trial to go: the first may be retried, the second (on its fifth
    attempt) may not; the first's parameters are the ones run again."""
    from crest.orchestrator._ledger import ATTEMPT_ATTR

    _run(sqlite_url, n_trials=2)
    store = Store(sqlite_url, create=False)
    study = optuna.load_study(study_name="tiny", storage=store.optuna_storage())
    first, params = _orphan(study)
    spent, _ = _orphan(study)
    spent.set_user_attr(ATTEMPT_ATTR, 5)
    store.close()
    summary, _ = _run(sqlite_url, n_trials=3)
    assert summary.complete == 3
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        retries = [t for t in store.trials(info.id, state="COMPLETE") if t.retry_of is not None]
        assert [t.retry_of for t in retries] == [first.number]
        assert {k: retries[0].params[k] for k in params} == params
    finally:
        store.close()


def test_bad_workload_or_pattern_writes_nothing(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(WorkloadError):
        _run(url, workload="no-such-workload")
    with pytest.raises(ConfigError, match="matches no parameter"):
        _run(url, stages=[{"type": "prune", "layers": {"conv*": {"quality": 1.0}}}])
    assert not (tmp_path / "never.db").exists()


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_sweep_stops_after_max_failures(sqlite_url: str, tmp_path: Any) -> None:
    module = tmp_path / "boom_wl.py"
    module.write_text(
        "import torch\n"
        "from crest.tasks import get_workload\n"
        "class Boom(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc1 = torch.nn.Linear(64, 32); self.fc2 = torch.nn.Linear(32, 10)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        if not torch.is_grad_enabled() and self.fc1.weight.eq(0).any():\n"
        "            raise ValueError('boom on pruned model')\n"
        "        return self.fc2(torch.relu(self.fc1(x)))\n"
        "def make():\n"
        "    wl = get_workload('tiny-digits'); wl.build_model = Boom; wl.name = 'boom'; return wl\n"
    )
    config = _config(sqlite_url, workload="boom_wl:make", max_failures=2)
    driver = SweepDriver(
        config, sweep_yaml="", options=DriverOptions(lease_ttl=10, heartbeat=0.5, poll=0.2, search_path=(str(tmp_path),))
    )
    from crest.exceptions import SweepError

    with pytest.raises(SweepError, match="trials failed.*boom on pruned model"):
        driver.run()
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        failed = store.trials(info.id, state="FAIL")
        booms = [t for t in failed if "boom" in (t.error or "")]
        assert len(booms) == 3, "the third failure beyond max_failures=2 stops the sweep"
        # a trial still running on the other worker is failed as interrupted, and queued again
        assert all("interrupted" in (t.error or "") for t in failed if t not in booms)
        assert info.lease_owner is None
        assert trial_state_counts(store, "tiny")["RUNNING"] == 0
    finally:
        store.close()


@pytest.mark.slow
def test_sensitivity_table_bounds_a_later_sweep(sqlite_url: str) -> None:
    stages = [
        {"type": "prune", "layers": {"fc1.weight": {"sparsity": "sensitivity"}, "fc2.weight": {"quality": 0.5}},
         "sensitivity": {"low_drop": 0.01, "high_drop": 0.1}},
        {"type": "quantize", "layers": {"*.weight": {"bits": 4}}},
    ]
    # without a table, the sweep is refused before anything is written
    with pytest.raises(ConfigError, match="crest sensitivity"):
        _run(sqlite_url, stages=stages)
    driver = SweepDriver(_config(sqlite_url, stages=stages), sweep_yaml="", options=OPTIONS)
    table = driver.sensitivity([0.3, 0.9, 0.99])
    assert set(table) == {"fc1.weight", "fc2.weight"}
    for points in table.values():
        assert [p[0] for p in points] == [0.3, 0.9, 0.99]
        drops = [p[2] for p in points]
        assert drops[-1] > drops[0], "pruning 99% of a layer hurts more than 30%"
    store = Store(sqlite_url, create=False)
    try:
        stored = store.sensitivity(store.require_study("tiny").id)
        assert stored == table
    finally:
        store.close()
    summary, _ = _run(sqlite_url, stages=stages, n_trials=2)
    assert summary.complete == 2
    from crest.tasks import sensitivity_range

    low, high = sensitivity_range([(s, d) for s, _, d in table["fc1.weight"]], low_drop=0.01, high_drop=0.1)
    store = Store(sqlite_url, create=False)
    try:
        for t in store.trials(store.require_study("tiny").id, state="COMPLETE"):
            assert low <= t.params["prune/fc1.weight/sparsity"] <= high
    finally:
        store.close()


def test_a_local_study_trains_its_baseline_on_this_host_and_a_later_run_keeps_it(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Ray address and CPU workers: the baseline trains on this host, in a process of
    its own, while Ray starts.
    When the read made before the lease missed a baseline that the study has (another
    driver stored it meanwhile), the stored one is kept and the local one is not used."""
    with caplog.at_level("INFO", logger="crest"):
        _run(sqlite_url, n_trials=1)
    assert "training the baseline in a process of its own" in caplog.text
    store = Store(sqlite_url, create=False)
    stored = store.require_study("tiny").baseline_sha256
    store.close()
    assert stored is not None
    caplog.clear()
    monkeypatch.setattr(SweepDriver, "_stored_state", lambda self: ({}, False))  # the stale read
    with caplog.at_level("INFO", logger="crest"):
        summary, _ = _run(sqlite_url, n_trials=2)
    assert summary.complete == 2
    assert "has a baseline already: the one trained here is not used" in caplog.text
    store = Store(sqlite_url, create=False)
    try:
        assert store.require_study("tiny").baseline_sha256 == stored
    finally:
        store.close()


def test_a_baseline_begun_before_the_driver_is_the_one_it_stores(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The CLI begins a certainly new study's baseline (``early_baseline``) before it
    imports the driver; the driver uses that one (it trains no second) and stores it."""
    from crest.orchestrator._baseline import early_baseline

    config = _config(sqlite_url, n_trials=1)
    with caplog.at_level("INFO", logger="crest"):
        early = early_baseline(config, [])
        assert early is not None
        summary = SweepDriver(config, sweep_yaml="# test\n", options=OPTIONS, baseline=early).run()
    assert summary.complete == 1
    assert caplog.text.count("training the baseline in a process of its own") == 1
    blob, _ = early.result()  # (that it is the baseline a worker trains is tested in test_local_start)
    store = Store(sqlite_url, create=False)
    try:
        info = store.require_study("tiny")
        assert info.baseline_sha256 == hashlib.sha256(blob).hexdigest()
        # the node check made before the database existed is recorded
        assert [c["passed"] for c in store.node_checks(info.id)] == [True]
        assert optuna.load_study(study_name="tiny", storage=store.optuna_storage()).metric_names is not None
    finally:
        store.close()

    def first(text: str) -> int:
        return next(i for i, r in enumerate(caplog.records) if text in r.getMessage())

    # a certainly new study: its first worker starts before the database is created, and
    # the Optuna study is opened while the baseline trains, not after it
    assert first("ahead of the baseline") < first("upgrading crest's tables") < first("creating study")
    assert first("as the note of Optuna study") < first("baseline of study 'tiny'")
