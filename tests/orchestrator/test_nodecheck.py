"""Decoder checks per node and worker placement; a real 3-node Ray cluster on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from crest import gpu
from crest.orchestrator._nodecheck import check_node, gpu_probe, seeded_test_tensors
from crest.orchestrator._pool import plan_placement

from ..helpers import TINY_SWEEP


def test_check_node_on_a_cpu_machine_passes_on_the_numpy_path() -> None:
    blob = gpu.encode({"w": np.eye(40, dtype=np.float32)})
    row = check_node([blob], seed=3, node_id="abc")
    assert row["passed"], row["reason"]
    assert row["node_id"] == "abc" and row["host"] == os.uname().nodename
    probe = gpu_probe()
    assert row["mode"] == ("cuda" if probe["available"] else "cpu")
    if not probe["available"]:
        assert row["reason"] == probe["reason"] and row["gpu_name"] is None
    assert row["seconds"] > 0


def test_check_node_reports_a_broken_artifact_as_a_failed_row() -> None:
    blob = bytearray(gpu.encode({"w": np.ones(8, np.float32)}))
    blob[-1] ^= 0xFF
    row = check_node([bytes(blob)])
    assert not row["passed"] and "FormatError" in row["reason"]


def test_seeded_tensors_cover_fillers_chunks_and_dtypes() -> None:
    tensors = seeded_test_tensors(0)
    blob = gpu.encode(tensors, index_bits=4, code_bits=5, chunk_entries=256)
    manifest = {t["name"]: t for t in gpu.inspect(blob)["tensors"]}
    assert manifest["sparse.fp32"]["encoding"] == "sparse" and manifest["sparse.fp32"]["n_chunks"] > 1
    assert manifest["sparse.fp16"]["dtype"] == "float16"
    far = manifest["sparse.far_gaps"]
    assert far["n_entries"] > 4 * 100, "gaps far beyond 2**index_bits need fillers"
    assert manifest["dense.fp32"]["encoding"] == "dense"
    assert np.array_equal(seeded_test_tensors(0)["sparse.fp32"], tensors["sparse.fp32"])


def test_placement_spreads_workers_and_skips_failed_nodes() -> None:
    capacity = {"a": 2, "b": 2, "bad": 0, "c": 1}
    assert sorted(plan_placement(capacity, {}, 4)) == ["a", "a", "b", "c"] or sorted(
        plan_placement(capacity, {}, 4)
    ) == ["a", "b", "b", "c"]
    assert "bad" not in plan_placement(capacity, {}, 10)
    assert len(plan_placement(capacity, {}, 10)) == 5, "no more workers than room"
    assert plan_placement(capacity, {"a": 2, "b": 2}, 2) == ["c"]
    assert plan_placement({}, {}, 3) == []


CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                      "object_store_memory": 80 * 1024 * 1024})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 * 1024)
    cluster.wait_for_nodes()
    try:
        out = subprocess.run([sys.executable, "-m", "crest", "launch", "sweep.yaml", "-q",
                              "--address", cluster.address], capture_output=True, text=True, timeout=400)
        print(json.dumps({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}))
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_three_node_cluster_gets_one_check_per_node_and_workers_only_where_they_fit(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "n_trials": 3}))
    (tmp_path / "cluster.py").write_text(CLUSTER_SCRIPT)
    run = subprocess.run([sys.executable, "cluster.py"], cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    launch = json.loads(run.stdout.strip().splitlines()[-1])
    assert launch["rc"] == 0, launch["stderr"][-3000:]
    nodes = subprocess.run([sys.executable, "-m", "crest", "nodes", "tiny", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert nodes.returncode == 0, nodes.stderr
    checks = json.loads(nodes.stdout)
    assert len(checks) == 3 and len({c["node_id"] for c in checks}) == 3
    assert all(c["passed"] and c["mode"] in ("cpu", "cuda") for c in checks)
    for key in ("node_id", "host", "gpu_name", "cuda_version", "cupy_version", "passed", "reason", "seconds"):
        assert key in checks[0]
    table = subprocess.run([sys.executable, "-m", "crest", "nodes", "tiny"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert table.stdout.count("pass") == 3
    # the head has no CPUs: trials ran only on the two worker nodes
    best = json.loads(subprocess.run([sys.executable, "-m", "crest", "best", "tiny", "--json", "--max-drop", "1"],
                                     cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout)
    assert len(best) == 3
    assert len({row["node"].split("/")[1] for row in best}) <= 2


def _pool(sqlite_url: str, **changes: Any) -> tuple[Any, Any]:
    """A real worker pool of the tiny sweep on a new study (Ray from ``ray_local``), and its store."""
    from crest.config import parse_sweep
    from crest.orchestrator._pool import WorkerPool
    from crest.storage import Store
    from crest.tasks import get_workload, resolve_plan

    cfg = parse_sweep({**TINY_SWEEP, **changes}, overrides={"storage": sqlite_url})
    model = get_workload(cfg.workload).build_model()
    plan = resolve_plan(cfg.stages, [n for n, _ in model.named_parameters()],
                        shapes={n: tuple(p.shape) for n, p in model.named_parameters()})
    store = Store(sqlite_url, create=True)
    return WorkerPool(cfg, plan, store, store.create_study(cfg, sweep_yaml="").id, []), store


@pytest.mark.usefixtures("ray_local")
def test_the_baseline_trainer_starts_while_its_node_is_checked_and_stays_only_if_it_passes(sqlite_url: str) -> None:
    """The driver places the baseline's trainer on a node whose check still runs; the
    trainer becomes a worker only if that node passes, else it is retired (killed)."""
    import ray

    pool, store = _pool(sqlite_url)
    try:
        assert pool.placement(1) == [] and pool.placement(1, checking=True) == []  # no node seen yet
        assert pool.scan_nodes([]) == 1
        (node,) = pool.placement(1, checking=True)  # its check runs, not yet passed
        assert pool.placement(1) == []
        trainer = pool.new_actor(node)
        pool.wait_for_checks()
        assert pool.node_passed(trainer) and pool.placement(1) == [node]
        ray.get(trainer.__ray_ready__.remote(), timeout=120)
        pool._nodes[node].passed = False  # what a failed check leaves
        assert not pool.node_passed(trainer)
        pool.retire(trainer)
        assert pool.live_count() == 0
        # ray.kill is asynchronous: a call made just after it may still be answered
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.get(trainer.__ray_ready__.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "the retired trainer is still alive after 60 s"
            time.sleep(0.2)
    finally:
        pool.kill_all()
        store.close()


@pytest.mark.usefixtures("ray_local")
def test_a_pool_checks_before_its_study_exists_and_records_the_check_once_bound(sqlite_url: str) -> None:
    """A new study's pool starts its node's check before the database is created; the
    check is recorded when it is settled, which needs the store: settling it unbound
    raises (a caller's bug) instead of counting a check that is recorded nowhere."""
    from crest.orchestrator._pool import WorkerPool

    bound, store = _pool(sqlite_url)
    try:
        pool = WorkerPool(bound._config, bound._plan, None, None, [])
        assert pool.scan_nodes([]) == 1
        with pytest.raises(RuntimeError, match="bind must be called before a check is settled"):
            pool.wait_for_checks()
        study = store.require_study("tiny")
        pool = WorkerPool(bound._config, bound._plan, None, None, [])
        pool.scan_nodes([])
        pool.bind(store, study.id)
        pool.wait_for_checks()
        assert pool.passed_nodes() and [c["passed"] for c in store.node_checks(study.id)] == [True]
    finally:
        store.close()


@pytest.mark.usefixtures("ray_local")
def test_workers_started_before_the_baseline_load_it_when_it_exists(sqlite_url: str) -> None:
    """prestart starts the workers the nodes have room for while the baseline trains; fill
    has them load it, and they become idle workers (real actors, a real baseline)."""
    import ray

    from crest.tasks import get_workload, train_baseline

    pool, store = _pool(sqlite_url, workers=2)
    try:
        pool.scan_nodes([])
        pool.wait_for_checks()
        assert pool.prestart() == 2 and pool.live_count() == 2
        assert pool.pending() == []  # nothing to load yet
        blob, accuracy = train_baseline(get_workload("tiny-digits"), seed=0)
        pool.set_baseline(ray.put(blob), accuracy)
        assert pool.fill() == 0, "the prestarted workers fill the pool"
        started = []
        while pool.pending():
            done, _ = ray.wait(pool.pending(), num_returns=1, timeout=120)
            assert done, "a prestarted worker did not load the baseline in 120 s"
            started.append(pool.handle(done[0]))
        assert [type(e).__name__ for e in started] == ["WorkerStarted", "WorkerStarted"]
        assert pool.take_idle() is not None and pool.take_idle() is not None
    finally:
        pool.kill_all()
        store.close()


@pytest.mark.usefixtures("ray_local")
def test_workers_started_while_their_node_is_checked_are_retired_if_it_fails(sqlite_url: str) -> None:
    """prestart(checking=True) starts workers before the node's check ends (the driver does,
    right after Ray is up); fill retires those whose node then failed, and starts none there."""
    import ray

    pool, store = _pool(sqlite_url, workers=2)
    try:
        assert pool.scan_nodes([]) == 1
        (node,) = pool.placement(1, checking=True)  # its check runs (passed only once the pool reads it)
        assert pool.prestart() == 0, "without checking, a node still being checked gets no worker"
        assert pool.prestart(checking=True) == 2 and pool.live_count() == 2
        pool.wait_for_checks()
        pool._nodes[node].passed = False  # what a failed check leaves
        pool.set_baseline(ray.put(b"unused"), 0.5)
        assert pool.fill() == 0 and pool.live_count() == 0 and pool.pending() == []
    finally:
        pool.kill_all()
        store.close()


@pytest.mark.usefixtures("ray_local")
def test_the_drivers_own_node_is_checked_in_the_driver_without_a_task(sqlite_url: str) -> None:
    """``scan_nodes(here=...)``: the node's check runs in this process, in
    ``wait_for_checks``, and records the same row a task records; no task is started."""
    import ray

    pool, store = _pool(sqlite_url)
    try:
        here = ray.get_runtime_context().get_node_id()
        artifact = gpu.encode({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, index_bits=4, code_bits=4)
        assert pool.scan_nodes([artifact], here=here) == 1
        assert pool.pending() == [] and pool.checking(), "no task: the check waits for wait_for_checks"
        assert pool.placement(1) == [] and pool.placement(1, checking=True) == [here]
        pool.wait_for_checks()
        assert not pool.checking() and pool.placement(1) == [here]
        (row,) = store.node_checks(pool._study_id)
        direct = check_node([artifact], node_id=here)
        assert row["passed"] and row["mode"] == "cpu"
        assert {k: row[k] for k in direct if k != "seconds"} == {k: v for k, v in direct.items() if k != "seconds"}
        assert pool.scan_nodes([artifact], here=here) == 0, "a node is checked once"
        # a broken artifact fails the node, as it does in a task
        pool2, store2 = _pool(sqlite_url.replace(".db", "-2.db"))
        try:
            pool2.scan_nodes([artifact[:-9]], here=here)
            pool2.wait_for_checks()
            (row2,) = store2.node_checks(pool2._study_id)
            assert not row2["passed"] and "FormatError" in row2["reason"] and pool2.placement(1) == []
        finally:
            store2.close()
    finally:
        pool.kill_all()
        store.close()
