"""The sweep: ask Optuna -> run the trial on a worker -> record it -> tell Optuna.

With ``early_stopping``, a trial runs step by step: the worker reports its artifact's
size once the structure is final, then its score after every retraining epoch, and waits
for the next call. The loop asks the :class:`~crest.orchestrator._stopping.StoppingPolicy`
about each report and either sends the next step (before writing the score, so the worker
never waits on the database) or stops the trial: it is recorded as PRUNED and its worker
takes the next trial at once. Complete and pruned trials both count toward ``n_trials``.

Without early stopping a trial is one call, and each worker is kept :data:`ASK_AHEAD`
trials deep: the next trial is asked for and sent while the worker runs the current one
(an actor runs its calls in order), so a worker starts its next trial the moment it
finishes one, and the driver records the finished one meanwhile. A trial sent ahead that
never started is RUNNING in Optuna with no row of crest's: after a kill -9 the next
driver's :meth:`~crest.orchestrator._ledger.TrialLedger.recover` fails it and queues its
parameters again, as it does an interrupted trial. Progress is kept from the events the
loop handles (the ledger's tally), never re-read from the database while the sweep runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from crest.exceptions import SweepError
from crest.orchestrator._events import (
    Event,
    JobDone,
    JobFailed,
    TrialScored,
    TrialSized,
    WorkerDied,
    WorkerFailedToStart,
    WorkerStarted,
)
from crest.orchestrator._ledger import TrialJob, TrialLedger, finished
from crest.orchestrator._loop import EventLoop, RunContext
from crest.orchestrator._pool import short_error
from crest.orchestrator._reports import Progress, SweepSummary
from crest.orchestrator._space import CONSTRAINT_ATTR
from crest.orchestrator._stopping import Stop, StoppingPolicy
from crest.tasks import training_schedule

__all__ = ["SweepLoop"]

logger = logging.getLogger(__name__)

ASK_AHEAD = 2  # trials in flight per worker when a trial is one call: the running one, the next


@dataclass
class SweepState:
    """Counts of this run, beside what the database holds.

    Attributes:
        complete: complete trials of the study (all runs).
        pruned: trials of the study stopped early (all runs).
        completed_now: trials that ended complete or pruned in this run.
        ran: trials dispatched by this run.
        failed: trials (and worker start-ups) that failed in this run.
        no_worker_since: ``time.monotonic()`` since when no worker is alive, or None.
        changed: something happened since the last progress snapshot.
        last: the last snapshot sent (its clock is advanced between snapshots).
    """

    complete: int
    pruned: int = 0
    completed_now: int = 0
    ran: int = 0
    failed: int = 0
    no_worker_since: float | None = None
    changed: bool = True
    last: Progress | None = field(default=None)


class SweepLoop(EventLoop):
    """Runs the study to ``n_trials`` complete trials.

    Args:
        ctx: the set-up run; progress goes to its ``on_progress`` once per step.
        ledger: the study's trials.
    """

    def __init__(self, ctx: RunContext, ledger: TrialLedger) -> None:
        super().__init__(ctx)
        self.ledger = ledger
        self.plan = ctx.plan
        self.on_progress = ctx.on_progress
        self.t0 = ctx.t0
        cfg = ledger.config
        self.n_trials = ledger.info.n_trials
        self.max_failures = cfg.max_failures if cfg.max_failures is not None else max(10, cfg.n_trials)
        counts = ledger.tally
        self.state = SweepState(complete=counts[TrialState.COMPLETE], pruned=counts[TrialState.PRUNED])
        self.policy = self._policy()
        # a trial run step by step waits for the driver between its steps: one per worker
        self.depth = ASK_AHEAD if self.policy is None else 1
        self.queues: dict[Any, list[TrialJob]] = {}  # worker -> its trials in flight, the running one first
        self._handlers.update({TrialSized: self.on_trial_sized, TrialScored: self.on_trial_scored})

    def _policy(self) -> StoppingPolicy | None:
        """The sweep's early stopping, taught every complete trial of the study so far."""
        cfg = self.ledger.config
        if cfg.early_stopping is None:
            return None
        policy = StoppingPolicy(cfg.early_stopping, objectives=cfg.objectives,
                                baseline_accuracy=float(self.ledger.info.baseline_accuracy or 0.0),
                                max_drop=cfg.constraints.max_accuracy_drop)
        fixed = self.plan.fixed_params()
        for t in self.ledger.complete_trials():
            constraint = t.user_attrs.get(CONSTRAINT_ATTR)
            policy.add(
                t.number, size=int(t.user_attrs.get("size_bytes", 0)), accuracy=float(t.user_attrs.get("accuracy", 0.0)),
                feasible=isinstance(constraint, list) and constraint[0] <= 0, curve=dict(t.intermediate_values),
                keys=training_schedule(self.plan, {**fixed, **t.params}),
            )
        return policy

    def sweep(self) -> SweepSummary:
        """Run to the end; on any interruption leave the study resumable, then re-raise."""
        try:
            self.run()
        except BaseException:
            self._abandon()
            raise
        self.ledger.recover()  # a trial whose ask failed after its commit is settled too
        self.on_progress(self.snapshot(message="done"))
        s = self.state
        return SweepSummary(self.ledger.info.name, s.complete, s.failed, s.ran, time.monotonic() - self.t0,
                            pruned=s.pruned)

    def _abandon(self) -> None:
        # Ctrl-C or a bug. A driver that lost its lease touches nothing: the study
        # belongs to the driver that took it over.
        if self.lease.lost.is_set():
            return
        self.ledger.retry_budget = min(self.ledger.retry_budget, 10.0)  # the user is waiting
        try:
            for job in self.jobs.values():
                self.ledger.fail(job, self.pool.where(job.actor), "interrupted: the driver stopped",
                                 retry=True, count_attempt=False)
            # a trial asked for but not yet dispatched, or recorded but not yet told
            self.ledger.recover()
        except Exception:
            # the database may be what failed; the next resume settles these trials
            logger.exception("could not settle the running trials; `crest resume` will")

    # phases -------------------------------------------------------------------------------

    def finished(self) -> bool:
        return self.state.complete + self.state.pruned >= self.n_trials

    def dispatch(self) -> None:
        """Give every worker trials until it has ``depth`` in flight (while trials are needed)."""
        while self.state.complete + self.state.pruned + len(self.jobs) < self.n_trials:
            actor = self.pool.take_idle()
            if actor is None:
                return
            job = self.ledger.ask(self.plan)
            job.actor = actor
            meta = {"study": self.ledger.info.name, "trial": job.number}
            if self.policy is None:
                self.submit(actor.run.remote(job.params, job.seed, meta), job)
            else:
                job.keys = training_schedule(self.plan, job.params)
                self.submit(actor.start.remote(job.params, job.seed, meta, self.policy.wants_scores), job)
            self.queues.setdefault(actor, []).append(job)
            if not self.state.ran:
                logger.info("start-up: the first trial was sent %.2f s after the driver began", time.monotonic() - self.t0)
            self.state.ran += 1
            self.state.changed = True

    def _settled(self, job: TrialJob) -> bool:
        """Take ``job`` off its worker's queue; True when it had started (it was first)."""
        queue = self.queues.get(job.actor, [])
        first = bool(queue) and queue[0] is job
        if job in queue:
            queue.remove(job)
        return first

    def check_workers(self) -> None:
        if self.pool.live_count() or self.pool.checking():
            self.state.no_worker_since = None
            return
        since = self.state.no_worker_since = self.state.no_worker_since or time.monotonic()
        if time.monotonic() - since > self.options.no_worker_timeout:
            raise SweepError(f"no worker is left to run trials; last error: {self.last_error or 'none'}")

    def report(self) -> None:
        s = self.state
        if s.changed or s.last is None:
            s.last = self.snapshot(message=self.last_error)
            s.changed = False
        else:  # nothing happened: only the clock moved; no database round trip
            s.last.elapsed = time.monotonic() - self.t0
            if s.last.eta is not None:
                s.last.eta = max(0.0, s.last.eta - self.options.poll)
        self.on_progress(s.last)

    def snapshot(self, *, message: str = "") -> Progress:
        """Where the study stands, from the ledger's tally (no database read)."""
        info = self.ledger.info
        counts = self.ledger.tally
        done = finished(counts)
        elapsed = time.monotonic() - self.t0
        now = self.state.completed_now
        p = Progress(
            study=info.name,
            n_trials=self.n_trials,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            running=len(self.jobs),
            failed=counts[TrialState.FAIL],
            waiting=counts[TrialState.WAITING],
            baseline_accuracy=info.baseline_accuracy,
            elapsed=elapsed,
            eta=elapsed / now * max(0, self.n_trials - done) if now else None,
            message=message,
        )
        best = self.ledger.best
        if best is not None:
            p.best_size, p.best_ratio, p.best_accuracy = best.size_bytes, best.ratio, best.accuracy
        return p

    # handlers -----------------------------------------------------------------------------

    def route(self, event: Event) -> None:
        super().route(event)
        if not isinstance(event, TrialSized | TrialScored):  # a step changes no count
            self.state.changed = True

    def _count_failure(self, error: str) -> bool:
        """Count a failure of this run; True when there were more than ``max_failures``."""
        self.last_error = error
        self.state.failed += 1
        return self.state.failed > self.max_failures

    def _count_trial_failure(self, error: str) -> None:
        if self._count_failure(error):
            raise SweepError(
                f"{self.state.failed} trials failed in this run (max_failures={self.max_failures}); last: {error}"
            )

    def on_worker_started(self, event: WorkerStarted) -> None:
        """A new worker takes ``depth`` trials: the pool holds it idle once, this adds the rest."""
        for _ in range(self.depth - 1):
            self.pool.release(event.actor)

    def on_job_done(self, event: JobDone) -> None:
        job: TrialJob = event.job
        out = event.value
        self._settled(job)
        self.ledger.complete(job, self.pool.where(job.actor), out)
        self.state.complete += 1
        self.state.completed_now += 1
        self.pool.release(job.actor)
        if self.policy is not None:
            feasible = out.accuracy_drop <= self.ledger.config.constraints.max_accuracy_drop
            self.policy.add(job.number, size=out.size_bytes, accuracy=out.accuracy, feasible=feasible,
                            curve=job.curve, keys=job.keys)

    def on_trial_sized(self, event: TrialSized) -> None:
        """A trial's size is known: stop it if it cannot win, else let it train."""
        job: TrialJob = event.job
        job.size, job.busy = event.report, event.report.seconds
        stop = self.policy.before_training(event.report.low) if self.policy is not None else None
        if stop is None:
            self.submit(job.actor.advance.remote(), job)
        else:
            self._stop(job, stop)

    def on_trial_scored(self, event: TrialScored) -> None:
        """A trial scored after an epoch: the worker goes on (or stops) before the score is written."""
        job: TrialJob = event.job
        r = event.report
        job.curve[r.step], job.busy = r.score, r.seconds
        low = job.size.low if job.size is not None else None
        stop = self.policy.after_epoch(job.keys, r.step, r.score, low=low) if self.policy is not None else None
        if stop is None:
            self.submit(job.actor.advance.remote(), job)
        self.ledger.report(job, r.step, r.score)
        if stop is not None:
            self._stop(job, stop)

    def _stop(self, job: TrialJob, stop: Stop) -> None:
        """Stop a trial: its worker drops it and is free at once; it is recorded as PRUNED."""
        job.actor.drop.remote()  # runs before the worker's next trial (an actor's calls run in order)
        self._settled(job)
        self.pool.release(job.actor)
        self.ledger.prune(job, self.pool.where(job.actor), stop)
        self.state.pruned += 1
        self.state.completed_now += 1
        self.state.changed = True

    def on_worker_died(self, event: WorkerDied) -> None:
        """The worker died: its running trial failed (an attempt); a trial queued behind it
        never started, so it is queued again with its attempt unchanged and counts no failure."""
        job: TrialJob = event.job
        started = self._settled(job)
        where = self.pool.where(job.actor)
        if not started:
            self.ledger.fail(job, where, "interrupted: its worker died before it started", retry=True,
                             count_attempt=False)
            return
        self.queues.pop(job.actor, None)  # what was queued behind it never started (its events follow)
        error = f"trial {job.number}: the worker died ({short_error(event.error)})"
        self.ledger.fail(job, where, error, retry=job.attempt <= self.ledger.config.max_retries)
        self.pool.lose(job.actor)
        self.pool.fill()
        self._count_trial_failure(error)

    def on_job_failed(self, event: JobFailed) -> None:
        job: TrialJob = event.job
        error = f"trial {job.number} failed: {short_error(event.error)}"
        self._settled(job)
        self.ledger.fail(job, self.pool.where(job.actor), error, retry=False)
        self.pool.release(job.actor)
        self._count_trial_failure(error)

    def on_worker_failed_to_start(self, event: WorkerFailedToStart) -> None:
        error = f"a worker failed to start: {short_error(event.error)}"
        if self._count_failure(error):
            raise SweepError(error) from event.error
        self.pool.fill()
