"""What the driver's loop reacts to: one small type per kind of event.

The pool turns its finished refs into :data:`PoolEvent`; the loop turns the refs of its
own jobs (trials, sensitivity measurements) into :class:`JobDone`, :class:`WorkerDied`
or :class:`JobFailed`, and the steps of a trial run step by step into
:class:`TrialSized` and :class:`TrialScored` (:func:`result_event`).
:meth:`crest.orchestrator._loop.EventLoop.route` hands each to its handler by type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crest.tasks import ScoreReport, SizeReport

__all__ = [
    "Event",
    "JobDone",
    "JobFailed",
    "NodeChecked",
    "PoolEvent",
    "TrialScored",
    "TrialSized",
    "WorkerDied",
    "WorkerFailedToStart",
    "WorkerStarted",
    "result_event",
]


@dataclass(frozen=True)
class NodeChecked:
    """A node's decoder check finished (or timed out); ``row`` is its ``node_checks`` row."""

    row: dict[str, Any]


@dataclass(frozen=True)
class WorkerStarted:
    """A worker loaded the baseline and is idle."""

    actor: Any


@dataclass(frozen=True)
class WorkerFailedToStart:
    """A worker could not be created or could not load the baseline."""

    error: BaseException


@dataclass(frozen=True)
class JobDone:
    """A job returned ``value``."""

    job: Any
    value: Any


@dataclass(frozen=True)
class WorkerDied:
    """The worker running ``job`` died (its node left, it was killed, it ran out of memory)."""

    job: Any
    error: BaseException


@dataclass(frozen=True)
class JobFailed:
    """The job raised inside a live worker."""

    job: Any
    error: BaseException


@dataclass(frozen=True)
class TrialSized:
    """A trial run step by step reported its artifact's size (before retraining)."""

    job: Any
    report: SizeReport


@dataclass(frozen=True)
class TrialScored:
    """A trial run step by step reported its score after a retraining epoch."""

    job: Any
    report: ScoreReport


PoolEvent = NodeChecked | WorkerStarted | WorkerFailedToStart
Event = PoolEvent | JobDone | WorkerDied | JobFailed | TrialSized | TrialScored


def result_event(job: Any, value: Any) -> JobDone | TrialSized | TrialScored:
    """The event of a job's call that returned ``value``: a step's report, or the job's end."""
    if isinstance(value, SizeReport):
        return TrialSized(job, value)
    if isinstance(value, ScoreReport):
        return TrialScored(job, value)
    return JobDone(job, value)
