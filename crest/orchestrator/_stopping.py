"""Early stopping: which running trials cannot win, judged from the trials that ended.

A compression trial's artifact size is fixed before its retraining (masks, ranks and
bits set it; :class:`crest.tasks.SizeReport` bounds it), so a trial that cannot beat the
best feasible trial on size is stopped before it trains. While it retrains, its score
after every epoch is compared with the scores that complete trials had after the same
epoch of the same round (a percentile of those that ended feasible), and with the best
improvement any of them made from there to its end: a trial that would still end more
than a margin below the accuracy constraint even so is stopped.

:class:`StoppingPolicy` is plain Python: the sweep loop feeds it every complete trial
(those of earlier runs too, read back from the study) and asks it about each report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crest.config import EarlyStopping
from crest.tasks import StepKey

__all__ = ["Stop", "StoppingPolicy", "pruned_constraint"]

logger = logging.getLogger(__name__)

# the constraint value of a trial stopped before any score: no accuracy was measured
UNSCORED_CONSTRAINT = 1.0
# the least constraint value of a stopped trial: always infeasible to Optuna's samplers
MIN_PRUNED_CONSTRAINT = 1e-3


@dataclass(frozen=True)
class Stop:
    """Why a trial is stopped: ``rule`` (size, dominated, percentile, unreachable) and a line."""

    rule: str
    reason: str


@dataclass(frozen=True)
class _Point:
    number: int
    size: int
    accuracy: float


@dataclass(frozen=True)
class _Ref:
    """A complete trial seen from one epoch: its score there and how it went on."""

    score: float
    remaining: int  # epochs it trained after this one
    end: float  # its score after its last epoch
    final: float  # its recorded accuracy (quantized, encoded, decoded)
    feasible: bool


def pruned_constraint(curve: Mapping[int, float], *, baseline_accuracy: float, max_drop: float) -> float:
    """The constraint value (> 0: infeasible) recorded for a stopped trial.

    Optuna's TPE puts infeasible trials with the unpromising ones (a PRUNED trial it
    took as feasible would be ranked by its last intermediate value, and its
    multi-objective split cannot rank PRUNED trials at all). A trial stopped after
    scores ranks by its last drop beyond the limit; one stopped before any, last.
    """
    if not curve:
        return UNSCORED_CONSTRAINT
    last = curve[max(curve)]
    return max(baseline_accuracy - last - max_drop, MIN_PRUNED_CONSTRAINT)


class StoppingPolicy:
    """Decides, from the complete trials seen so far, whether a running trial stops.

    Args:
        config: the sweep's ``early_stopping``.
        objectives: the sweep's objectives (``size``, optionally ``accuracy``).
        baseline_accuracy: the study's dense baseline score.
        max_drop: the accuracy-drop constraint.
    """

    def __init__(
        self, config: EarlyStopping, *, objectives: Sequence[str], baseline_accuracy: float, max_drop: float
    ) -> None:
        self.config = config
        self.pareto = "accuracy" in objectives
        self.baseline = baseline_accuracy
        self.threshold = baseline_accuracy - max_drop  # the least feasible score
        self.margin = config.margin if config.margin is not None else max_drop
        self.feasible: list[_Point] = []
        self.best_accuracy = baseline_accuracy
        self.refs: dict[StepKey, list[_Ref]] = {}

    @property
    def wants_scores(self) -> bool:
        """True when a rule reads the score after every epoch."""
        return self.config.scores_needed()

    def add(
        self,
        number: int,
        *,
        size: int,
        accuracy: float,
        feasible: bool,
        curve: Mapping[int, float],
        keys: Sequence[StepKey],
    ) -> None:
        """Learn from a complete trial: its size and accuracy, and its scores by epoch.

        Args:
            number: the trial's number.
            size: its artifact's bytes.
            accuracy: its recorded accuracy.
            feasible: it met the accuracy constraint.
            curve: epoch (1-based) -> score, as reported.
            keys: its schedule (:func:`crest.tasks.training_schedule`).
        """
        self.best_accuracy = max(self.best_accuracy, accuracy)
        if feasible:
            self.feasible.append(_Point(number, size, accuracy))
        steps = sorted(s for s in curve if 1 <= s <= len(keys))
        if not steps:
            return
        end = curve[steps[-1]]
        for s in steps:
            ref = _Ref(curve[s], steps[-1] - s, end, accuracy, feasible)
            self.refs.setdefault(keys[s - 1], []).append(ref)

    def before_training(self, low: int) -> Stop | None:
        """Stop a trial whose artifact will have at least ``low`` bytes, or None."""
        if not self.config.size_dominated or not self.feasible:
            return None
        if not self.pareto:
            best = min(self.feasible, key=lambda p: (p.size, p.number))
            if low >= best.size:
                return Stop("size", f"size-dominated: at least {low:,} bytes, not below feasible trial "
                                    f"{best.number}'s {best.size:,}")
            return None
        # a compressed model may beat its dense baseline: the best score seen bounds it too
        return self._dominated(low, self.best_accuracy, "at best")

    def after_epoch(self, keys: Sequence[StepKey], step: int, score: float, *, low: int | None) -> Stop | None:
        """Stop a trial that scored ``score`` after epoch ``step`` of its schedule ``keys``, or None.

        Args:
            keys: the trial's schedule.
            step: epochs done (1-based).
            score: its score now.
            low: the least bytes its artifact will have (None when not known yet).
        """
        cfg = self.config
        if step <= cfg.n_warmup_steps or not 1 <= step <= len(keys):
            return None
        refs = self.refs.get(keys[step - 1], [])
        if cfg.percentile is not None:
            feasible = [r.score for r in refs if r.feasible]
            if len(feasible) >= cfg.n_startup_trials:
                bar = float(np.percentile(feasible, cfg.percentile))
                if score < bar:
                    return Stop("percentile", f"score {score:.4f} after epoch {step} is below {bar:.4f}, the "
                                              f"{cfg.percentile:g}th percentile of {len(feasible)} trials that "
                                              "ended feasible")
        if not cfg.unreachable or len(refs) < cfg.n_startup_trials:
            return None
        best = self._best_reachable(refs, score, len(keys) - step)
        if best < self.threshold - self.margin:
            return Stop("unreachable", f"score {score:.4f} after epoch {step} reaches at most {best:.4f} at the "
                                       f"best rate seen, more than {self.margin:g} below the constraint's "
                                       f"{self.threshold:.4f}")
        if self.pareto and low is not None:
            return self._dominated(low, best + self.margin, f"at the best rate seen after epoch {step}, plus "
                                                             f"{self.margin:g}")
        return None

    @staticmethod
    def _best_reachable(refs: Sequence[_Ref], score: float, remaining: int) -> float:
        """``score`` carried to the trial's end at the best rate seen from this epoch, plus
        the best change from the last epoch to the recorded accuracy (quantization)."""
        rates = [(r.end - r.score) / r.remaining for r in refs if r.remaining > 0]
        rate = max(0.0, max(rates, default=0.0))
        tail = max(r.final - r.end for r in refs)
        return score + remaining * rate + tail

    def _dominated(self, low: int, accuracy: float, how: str) -> Stop | None:
        """A feasible trial no larger than ``low`` bytes and at least ``accuracy``, as a Stop."""
        better = [p for p in self.feasible if p.size <= low and p.accuracy >= accuracy]
        if not better:
            return None
        p = min(better, key=lambda q: (q.size, -q.accuracy, q.number))
        return Stop("dominated", f"dominated: at least {low:,} bytes and accuracy {accuracy:.4f} {how}; feasible "
                                 f"trial {p.number} has {p.size:,} bytes and {p.accuracy:.4f}")
