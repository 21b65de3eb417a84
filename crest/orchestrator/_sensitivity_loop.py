"""The sensitivity measurement: one job per layer, each pruned alone at every sparsity."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from crest.exceptions import SweepError
from crest.orchestrator._events import JobDone, JobFailed, WorkerDied, WorkerFailedToStart
from crest.orchestrator._loop import EventLoop, RunContext
from crest.orchestrator._pool import short_error
from crest.orchestrator._reports import Progress

__all__ = ["SensitivityLoop"]

logger = logging.getLogger(__name__)

Points = list[tuple[float, float, float]]  # (sparsity, accuracy, accuracy drop vs the baseline)


@dataclass
class _LayerJob:
    layer: str
    actor: Any


class SensitivityLoop(EventLoop):
    """Measures every layer of ``layers`` on the pool and records each table row.

    Args:
        ctx: the set-up run; the table goes to its store, progress after each layer.
        layers: parameter names, measured in this order.
        sparsities: fractions of zeros, each in [0, 1).
        max_retries: re-runs of a layer whose worker died.
    """

    def __init__(self, ctx: RunContext, *, layers: list[str], sparsities: list[float], max_retries: int) -> None:
        super().__init__(ctx)
        self.store, self.info = ctx.store, ctx.info
        self.layers, self.sparsities, self.max_retries = layers, sparsities, max_retries
        self.on_progress, self.t0 = ctx.on_progress, ctx.t0
        self.todo = list(reversed(layers))
        self.attempts: dict[str, int] = {}
        self.table: dict[str, Points] = {}

    def measure(self) -> dict[str, Points]:
        """Run to the end; layer -> its points, in the order of ``layers``."""
        self.run()
        return {layer: self.table[layer] for layer in self.layers}

    def finished(self) -> bool:
        return not self.todo and not self.jobs

    def dispatch(self) -> None:
        while self.todo:
            actor = self.pool.take_idle()
            if actor is None:
                return
            layer = self.todo.pop()
            self.submit(actor.sensitivity.remote(layer, self.sparsities), _LayerJob(layer, actor))

    def idle(self) -> None:
        if self.pool.live_count() == 0:
            raise SweepError("no worker is left to measure sensitivity")
        super().idle()

    def on_job_done(self, event: JobDone) -> None:
        job: _LayerJob = event.job
        base = float(self.info.baseline_accuracy)  # type: ignore[arg-type]
        points = [(float(sp), float(acc), base - float(acc)) for sp, acc in zip(self.sparsities, event.value, strict=True)]
        self.store.record_sensitivity(self.info.id, job.layer, points)
        self.table[job.layer] = points
        self.pool.release(job.actor)
        logger.info("sensitivity of %s measured", job.layer)
        self.on_progress(
            Progress(
                self.info.name, self.info.n_trials, elapsed=time.monotonic() - self.t0,
                message=f"sensitivity: {len(self.table)}/{len(self.layers)} layers measured",
            )
        )

    def on_worker_died(self, event: WorkerDied) -> None:
        job: _LayerJob = event.job
        self.attempts[job.layer] = self.attempts.get(job.layer, 0) + 1
        if self.attempts[job.layer] > self.max_retries:
            raise SweepError(f"sensitivity of {job.layer}: the worker died ({short_error(event.error)})") from event.error
        logger.warning("sensitivity of %s: the worker died; measuring it again", job.layer)
        self.pool.lose(job.actor)
        self.pool.fill()
        self.todo.append(job.layer)

    def on_job_failed(self, event: JobFailed) -> None:
        raise SweepError(f"sensitivity of {event.job.layer} failed: {short_error(event.error)}") from event.error

    def on_worker_failed_to_start(self, event: WorkerFailedToStart) -> None:
        raise SweepError(f"a worker failed to start: {short_error(event.error)}") from event.error
