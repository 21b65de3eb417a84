"""One study's results, read once from the database, in the shape the plots and the report use."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from crest.exceptions import ConfigError
from crest.storage import Store, StudyInfo, TrialRecord, max_drop_of, trial_state_counts
from crest.storage._queries import size_accuracy_front

__all__ = ["StudyData", "load_study_data"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyData:
    """A study's trials and tables as stored, with the questions the plots ask of them.

    Attributes:
        info: the study's row.
        trials: every finished trial, in trial-number order.
        max_drop: the study's accuracy-drop limit (feasible: drop <= max_drop).
        config: the stored sweep (parsed JSON).
        counts: Optuna's trial counts per state (COMPLETE, RUNNING, FAIL, WAITING, PRUNED).
        sensitivity: per layer, (sparsity, accuracy, drop) points; empty when never measured.
        node_checks: each node's latest decoder check.
    """

    info: StudyInfo
    trials: list[TrialRecord]
    max_drop: float
    config: dict[str, Any]
    counts: dict[str, int]
    sensitivity: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    node_checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> list[TrialRecord]:
        """Complete trials that have a size and an accuracy."""
        return [
            t for t in self.trials
            if t.state == "COMPLETE" and t.size_bytes is not None and t.accuracy is not None
            and t.accuracy_drop is not None
        ]

    def is_feasible(self, trial: TrialRecord) -> bool:
        """Whether the trial's accuracy drop is within the study's limit."""
        return trial.accuracy_drop is not None and trial.accuracy_drop <= self.max_drop

    @property
    def feasible(self) -> list[TrialRecord]:
        """Complete trials within the accuracy-drop limit, in trial-number order."""
        return [t for t in self.complete if self.is_feasible(t)]

    @property
    def front(self) -> list[TrialRecord]:
        """The size/accuracy Pareto front of the feasible trials, smallest first."""
        return size_accuracy_front(self.feasible)

    @property
    def best(self) -> TrialRecord | None:
        """The smallest feasible trial (then the most accurate), or None."""
        front = self.front
        return front[0] if front else None

    @property
    def objectives(self) -> list[str]:
        """The study's objectives, e.g. ``["size"]`` or ``["size", "accuracy"]``."""
        return [str(o) for o in self.config.get("objectives", ["size"])]

    def trial(self, number: int) -> TrialRecord:
        """The finished trial ``number``.

        Raises:
            ConfigError: no finished trial has that number.
        """
        for t in self.trials:
            if t.number == number:
                return t
        known = f"0..{self.trials[-1].number}" if self.trials else "none yet"
        raise ConfigError(f"--trial {number}: study '{self.info.name}' has no finished trial {number} (trials: {known})")

    def best_ratio_history(self) -> list[tuple[int, float, float]]:
        """After each complete trial, in the order they finished: (complete trials so far,
        wall seconds since the first trial started, best feasible ratio so far), from the
        first feasible trial on."""
        complete = self.complete
        if not complete:
            return []
        start = min(t.finished_at.timestamp() - (t.wall_seconds or 0.0) for t in complete)
        out: list[tuple[int, float, float]] = []
        best = 0.0
        for done, t in enumerate(sorted(complete, key=lambda t: t.finished_at), start=1):
            if self.is_feasible(t) and t.ratio is not None:
                best = max(best, t.ratio)
            if best > 0.0:
                out.append((done, t.finished_at.timestamp() - start, best))
        return out


def load_study_data(store: Store, study: str) -> StudyData:
    """Read everything the plots and the report show of ``study``.

    Raises:
        StorageError: no such study.
    """
    info = store.require_study(study)
    return StudyData(
        info=info,
        trials=store.trials(info.id),
        max_drop=max_drop_of(info),
        config=json.loads(info.config_json),
        counts=trial_state_counts(store, info.name),
        sensitivity=store.sensitivity(info.id),
        node_checks=store.node_checks(info.id),
    )
