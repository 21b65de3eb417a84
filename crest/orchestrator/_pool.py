"""The worker pool: decoder checks per node, worker placement on nodes that passed.

The pool owns the Ray refs of its own work (node checks, workers loading the baseline)
and turns each finished one into an event (:mod:`crest.orchestrator._events`); the
driver's loop waits on them together with its trials and routes the events back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from crest.config import SweepConfig
from crest.orchestrator._events import (
    NodeChecked,
    PoolEvent,
    WorkerFailedToStart,
    WorkerStarted,
)
from crest.orchestrator._nodecheck import check_node
from crest.orchestrator._worker import TrialWorker
from crest.storage import Store, retry_transient
from crest.tasks import LatencyOptions, TrialPlan

__all__ = ["WorkerPool", "plan_placement", "short_error", "worker_slots"]

logger = logging.getLogger(__name__)

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


def worker_slots(resources: dict[str, float], cpus_per_worker: float, gpus_per_worker: float) -> int:
    """Workers a node holds: its CPUs over ``cpus_per_worker`` and, when workers take GPUs,
    its GPUs over ``gpus_per_worker`` (a fraction: 0.25 puts four workers on each GPU), so
    placement never gives a node's workers more GPUs than it has.

    Args:
        resources: the node's Ray resources (``CPU``, ``GPU`` counts).
        cpus_per_worker, gpus_per_worker: what each worker reserves.
    """
    # Ray keeps resources in units of 1e-4: count in those, so 1 / 0.1 is 10, not 9.999..
    def units(x: float) -> int:
        return round(float(x) * 10_000)

    slots = units(resources.get("CPU", 0)) // max(1, units(cpus_per_worker))
    if gpus_per_worker > 0:
        slots = min(slots, units(resources.get("GPU", 0)) // max(1, units(gpus_per_worker)))
    return int(slots)


def short_error(e: BaseException) -> str:
    """One line (at most 500 characters) for a Ray error: its cause, else its last line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]


def _failed_check(node_id: str, reason: str, seconds: float) -> dict[str, Any]:
    return {"node_id": node_id, "host": "?", "mode": "cpu", "passed": False, "reason": reason, "seconds": seconds}


@dataclass
class _Node:
    capacity: int
    passed: bool | None = None  # None while its check runs


class WorkerPool:
    """Ray actors running trials, only on nodes whose decoder check passed.

    Args:
        config: the sweep (workers, CPUs and GPUs per worker, workload, seed).
        plan: the resolved stages, handed to every worker.
        store: where node checks are recorded, with ``study_id``, the study they belong
            to; None until :meth:`bind` gives them (a new study's pool may start
            workers and checks before its database exists; a check is recorded when it
            is settled, which needs them).
        study_id: the study the checks belong to.
        search_path: directories for importing a ``module:function`` workload.
    """

    def __init__(
        self, config: SweepConfig, plan: TrialPlan, store: Store | None, study_id: int | None, search_path: list[str]
    ) -> None:
        self._config = config
        self._plan = plan
        self._store = store
        self._study_id = study_id
        self._search_path = search_path
        self._nodes: dict[str, _Node] = {}
        self._checks: dict[Any, tuple[str, float]] = {}  # check ref -> (node id, start)
        self._here: tuple[str, list[bytes]] | None = None  # this process's node and what to check there
        self._starting: dict[Any, Any] = {}  # load_baseline ref -> actor
        self._unloaded: list[Any] = []  # workers started before the baseline existed
        self._idle: list[Any] = []
        self._node_of: dict[Any, str] = {}  # live actor -> node id
        self._where: dict[Any, dict[str, Any]] = {}  # started actor -> what it reported
        self._started: list[Any] = []  # every actor ever started, for kill_all
        self._baseline: tuple[Any, float] | None = None
        self._last_scan = float("-inf")

    # nodes ------------------------------------------------------------------------------

    def _capacity(self, resources: dict[str, float]) -> int:
        ray_opts = self._config.ray
        return worker_slots(resources, ray_opts.cpus_per_worker, ray_opts.gpus_per_worker)

    def scan_due(self, every: float) -> bool:
        """True when the last scan for new nodes is more than ``every`` seconds old."""
        return time.monotonic() - self._last_scan > every

    def scan_nodes(self, artifacts: list[bytes], *, here: str | None = None) -> int:
        """Start a decoder check on every alive node not seen before; returns how many.

        ``here``: this process's own node, whose check :meth:`wait_for_checks` runs in this
        process instead of in a task. The driver passes it for a local Ray it started on a
        host where the check can only take the NumPy path (see ``SweepDriver``): the task
        would run the same code with the same interpreter, and costs a Ray worker process
        of its own (Ray does not reuse a worker that ran a task for an actor)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._last_scan = time.monotonic()
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        for node_id in [n for n in self._nodes if n not in alive]:
            logger.warning("node %s left the cluster", node_id[:8])
            del self._nodes[node_id]
        started = 0
        for node_id, node in alive.items():
            if node_id in self._nodes:
                continue
            self._nodes[node_id] = _Node(self._capacity(node.get("Resources", {})))
            if node_id == here:
                self._here = (node_id, artifacts)
                logger.info("decoder check of node %s runs in the driver (its own node, NumPy path)", node_id[:8])
                started += 1
                continue
            task = ray.remote(check_node).options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                max_retries=0,
            )
            ref = task.remote(artifacts, seed=self._config.seed, node_id=node_id)
            self._checks[ref] = (node_id, time.monotonic())
            logger.info("decoder check started on node %s", node_id[:8])
            started += 1
        return started

    def bind(self, store: Store, study_id: int) -> None:
        """Where the node checks are recorded from now on: ``store``, for ``study_id``."""
        self._store, self._study_id = store, study_id

    def _settle_check(self, node_id: str, row: dict[str, Any]) -> NodeChecked:
        store, study_id = self._store, self._study_id
        if store is None or study_id is None:
            raise RuntimeError("bind must be called before a check is settled")
        retry_transient(lambda: store.record_node_check(study_id, row),
                        what=f"recording the decoder check of node {node_id[:8]}")
        if node_id in self._nodes:
            self._nodes[node_id].passed = bool(row["passed"])
        if row["passed"]:
            logger.info("node %s (%s) passed the decoder check (%s)", node_id[:8], row["host"], row["mode"])
        else:
            logger.warning("node %s (%s) failed the decoder check: %s", node_id[:8], row["host"], row["reason"])
        return NodeChecked(row)

    def expire_checks(self) -> list[NodeChecked]:
        """Fail checks that ran past CHECK_TIMEOUT (a hung node gets no workers)."""
        now = time.monotonic()
        late = [(ref, node_id, t0) for ref, (node_id, t0) in self._checks.items() if now - t0 > CHECK_TIMEOUT]
        events = []
        for ref, node_id, t0 in late:
            del self._checks[ref]
            events.append(self._settle_check(node_id, _failed_check(node_id, f"no answer in {CHECK_TIMEOUT:.0f} s", now - t0)))
        return events

    def wait_for_checks(self) -> None:
        """Run the check of this process's own node (see :meth:`scan_nodes`), then block
        until every running check has finished (or timed out)."""
        import ray

        if self._here is not None:
            node_id, artifacts = self._here
            self._here = None
            self._settle_check(node_id, check_node(artifacts, seed=self._config.seed, node_id=node_id))
        while self._checks:
            done, _ = ray.wait(list(self._checks), num_returns=1, timeout=1.0)
            for ref in done:
                self.handle(ref)
            self.expire_checks()

    def checking(self) -> bool:
        """True while a decoder check runs (or waits to run in this process)."""
        return bool(self._checks) or self._here is not None

    def passed_nodes(self) -> list[str]:
        """Nodes whose last check passed."""
        return [n for n, node in self._nodes.items() if node.passed]

    # workers ------------------------------------------------------------------------------

    def new_actor(self, node_id: str) -> Any:
        """A worker actor pinned to ``node_id`` (not yet holding the baseline)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray_opts = self._config.ray
        cls = ray.remote(TrialWorker).options(  # type: ignore[attr-defined]
            num_cpus=ray_opts.cpus_per_worker,
            num_gpus=ray_opts.gpus_per_worker,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        latency = self._config.latency
        actor = cls.remote(self._config.workload, self._plan, self._search_path, max(1, int(ray_opts.cpus_per_worker)),
                           self._config.device,
                           LatencyOptions(latency.enabled, latency.warmup, latency.repeats) if latency.enabled else None)
        self._node_of[actor] = node_id
        self._started.append(actor)
        return actor

    def placement(self, wanted: int, *, checking: bool = False) -> list[str]:
        """Passed nodes with room for ``wanted`` more workers (see :func:`plan_placement`);
        with ``checking``, nodes whose check still runs count too (the baseline's trainer
        starts while the checks run, and becomes a worker only if its node passes)."""
        placed: dict[str, int] = {}
        for node_id in self._node_of.values():
            placed[node_id] = placed.get(node_id, 0) + 1
        capacity = {n: node.capacity for n, node in self._nodes.items()
                    if node.passed or (checking and node.passed is None)}
        return plan_placement(capacity, placed, wanted)

    def node_passed(self, actor: Any) -> bool:
        """True when ``actor``'s node passed its last decoder check."""
        node = self._nodes.get(self._node_of.get(actor, ""))
        return bool(node is not None and node.passed)

    def retire(self, actor: Any) -> None:
        """Kill a worker that is not to run trials (its node failed the check)."""
        import ray

        node_id = self._node_of.pop(actor, "?")
        logger.info("retiring a worker on node %s: the node failed the decoder check", node_id[:8])
        ray.kill(actor, no_restart=True)  # as kill_all does: a dead actor is no error

    def set_baseline(self, blob_ref: Any, accuracy: float) -> None:
        """The baseline every worker loads: an object ref of its artifact, and its score."""
        self._baseline = (blob_ref, accuracy)

    def load(self, actor: Any) -> None:
        """Have ``actor`` (from :meth:`new_actor`) load the baseline; it becomes idle when done."""
        if self._baseline is None:
            raise RuntimeError("set_baseline must be called before load")
        self._starting[actor.load_baseline.remote(*self._baseline)] = actor

    def prestart(self, *, checking: bool = False, limit: int | None = None) -> int:
        """Start workers before they can load the baseline (while it trains, or while the
        decoder checks run), so that they have imported the workload by the time
        :meth:`fill` has them load it. With ``checking``, nodes whose check still runs get
        workers too; :meth:`fill` retires those whose node then failed. ``limit``: at most
        this many (:meth:`fill` starts the rest). Returns how many were started."""
        wanted = self._config.workers - len(self._node_of)
        targets = self.placement(wanted if limit is None else min(wanted, limit), checking=checking)
        for node_id in targets:
            self._unloaded.append(self.new_actor(node_id))
        if targets:
            logger.info("starting %d worker(s) on %s ahead of the baseline", len(targets),
                        ", ".join(sorted({n[:8] for n in targets})))
        return len(targets)

    def fill(self) -> int:
        """Start workers on passed nodes until the pool has ``workers`` (needs the baseline);
        workers from :meth:`prestart` load it first, or are retired if their node failed."""
        if self._baseline is None:
            return 0
        for actor in self._unloaded:
            if actor not in self._node_of:  # retired meanwhile
                continue
            if self.node_passed(actor):
                self.load(actor)
            else:
                self.retire(actor)
        self._unloaded.clear()
        targets = self.placement(self._config.workers - len(self._node_of))
        for node_id in targets:
            self.load(self.new_actor(node_id))
        if targets:
            logger.info("starting %d worker(s) on %s", len(targets), ", ".join(sorted({n[:8] for n in targets})))
        return len(targets)

    def take_idle(self) -> Any | None:
        """An idle worker, now busy, or None."""
        return self._idle.pop() if self._idle else None

    def release(self, actor: Any) -> None:
        """A busy worker finished its work and is idle again (a loop that keeps several
        calls in flight per worker releases it once per free slot)."""
        self._idle.append(actor)

    def lose(self, actor: Any) -> None:
        """Drop a dead worker from the books (its node may take a replacement)."""
        logger.warning("worker on node %s died", self._node_of.get(actor, "?")[:8])
        self._node_of.pop(actor, None)
        self._where.pop(actor, None)
        self._idle = [a for a in self._idle if a != actor]  # every free slot it had

    def where(self, actor: Any) -> dict[str, Any]:
        """What a started worker reported: node id, host, pid ({} when unknown)."""
        return self._where.get(actor, {})

    def live_count(self) -> int:
        """Workers idle, busy or starting."""
        return len(self._node_of)

    def kill_all(self) -> None:
        """Stop every actor this pool started (again: nothing)."""
        import ray

        started, self._started = self._started, []
        for actor in started:
            ray.kill(actor, no_restart=True)

    # events -------------------------------------------------------------------------------

    def pending(self) -> list[Any]:
        """Refs of the pool's own work in flight (checks, workers loading the baseline)."""
        return [*self._checks, *self._starting]

    def owns(self, ref: Any) -> bool:
        """True when ``ref`` came from :meth:`pending`."""
        return ref in self._checks or ref in self._starting

    def handle(self, ref: Any) -> PoolEvent:
        """Settle a finished ref of :meth:`pending`: record a check, or admit a started worker."""
        import ray

        if ref in self._checks:
            node_id, _ = self._checks.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as e:
                row = _failed_check(node_id, f"the check task failed: {short_error(e)}", 0.0)
            return self._settle_check(node_id, row)
        actor = self._starting.pop(ref)
        try:
            self._where[actor] = ray.get(ref)
        except ray.exceptions.RayError as e:
            logger.warning("a worker failed to start: %s", short_error(e))
            self._node_of.pop(actor, None)
            return WorkerFailedToStart(e)
        self._idle.append(actor)
        logger.debug("worker %s ready", self._where[actor])
        return WorkerStarted(actor)
