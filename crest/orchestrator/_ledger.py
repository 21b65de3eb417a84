"""The study's trials on both sides: Optuna's study and crest's trial rows.

:class:`TrialLedger` asks Optuna for a trial (:meth:`~TrialLedger.ask`) and is the one
place that records how a trial ended (:meth:`~TrialLedger.complete`,
:meth:`~TrialLedger.fail`, :meth:`~TrialLedger.recover`). crest's row, the artifact and
Optuna's end of the trial commit in one transaction, so Optuna never holds a result that
crest's row lacks; a row left untold (by a crest that told Optuna in a second commit) is
told by :meth:`~TrialLedger.recover`. A trial stopped early (:meth:`~TrialLedger.prune`) is recorded the same way, as PRUNED; the
scores it reported while retraining are written to Optuna as they come
(:meth:`~TrialLedger.report`), before any decision that reads them is recorded.

A finished trial's Optuna rows (its results, its constraint values, its end state and
objective values) are written in the same transaction as crest's row, so the trial is
recorded and told in one commit, and a new trial is created in one more; both go through
crest's engine (on SQLite: WAL, ``synchronous=NORMAL``: a commit survives the process
being killed). The ledger keeps the study's trial counts and its best feasible trial up to date from what it
records (it is the study's only writer, under the lease), reading them from the database
only when it starts and after :meth:`~TrialLedger.recover`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from crest.config import SweepConfig
from crest.orchestrator._optuna_private import (
    end_trial,
    insert_running_trial,
    optuna_study_id,
    set_intermediate_value,
    trial_id,
    write_trial_attrs,
)
from crest.orchestrator._sampler_view import SamplerView
from crest.orchestrator._space import CONSTRAINT_ATTR, objective_values, suggest
from crest.orchestrator._stopping import Stop, pruned_constraint
from crest.storage import Store, StudyInfo, TrialRecord, retry_transient
from crest.storage._artifacts import register_artifact, register_artifact_sha
from crest.tasks import SizeReport, TrialOutcome, TrialPlan

__all__ = ["TrialJob", "TrialLedger", "finished", "ATTEMPT_ATTR", "RETRY_OF_ATTR", "SEED_ATTR", "PRUNED_REASON_ATTR", "trial_seed"]

logger = logging.getLogger(__name__)

ATTEMPT_ATTR = "crest_attempt"
RETRY_OF_ATTR = "crest_retry_of"
SEED_ATTR = "crest_seed"
PRUNED_REASON_ATTR = "pruned_reason"  # a stopped trial's reason, shown by optuna-dashboard
SIZE_BOUNDS_ATTR = "size_bounds"  # [low, high] bytes a trial reported before retraining
T = TypeVar("T")

# a prime stride, so (study seed, trial number) pairs of small studies never share a seed
TRIAL_SEED_STRIDE = 100_003


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number``'s first attempt (retries keep it)."""
    return study_seed * TRIAL_SEED_STRIDE + number


@dataclass
class Best:
    """The smallest complete trial within the accuracy constraint (bytes, ratio, score)."""

    size_bytes: int
    ratio: float | None
    accuracy: float | None


@dataclass
class TrialJob:
    """One attempt of one trial, from Optuna's ask to its record.

    Attributes:
        number: Optuna's trial number.
        trial_id: Optuna's storage id.
        params: every parameter of the plan (fixed and proposed).
        attempt: 1 for a first run; retries of a failed trial count up.
        retry_of: the number of the trial this one re-runs, or None.
        seed: the trial's seed (a retry keeps the original's).
        started: ``time.monotonic()`` at dispatch.
        actor: the Ray worker running it (None for a trial found orphaned).
        size: its size report, once a trial run step by step sent it.
        curve: epoch -> score, as the trial reported them.
        keys: its schedule of retraining epochs (for early stopping).
        busy: seconds its worker has spent on it so far.
    """

    number: int
    trial_id: int
    params: dict[str, Any]
    attempt: int
    retry_of: int | None
    seed: int
    started: float
    actor: Any = None
    size: SizeReport | None = None
    curve: dict[int, float] = field(default_factory=dict)
    keys: list[Any] = field(default_factory=list)
    busy: float = 0.0


def _job(trial: optuna.trial.Trial | optuna.trial.FrozenTrial, params: dict[str, Any], study_seed: int) -> TrialJob:
    attrs = trial.user_attrs
    return TrialJob(
        number=trial.number,
        trial_id=trial_id(trial),
        params=params,
        attempt=int(attrs.get(ATTEMPT_ATTR, 1)),
        retry_of=attrs.get(RETRY_OF_ATTR),
        seed=int(attrs.get(SEED_ATTR, trial_seed(study_seed, trial.number))),
        started=time.monotonic(),
    )


def node_label(node: dict[str, Any]) -> str | None:
    """``host/node-id-prefix`` of what a worker reported, or None when unknown."""
    if not node:
        return None
    node_id = node.get("node_id") or ""
    return f"{node.get('host')}/{node_id[:8]}" if node_id else str(node.get("host"))


def finished(counts: dict[TrialState, int]) -> int:
    """Trials that count toward ``n_trials``: complete and pruned (failed ones run again)."""
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


class TrialLedger:
    """Asks Optuna for trials and records how they end, in crest's rows and in Optuna.

    Every database round trip is retried through transient failures for up to
    ``retry_budget`` seconds, holding what it writes (a finished trial's bytes) in memory.

    Args:
        store: crest's database.
        study: the Optuna study (in the same database).
        info: crest's study row.
        config: the sweep.
        retry_budget: seconds one operation may keep retrying a failing database.
    """

    def __init__(
        self, store: Store, study: optuna.Study, info: StudyInfo, config: SweepConfig, *, retry_budget: float = 120.0
    ) -> None:
        self.store = store
        self.study = study
        self.info = info
        self.config = config
        self.retry_budget = retry_budget
        self.tally: dict[TrialState, int] = dict.fromkeys(TrialState, 0)
        self.best: Best | None = None
        self.view = SamplerView(study, window=config.sampler_window)
        self.refresh()

    def refresh(self) -> None:
        """Read the study's counts, best feasible trial and sampler view from the database."""
        self.tally = self.counts()
        self._db("reading the trials", self.view.load)
        best = self.best_feasible()
        self.best = None if best is None else Best(
            int(best.user_attrs.get("size_bytes", 0)), best.user_attrs.get("ratio"), best.user_attrs.get("accuracy")
        )

    def _moved(self, before: TrialState | None, after: TrialState | None) -> None:
        """One trial changed state (None: not a trial of the study)."""
        if before is not None:
            self.tally[before] = max(0, self.tally[before] - 1)
        if after is not None:
            self.tally[after] += 1

    def _db(self, what: str, fn: Callable[[], T]) -> T:
        return retry_transient(fn, what=what, budget=self.retry_budget)

    # asking ---------------------------------------------------------------------------------

    def ask(self, plan: TrialPlan) -> TrialJob:
        """The next trial: a queued retry first (Optuna serves those), else a new proposal
        of the sampler's in-memory view, created in the database in one commit."""
        if not self.tally[TrialState.WAITING]:
            tid, number, params = self._db("asking Optuna for a trial", lambda: self.view.ask(plan, self._create))
            self._moved(None, TrialState.RUNNING)
            seed = trial_seed(self.config.seed, number)
            return TrialJob(number, tid, params, attempt=1, retry_of=None, seed=seed, started=time.monotonic())
        trial = self._db("asking Optuna for a trial", self.study.ask)
        # suggesting a parameter that is set already returns it, so this part may run again
        params = self._db(f"proposing the parameters of trial {trial.number}", lambda: suggest(trial, plan))
        self._db("reading the trial", lambda: self.view.started(trial))
        job = _job(trial, params, self.config.seed)
        self._moved(TrialState.WAITING, TrialState.RUNNING)
        if job.attempt > 1:
            logger.info("trial %d re-runs trial %s (attempt %d)", job.number, job.retry_of, job.attempt)
        return job

    def _create(self, params: dict[str, Any], distributions: dict[str, Any]) -> tuple[int, int]:
        """A new RUNNING Optuna trial holding ``params``, in one commit fenced on the lease."""
        with self.store.session() as s:
            self.store.check_fence(s)
            return insert_running_trial(s, optuna_study_id(self.study), params, distributions)

    # recording ------------------------------------------------------------------------------

    def _record(self, job: TrialJob, state: str, node: dict[str, Any], **result: Any) -> None:
        """crest's row of a finished trial (``also=``: more rows of the same transaction)."""
        self.store.record_trial(
            self.info.id,
            optuna_trial_id=job.trial_id,
            number=job.number,
            state=state,
            params=job.params,
            attempt=job.attempt,
            retry_of=job.retry_of,
            node=node_label(node),
            **result,
        )

    def _complete_attrs(
        self, job: TrialJob, *, size_bytes: int, accuracy: float, drop: float, ratio: float
    ) -> tuple[dict[str, Any], list[float]]:
        """A complete trial's Optuna user attributes and constraint values."""
        constraint = [drop - self.config.constraints.max_accuracy_drop]
        attrs: dict[str, Any] = {
            CONSTRAINT_ATTR: constraint,
            "accuracy": accuracy,
            "accuracy_drop": drop,
            "size_bytes": size_bytes,
            "ratio": ratio,
        }
        if job.size is not None:  # what the trial reported before retraining
            attrs[SIZE_BOUNDS_ATTR] = [job.size.low, job.size.high]
        return attrs, constraint

    def _write_attrs(
        self, job: TrialJob, attrs: dict[str, Any], constraint: list[float], artifact_sha256: str | None = None
    ) -> None:
        """Write a trial's Optuna attributes (and list its stored artifact in Optuna's
        artifact metadata) in a transaction of their own (fenced on the lease)."""
        with self.store.session() as s:
            self.store.check_fence(s)
            write_trial_attrs(s, job.trial_id, attrs, constraint)
            if artifact_sha256 is not None:
                register_artifact_sha(s, job.trial_id, artifact_sha256, filename=f"trial-{job.number}.crest")

    def complete(self, job: TrialJob, node: dict[str, Any], out: TrialOutcome) -> None:
        """Record a finished trial with its artifact, its Optuna attributes, its end state
        and objective values, in one transaction (the seconds it took are logged)."""
        t0 = time.perf_counter()
        values = objective_values(self.config, out.size_bytes, out.accuracy, out.details)
        attrs, constraint = self._complete_attrs(
            job, size_bytes=out.size_bytes, accuracy=out.accuracy, drop=out.accuracy_drop, ratio=out.ratio
        )
        def optuna_rows(s: Session) -> None:
            write_trial_attrs(s, job.trial_id, attrs, constraint, replace=False)
            register_artifact(s, job.trial_id, out.blob, filename=f"trial-{job.number}.crest")
            end_trial(s, job.trial_id, TrialState.COMPLETE, values)

        self._db(f"recording trial {job.number}", lambda: self._record(
            job, "COMPLETE", node,
            blob=out.blob, accuracy=out.accuracy, accuracy_drop=out.accuracy_drop, ratio=out.ratio,
            layers=out.layers, wall_seconds=out.seconds, transport_bytes=out.transport_bytes,
            device=out.device, details=out.details or None, also=optuna_rows,
        ))
        self.view.finished(job.trial_id, TrialState.COMPLETE, values, constraint)
        self._moved(TrialState.RUNNING, TrialState.COMPLETE)
        if constraint[0] <= 0 and (self.best is None or out.size_bytes < self.best.size_bytes):
            self.best = Best(out.size_bytes, out.ratio, out.accuracy)
        logger.info("trial %d complete: %.1fx, accuracy %.4f", job.number, out.ratio, out.accuracy)
        logger.debug("trial %d recorded in %.4f s", job.number, time.perf_counter() - t0)

    def report(self, job: TrialJob, step: int, score: float) -> None:
        """Write a running trial's score after epoch ``step`` to Optuna (its intermediate value)."""
        self._db(f"recording a score of trial {job.number}",
                 lambda: set_intermediate_value(self.study, job.trial_id, step, score))

    def prune(self, job: TrialJob, node: dict[str, Any], stop: Stop) -> None:
        """Record a trial stopped early as PRUNED, with its size and the reason, and end it in
        Optuna in the same transaction (after its scores: :meth:`report` them first)."""
        low = job.size.low if job.size is not None else None
        ratio = self._ratio(low)
        attrs, constraint = self._pruned_attrs(job, size_bytes=low, ratio=ratio, reason=stop.reason, curve=job.curve)
        def optuna_rows(s: Session) -> None:
            write_trial_attrs(s, job.trial_id, attrs, constraint, replace=False)
            end_trial(s, job.trial_id, TrialState.PRUNED)

        self._db(f"recording trial {job.number}", lambda: self._record(
            job, "PRUNED", node, size_bytes=low, ratio=ratio, wall_seconds=job.busy, reason=stop.reason,
            also=optuna_rows,
        ))
        self.view.finished(job.trial_id, TrialState.PRUNED, constraint=constraint, curve=job.curve)
        self._moved(TrialState.RUNNING, TrialState.PRUNED)
        logger.info("trial %d pruned: %s", job.number, stop.reason)

    def _ratio(self, size: int | None) -> float | None:
        dense = self.info.dense_bytes
        return dense / size if dense and size else None

    def _pruned_attrs(
        self, job: TrialJob, *, size_bytes: int | None, ratio: float | None, reason: str | None,
        curve: dict[int, float],
    ) -> tuple[dict[str, Any], list[float]]:
        """A stopped trial's Optuna user attributes and constraint values."""
        constraint = [pruned_constraint(curve, baseline_accuracy=float(self.info.baseline_accuracy or 0.0),
                                        max_drop=self.config.constraints.max_accuracy_drop)]
        attrs: dict[str, Any] = {
            CONSTRAINT_ATTR: constraint, "size_bytes": size_bytes, "ratio": ratio, PRUNED_REASON_ATTR: reason,
        }
        if job.size is not None:
            attrs[SIZE_BOUNDS_ATTR] = [job.size.low, job.size.high]
        return attrs, constraint

    def fail(
        self, job: TrialJob, node: dict[str, Any], error: str, *, retry: bool, count_attempt: bool = True
    ) -> None:
        """Record a failed trial, fail it in Optuna, and queue its parameters again when
        ``retry`` and trials are still needed (as the next attempt, unless not
        ``count_attempt``: an interrupted trial keeps its attempt)."""
        seconds = time.monotonic() - job.started
        self._db(f"recording trial {job.number}", lambda: self._record(
            job, "FAIL", node, wall_seconds=seconds, error=error,
            also=lambda s: end_trial(s, job.trial_id, TrialState.FAIL),
        ))
        self.view.finished(job.trial_id, TrialState.FAIL)
        self._moved(TrialState.RUNNING, TrialState.FAIL)
        # an interrupted trial is no failure of its own: it runs again on resume
        logger.log(logging.WARNING if count_attempt else logging.INFO,
                   "trial %d failed (attempt %d): %s", job.number, job.attempt, error)
        if retry and self.retry_room() > 0:
            self._db(f"queueing trial {job.number} again",
                     lambda: self._enqueue_retry(job, job.attempt + (1 if count_attempt else 0)))
            self._moved(None, TrialState.WAITING)

    def recover(self) -> None:
        """Settle trials left RUNNING by a driver that died, or by a write that failed after
        its commit (the caller holds the lease and has no trial in flight)."""
        self._db("settling trials left running", self._recover)
        self.refresh()

    def _recover(self) -> None:
        retries: list[TrialJob] = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = _job(t, dict(t.params), self.config.seed)
            record = self.store.trial_by_optuna_id(job.trial_id)
            if record is not None and record.state in ("COMPLETE", "PRUNED"):
                logger.info("trial %d was recorded but not told to Optuna; telling it now", t.number)
                self._tell_recorded(job, record, dict(t.intermediate_values))
                continue
            logger.warning("trial %d was running when its driver stopped; failing it", t.number)
            if record is None:
                self._record(job, "FAIL", {}, error="the driver stopped while the trial ran")
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if job.attempt <= self.config.max_retries:
                retries.append(job)
        # queue retries once every orphan is settled: an orphan not yet settled would
        # count as running and could crowd out another's retry
        self.tally = self.counts()  # what retry_room reads, now that every orphan is settled
        for job in retries[: max(0, self.retry_room())]:
            self._enqueue_retry(job, job.attempt + 1)

    def _tell_recorded(self, job: TrialJob, record: TrialRecord, curve: dict[int, float]) -> None:
        """Tell Optuna how a trial ended from crest's row (its scores are in Optuna already).

        Its attributes are written again first: a row recorded before they shared its
        transaction (an older crest) has none."""
        if record.state == "PRUNED":
            attrs, constraint = self._pruned_attrs(
                job, size_bytes=record.size_bytes, ratio=record.ratio, reason=record.reason, curve=curve
            )
            self._write_attrs(job, attrs, constraint)
            self.study.tell(job.number, state=TrialState.PRUNED, skip_if_finished=True)
            return
        size, accuracy = int(record.size_bytes or 0), float(record.accuracy or 0.0)
        attrs, constraint = self._complete_attrs(
            job, size_bytes=size, accuracy=accuracy, drop=float(record.accuracy_drop or 0.0),
            ratio=float(record.ratio or 0.0),
        )
        self._write_attrs(job, attrs, constraint, record.artifact_sha256)
        self.study.tell(job.number, objective_values(self.config, size, accuracy, record.details),
                        skip_if_finished=True)

    def _enqueue_retry(self, job: TrialJob, attempt: int) -> None:
        retry_of = job.retry_of if job.retry_of is not None else job.number
        self.study.enqueue_trial(
            job.params, user_attrs={ATTEMPT_ATTR: attempt, RETRY_OF_ATTR: retry_of, SEED_ATTR: job.seed}
        )
        logger.info("queued the parameters of trial %d again (attempt %d)", job.number, attempt)

    # reading --------------------------------------------------------------------------------

    def retry_room(self) -> int:
        """How many failed trials' parameters may still be queued again: ``n_trials`` minus
        the trials finished (complete or pruned), queued and still running (may be
        negative). Queued trials beyond that would stay WAITING after the study finishes,
        e.g. after ``--n-trials`` was lowered or more trials were interrupted than remained
        to run."""
        counts = self.tally
        return self.info.n_trials - finished(counts) - counts[TrialState.WAITING] - counts[TrialState.RUNNING]

    def counts(self) -> dict[TrialState, int]:
        """Optuna's trials per state, read from the database (:attr:`tally` is kept up to date)."""
        counts = dict.fromkeys(TrialState, 0)
        for t in self._db("reading the trials", lambda: self.study.get_trials(deepcopy=False)):
            counts[t.state] += 1
        return counts

    def complete_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Optuna's complete trials, with their parameters, attributes and scores."""
        return self._db("reading the trials", lambda: self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def best_feasible(self) -> optuna.trial.FrozenTrial | None:
        """The smallest complete trial within the accuracy constraint, or None."""
        best = None
        complete = self._db("reading the trials", lambda: self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        for t in complete:
            c = t.user_attrs.get(CONSTRAINT_ATTR)
            if not isinstance(c, list) or c[0] > 0:
                continue
            if best is None or t.user_attrs.get("size_bytes", 0) < best.user_attrs.get("size_bytes", 0):
                best = t
        return best
