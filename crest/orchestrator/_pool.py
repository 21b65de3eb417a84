"""The worker pool: decoder checks per node, worker placement on nodes that passed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from crest.config import SweepConfig
from crest.orchestrator._nodecheck import check_node
from crest.orchestrator._worker import TrialWorker
from crest.storage import Store
from crest.tasks import TrialPlan

__all__ = ["WorkerPool", "plan_placement"]

CHECK_TIMEOUT = 300.0  # seconds a node's check may take before the node counts as failed


def plan_placement(
    capacity: dict[str, int], placed: dict[str, int], wanted: int
) -> list[str]:
    """Nodes for ``wanted`` more workers, spread round-robin over nodes with room.

    Args:
        capacity: node id -> how many workers it can hold (0 for nodes that failed).
        placed: node id -> workers already there.
        wanted: workers to add.

    Returns:
        node ids, one per new worker (fewer when the nodes are full).
    """
    free = {n: capacity.get(n, 0) - placed.get(n, 0) for n in capacity}
    out: list[str] = []
    while len(out) < wanted:
        room = [n for n, k in free.items() if k > 0]
        if not room:
            break
        # the emptiest node first, ties by id, so workers spread evenly
        room.sort(key=lambda n: (placed.get(n, 0) + out.count(n), n))
        out.append(room[0])
        free[room[0]] -= 1
    return out


@dataclass
class _Node:
    node_id: str
    capacity: int
    passed: bool | None = None  # None while its check runs


@dataclass
class WorkerPool:
    """Ray actors running trials, only on nodes whose decoder check passed.

    Plain bookkeeping around Ray calls; the driver owns the event loop and hands back the
    refs that finished (:meth:`handle_check`, :meth:`handle_started`).
    """

    config: SweepConfig
    plan: TrialPlan
    store: Store
    study_id: int
    search_path: list[str]
    nodes: dict[str, _Node] = field(default_factory=dict)
    checking: dict[Any, tuple[str, float]] = field(default_factory=dict)  # check ref -> (node, t0)
    ready: list[Any] = field(default_factory=list)
    starting: dict[Any, Any] = field(default_factory=dict)  # load_baseline ref -> actor
    where: dict[Any, str] = field(default_factory=dict)  # actor -> node id
    info: dict[Any, dict[str, Any]] = field(default_factory=dict)  # actor -> node info
    all: list[Any] = field(default_factory=list)
    baseline: tuple[Any, float] | None = None
    last_scan: float = 0.0

    # nodes ------------------------------------------------------------------------------

    def _capacity(self, resources: dict[str, float]) -> int:
        cpus = int(resources.get("CPU", 0) // self.config.ray.cpus_per_worker)
        if self.config.ray.gpus_per_worker > 0:
            cpus = min(cpus, int(resources.get("GPU", 0) // self.config.ray.gpus_per_worker))
        return cpus

    def scan_nodes(self, artifacts: list[bytes]) -> int:
        """Start a decoder check on every alive node not seen before; returns how many."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.last_scan = time.monotonic()
        started = 0
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        for node_id in list(self.nodes):
            if node_id not in alive:
                self.nodes.pop(node_id)
        for node_id, node in alive.items():
            if node_id in self.nodes:
                continue
            self.nodes[node_id] = _Node(node_id, self._capacity(node.get("Resources", {})))
            task = ray.remote(check_node).options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                max_retries=0,
            )
            self.checking[task.remote(artifacts, seed=self.config.seed, node_id=node_id)] = (node_id, time.monotonic())
            started += 1
        return started

    def handle_check(self, ref: Any) -> dict[str, Any]:
        """Record a finished check; a node that passed can take workers."""
        import ray

        node_id, _ = self.checking.pop(ref)
        try:
            row = ray.get(ref)
        except ray.exceptions.RayError as e:
            row = {"node_id": node_id, "host": "?", "mode": "cpu", "passed": False,
                   "reason": f"the check task failed: {str(e).strip().splitlines()[-1][:500]}", "seconds": 0.0}
        self.store.record_node_check(self.study_id, row)
        if node_id in self.nodes:
            self.nodes[node_id].passed = bool(row["passed"])
        return row

    def expire_checks(self) -> list[dict[str, Any]]:
        """Fail checks that ran past CHECK_TIMEOUT (a hung node gets no workers)."""
        rows = []
        now = time.monotonic()
        for ref, (node_id, t0) in list(self.checking.items()):
            if now - t0 > CHECK_TIMEOUT:
                self.checking.pop(ref)
                row = {"node_id": node_id, "host": "?", "mode": "cpu", "passed": False,
                       "reason": f"no answer in {CHECK_TIMEOUT:.0f} s", "seconds": now - t0}
                self.store.record_node_check(self.study_id, row)
                if node_id in self.nodes:
                    self.nodes[node_id].passed = False
                rows.append(row)
        return rows

    def wait_for_checks(self) -> None:
        """Block until every running check has finished (or timed out)."""
        import ray

        while self.checking:
            done, _ = ray.wait(list(self.checking), num_returns=1, timeout=1.0)
            for ref in done:
                self.handle_check(ref)
            self.expire_checks()

    def passed_nodes(self) -> list[str]:
        """Nodes whose last check passed."""
        return [n for n, node in self.nodes.items() if node.passed]

    # workers ------------------------------------------------------------------------------

    def new_actor(self, node_id: str) -> Any:
        """A worker actor pinned to ``node_id``."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cls = ray.remote(TrialWorker).options(  # type: ignore[attr-defined]
            num_cpus=self.config.ray.cpus_per_worker,
            num_gpus=self.config.ray.gpus_per_worker,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        actor = cls.remote(self.config.workload, self.plan, self.search_path, max(1, int(self.config.ray.cpus_per_worker)))
        self.where[actor] = node_id
        self.all.append(actor)
        return actor

    def live_count(self) -> int:
        """Workers ready, busy or starting."""
        return len(self.where)

    def placement(self, wanted: int) -> list[str]:
        """Passed nodes with room for ``wanted`` more workers (see :func:`plan_placement`)."""
        placed: dict[str, int] = {}
        for node_id in self.where.values():
            placed[node_id] = placed.get(node_id, 0) + 1
        capacity = {n: node.capacity for n, node in self.nodes.items() if node.passed}
        return plan_placement(capacity, placed, wanted)

    def fill(self) -> int:
        """Start workers on passed nodes until the pool has ``workers`` (needs the baseline)."""
        if self.baseline is None:
            return 0
        targets = self.placement(self.config.workers - len(self.where))
        ref, accuracy = self.baseline
        for node_id in targets:
            actor = self.new_actor(node_id)
            self.starting[actor.load_baseline.remote(ref, accuracy)] = actor
        return len(targets)

    def handle_started(self, ref: Any) -> Exception | None:
        """A worker finished loading; returns the error when it failed to start."""
        import ray

        actor = self.starting.pop(ref)
        try:
            self.info[actor] = ray.get(ref)
        except ray.exceptions.RayError as e:
            self.forget(actor)
            return e
        self.ready.append(actor)
        return None

    def forget(self, actor: Any) -> None:
        """Drop a dead worker from the books (its node may take a replacement)."""
        self.where.pop(actor, None)
        self.info.pop(actor, None)
        if actor in self.ready:
            self.ready.remove(actor)

    def kill_all(self) -> None:
        """Stop every actor this pool started."""
        import ray

        for actor in self.all:
            ray.kill(actor, no_restart=True)
