"""The event loop shared by the sweep and the sensitivity measurement.

Shaped like Ray Tune's ``TuneController.step()``: each :meth:`EventLoop.step` runs named
phases (check the lease, look for new nodes, dispatch work to idle workers, report
progress, wait for the next finished ref and route its event to a handler) until
:meth:`EventLoop.finished`. Subclasses say what work is, when it is done, and how its
results are handled; node checks and worker start-ups are handled here.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crest.exceptions import LeaseError
from crest.orchestrator._events import (
    Event,
    JobDone,
    JobFailed,
    NodeChecked,
    WorkerDied,
    WorkerFailedToStart,
    WorkerStarted,
    result_event,
)
from crest.orchestrator._lease import LeaseKeeper
from crest.orchestrator._pool import WorkerPool
from crest.orchestrator._reports import DriverOptions, Progress
from crest.storage import Store, StudyInfo
from crest.tasks import TrialPlan

__all__ = ["EventLoop", "RunContext"]

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a set-up run holds, as the driver hands it to a loop.

    Attributes:
        store: the database.
        info: the study's row (with its baseline).
        plan: the resolved stages.
        pool: the started workers.
        lease: the study's lease keeper.
        artifacts: real artifacts of the study, for decoder checks of nodes that join.
        prunable: the model's prunable parameter names (weights of 2 or more dimensions).
        embeddings: those of them that are embedding tables (measured only when named).
        options: the driver's knobs.
        on_progress: where progress snapshots go.
        t0: ``time.monotonic()`` when the run started.
    """

    store: Store
    info: StudyInfo
    plan: TrialPlan
    pool: WorkerPool
    lease: LeaseKeeper
    artifacts: list[bytes]
    prunable: list[str]
    options: DriverOptions
    on_progress: Callable[[Progress], None]
    t0: float
    embeddings: list[str] = field(default_factory=list)


class EventLoop(ABC):
    """Runs work on the pool of a :class:`RunContext` until :meth:`finished`.

    Args:
        ctx: the set-up run (the loop stops when its lease is lost).

    Attributes:
        jobs: ref -> job (any object with an ``actor`` attribute) for work in flight.
        last_error: the latest failure, shown with progress.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.pool = ctx.pool
        self.lease = ctx.lease
        self.options = ctx.options
        self.jobs: dict[Any, Any] = {}
        self.last_error = ""
        self._handlers: dict[type, Callable[[Any], None]] = {
            NodeChecked: self.on_node_checked,
            WorkerStarted: self.on_worker_started,
            WorkerFailedToStart: self.on_worker_failed_to_start,
            JobDone: self.on_job_done,
            WorkerDied: self.on_worker_died,
            JobFailed: self.on_job_failed,
        }

    # what subclasses define -------------------------------------------------------------

    @abstractmethod
    def finished(self) -> bool:
        """True when the loop has nothing left to do."""

    @abstractmethod
    def dispatch(self) -> None:
        """Start work on idle workers (with :meth:`submit`)."""

    def check_workers(self) -> None:
        """Give up when no worker is left (called once per step, after dispatch)."""

    def report(self) -> None:
        """Tell the user where things stand (called once per step)."""

    @abstractmethod
    def on_job_done(self, event: JobDone) -> None:
        """A job returned."""

    @abstractmethod
    def on_worker_died(self, event: WorkerDied) -> None:
        """The worker of a job died."""

    @abstractmethod
    def on_job_failed(self, event: JobFailed) -> None:
        """A job raised in a live worker."""

    @abstractmethod
    def on_worker_failed_to_start(self, event: WorkerFailedToStart) -> None:
        """A new worker could not start."""

    # the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Step until finished."""
        while not self.finished():
            self.step()

    def step(self) -> None:
        """One turn: lease, nodes, dispatch, workers, report, then the next events to their handlers."""
        self.check_lease()
        self.update_nodes()
        self.dispatch()
        self.check_workers()
        self.report()
        for event in self.next_events():
            self.route(event)

    def check_lease(self) -> None:
        """Stop when another driver took the study over."""
        if self.lease.lost.is_set():
            raise LeaseError(f"lost the lease on study '{self.lease.study}' (another driver took it over); stopping")

    def update_nodes(self) -> None:
        """Check nodes that joined, and fail checks that hang."""
        if self.pool.scan_due(self.options.node_scan):
            self.pool.scan_nodes(self.ctx.artifacts)
        for event in self.pool.expire_checks():
            self.route(event)

    def submit(self, ref: Any, job: Any) -> None:
        """Track a job started on a worker; its result comes back as an event."""
        self.jobs[ref] = job

    def next_events(self) -> list[Event]:
        """Wait up to one poll interval for the next finished ref; its event, or none."""
        import ray

        waitable = [*self.jobs, *self.pool.pending()]
        if not waitable:
            self.idle()
            return []
        done, _ = ray.wait(waitable, num_returns=1, timeout=self.options.poll)
        return [self._event(ref) for ref in done]

    def idle(self) -> None:
        """Nothing is in flight: wait a poll interval and try to start workers again."""
        time.sleep(self.options.poll)
        self.pool.fill()

    def _event(self, ref: Any) -> Event:
        import ray

        if self.pool.owns(ref):
            return self.pool.handle(ref)
        job = self.jobs.pop(ref)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            return WorkerDied(job, e)
        except ray.exceptions.RayTaskError as e:
            return JobFailed(job, e)
        return result_event(job, value)

    def route(self, event: Event) -> None:
        """Hand ``event`` to the handler of its kind."""
        self._handlers[type(event)](event)

    # the pool's events ------------------------------------------------------------------

    def on_node_checked(self, event: NodeChecked) -> None:
        """A node that passed takes workers; a failure is shown with progress."""
        row = event.row
        if not row["passed"]:
            where = row["host"] if row["host"] != "?" else row["node_id"][:8]
            self.last_error = f"node {where}: decoder check failed: {row['reason']}"
        self.pool.fill()

    def on_worker_started(self, event: WorkerStarted) -> None:
        """A new worker is idle; the next dispatch gives it work."""
