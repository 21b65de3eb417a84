"""What a trial reports while it runs, and where in its stages it reports it.

A trial run step by step (:meth:`crest.tasks.TrialRunner.steps`) yields a
:class:`SizeReport` once its artifact's structure is final (masks, ranks and code
widths set) and, when asked, a :class:`ScoreReport` after every retraining epoch. The
driver reads the same plan through :func:`training_schedule` to know which epoch of
which round each score belongs to, so that it compares like with like across trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crest.tasks._plan_types import StagePlan, TrialPlan

__all__ = [
    "ScoreReport",
    "SizeReport",
    "StepKey",
    "iterative_rounds",
    "quantized_bits",
    "size_point",
    "training_schedule",
]

# (retrain stage label, round or 0 for the stage's dense DSD phase, rounds, epoch within it)
StepKey = tuple[str, int, int, int]


@dataclass(frozen=True)
class SizeReport:
    """A trial's artifact size, fixed before its remaining training.

    Attributes:
        low, high: bounds on the final artifact's length in bytes (see
            :func:`crest.tasks.size_bounds`); equal when the structure fixes it exactly.
        steps: retraining epochs the trial runs in all (each may send a score).
        step: epochs already run when the size was fixed.
        seconds: the worker's busy time on this trial so far.
    """

    low: int
    high: int
    steps: int
    step: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ScoreReport:
    """The workload's score (higher is better) of the in-memory model after a retraining epoch.

    Attributes:
        step: 1-based count of the trial's retraining epochs so far.
        score: the score, in the workload's metric.
        steps: retraining epochs the trial runs in all.
        seconds: the worker's busy time on this trial so far.
    """

    step: int
    score: float
    steps: int
    seconds: float = 0.0


def iterative_rounds(stages: tuple[StagePlan, ...], index: int, params: Mapping[str, Any]) -> int:
    """Rounds of the retrain stage at ``index``; they re-prune (iterative pruning) when
    more than one follows a prune stage directly."""
    opts = stages[index].options
    return int(params[opts["rounds"]]) if opts.get("rounds") else 1


def _is_iterative(stages: tuple[StagePlan, ...], index: int, params: Mapping[str, Any]) -> bool:
    return iterative_rounds(stages, index, params) > 1 and index > 0 and stages[index - 1].type == "prune"


def training_schedule(plan: TrialPlan, params: Mapping[str, Any]) -> list[StepKey]:
    """One key per retraining epoch of a trial with ``params``, in the order they run.

    Quantization's centroid fine-tuning is not counted: it ends the trial.
    """
    keys: list[StepKey] = []
    stages = plan.stages
    for i, stage in enumerate(stages):
        if stage.type != "retrain":
            continue
        opts = stage.options
        epochs = int(params[opts["epochs"]])
        rounds = iterative_rounds(stages, i, params)
        keys += [(stage.label, r, rounds, e) for r in range(1, rounds + 1) for e in range(1, epochs + 1)]
        if opts.get("dsd"):
            keys += [(stage.label, 0, rounds, e) for e in range(1, int(params[opts["dsd_epochs"]]) + 1)]
    return keys


def size_point(plan: TrialPlan, params: Mapping[str, Any]) -> tuple[int, bool]:
    """Where a trial's masks are final: ``(stage index, inside)``.

    ``inside`` False: after that stage (-1: before the first); True: inside that retrain
    stage, once its last round of iterative pruning has pruned and before it trains.
    """
    point: tuple[int, bool] | None = None
    stages = plan.stages
    for i, stage in enumerate(stages):
        if stage.type == "prune":
            point = (i, False)
        elif stage.type == "retrain":
            if _is_iterative(stages, i, params):
                point = (i, True)
            if stage.options.get("dsd"):  # the dense phase re-prunes (or a later prune does)
                point = (i, False)
        elif stage.type == "lowrank" and point is None:
            point = (i, False)
    return point if point is not None else (-1, False)


def quantized_bits(plan: TrialPlan, params: Mapping[str, Any]) -> dict[str, int]:
    """Parameter name -> code width of every layer the trial quantizes."""
    bits: dict[str, int] = {}
    for stage in plan.stages:
        if stage.type == "quantize":
            bits.update({layer: int(params[pname]) for layer, (_, pname) in stage.layers.items()})
    return bits
