"""Read-side queries shared by the CLI: a study's status and its best trials."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from crest.exceptions import StorageError
from crest.storage._engine import error_line
from crest.storage._store import Store, StudyInfo, TrialRecord

__all__ = ["study_status", "trial_state_counts", "max_drop_of", "pareto_front"]


# Optuna's RDB schema (optuna/storages/_rdb/models.py): a trial's state is stored as the
# name of its TrialState; tests/storage checks these names against the installed Optuna.
_OPTUNA_STATES = text(
    "SELECT t.state, count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
    "WHERE s.study_name = :name GROUP BY t.state"
)


def trial_state_counts(store: Store, study_name: str) -> dict[str, int]:
    """Optuna's trial counts per state (COMPLETE, RUNNING, FAIL, WAITING, PRUNED).

    Read with plain SQL from Optuna's ``trials`` and ``studies`` tables, so that a reader
    never has Optuna create its tables (zeros when they do not exist yet).

    Raises:
        StorageError: the database cannot be read.
    """
    counts = {"COMPLETE": 0, "RUNNING": 0, "FAIL": 0, "WAITING": 0, "PRUNED": 0}
    try:
        if not inspect(store.engine).has_table("trials"):
            return counts
        with store.engine.connect() as conn:
            rows = conn.execute(_OPTUNA_STATES, {"name": study_name}).all()
    except SQLAlchemyError as e:
        raise StorageError(f"cannot read Optuna's trials: {error_line(e)}") from e
    for state, n in rows:
        name = getattr(state, "name", str(state))  # a driver may hand back the enum type
        counts[name] = counts.get(name, 0) + int(n)
    return counts


def max_drop_of(info: StudyInfo) -> float:
    """The study's accuracy-drop constraint from its stored sweep."""
    return info.config.constraints.max_accuracy_drop


def study_status(store: Store, info: StudyInfo, *, lease_ttl: float) -> dict[str, Any]:
    """The object printed by ``crest status --json``."""
    counts = trial_state_counts(store, info.name)
    max_drop = max_drop_of(info)
    best = store.best(info.id, max_drop=max_drop, top=1)
    alive = store.driver_alive(info, ttl=lease_ttl)
    return {
        "study": info.name,
        "workload": info.workload,
        "n_trials": info.n_trials,
        "complete": counts["COMPLETE"],
        "pruned": counts["PRUNED"],  # stopped early; complete + pruned count toward n_trials
        "running": counts["RUNNING"],
        "failed": counts["FAIL"],
        "waiting": counts["WAITING"],
        "baseline_accuracy": info.baseline_accuracy,
        "max_accuracy_drop": max_drop,
        "best": best[0].as_dict() if best else None,
        "driver": "running" if alive else "stopped",
        "driver_owner": info.lease_owner if alive else None,
        "created_at": info.created_at.isoformat(),
    }


def pareto_front(store: Store, info: StudyInfo, *, max_drop: float) -> list[TrialRecord]:
    """Complete trials within ``max_drop`` that no other such trial beats on both size and
    accuracy (smaller-or-equal size and higher-or-equal accuracy, one strictly), smallest first."""
    candidates = store.best(info.id, max_drop=max_drop)  # size ascending, then accuracy descending
    front: list[TrialRecord] = []
    best_accuracy = float("-inf")
    for t in candidates:
        if t.accuracy is not None and t.accuracy > best_accuracy:
            front.append(t)
            best_accuracy = t.accuracy
    return front


@dataclass(frozen=True)
class BestSelection:
    """What ``crest best`` lists, and why the list is empty when it is.

    Attributes:
        trials: the matching trials, smallest artifact first (or the Pareto front).
        why_none: when ``trials`` is empty, one line saying why (no trial is feasible,
            or none also meets the size/accuracy filters) and naming the closest trial.
        closest: the complete trial nearest to meeting every limit, when none meets them.
    """

    trials: list[TrialRecord]
    why_none: str | None = None
    closest: TrialRecord | None = None


def size_accuracy_front(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Trials no other one beats on both size and accuracy, smallest first.

    A trial is on the front when every smaller one is less accurate; of equal sizes the
    most accurate (then the earliest) stands for them.
    """
    ranked = sorted(
        (t for t in trials if t.size_bytes is not None and t.accuracy is not None),
        key=lambda t: (t.size_bytes, -t.accuracy, t.number),  # type: ignore[operator]
    )
    front: list[TrialRecord] = []
    for t in ranked:
        if not front or t.accuracy > front[-1].accuracy:  # type: ignore[operator]
            front.append(t)
    return front


def select_best(
    store: Store,
    info: StudyInfo,
    *,
    max_drop: float,
    max_size: int | None = None,
    min_accuracy: float | None = None,
    pareto: bool = False,
    top: int | None = None,
) -> BestSelection:
    """Complete trials within every limit, smallest artifact first (or their Pareto front).

    Args:
        max_drop: accuracy drop allowed, in the workload's metric (the feasibility limit).
        max_size: largest artifact allowed, in bytes.
        min_accuracy: lowest accuracy allowed, in the workload's metric.
        pareto: keep only the size/accuracy Pareto front of the matching trials.
        top: keep at most this many.
    """
    complete = [
        t for t in store.trials(info.id, state="COMPLETE")
        if t.size_bytes is not None and t.accuracy is not None and t.accuracy_drop is not None
    ]
    limits = _Limits(max_drop, max_size, min_accuracy)
    matching = sorted(
        (t for t in complete if not limits.misses(t)),
        key=lambda t: (t.size_bytes, -t.accuracy, t.number),  # type: ignore[operator]
    )
    if pareto:
        matching = size_accuracy_front(matching)
    if matching:
        return BestSelection(matching[:top] if top is not None else matching)
    if not complete:
        failed = store.count_trials(info.id).get("FAIL", 0)
        return BestSelection([], f"study '{info.name}' has no complete trial yet"
                             + (f" ({failed} failed)" if failed else ""))
    closest = min(complete, key=lambda t: limits.distance(t))
    feasible = sum(1 for t in complete if not limits.misses_drop(t))
    if feasible == 0:
        why = f"no trial is feasible: none of the {len(complete)} complete trials has {limits.describe()[0]}"
    else:
        why = (
            f"no trial matches: {feasible} of the {len(complete)} complete trials have {limits.describe()[0]}, "
            f"none of them also {' and '.join(limits.describe()[1:])}"
        )
    return BestSelection([], f"{why}; closest: {limits.explain(closest)}", closest)


@dataclass(frozen=True)
class _Limits:
    max_drop: float
    max_size: int | None
    min_accuracy: float | None

    def describe(self) -> list[str]:
        """The limits as words, the feasibility limit first."""
        words = [f"accuracy drop <= {self.max_drop:g}"]
        if self.max_size is not None:
            words.append(f"size <= {self.max_size:,} bytes")
        if self.min_accuracy is not None:
            words.append(f"accuracy >= {self.min_accuracy:g}")
        return words

    def misses_drop(self, t: TrialRecord) -> bool:
        """Whether ``t`` is over the accuracy-drop limit (infeasible)."""
        return t.accuracy_drop is not None and t.accuracy_drop > self.max_drop

    def misses(self, t: TrialRecord) -> list[tuple[float, str]]:
        """Each limit ``t`` misses: (how far, scaled so that limits compare; the words)."""
        out: list[tuple[float, str]] = []
        drop, size, acc = t.accuracy_drop, t.size_bytes, t.accuracy
        if drop is not None and self.misses_drop(t):
            # accuracy shortfalls count in points of the metric, sizes in parts of the limit
            out.append(((drop - self.max_drop) * 100, f"drop {drop:+.4f} is {drop - self.max_drop:.4f} over {self.max_drop:g}"))
        if self.max_size is not None and size is not None and size > self.max_size:
            out.append(((size - self.max_size) / self.max_size,
                        f"{size:,} bytes is {size - self.max_size:,} over {self.max_size:,}"))
        if self.min_accuracy is not None and acc is not None and acc < self.min_accuracy:
            out.append(((self.min_accuracy - acc) * 100,
                        f"accuracy {acc:.4f} is {self.min_accuracy - acc:.4f} under {self.min_accuracy:g}"))
        return out

    def distance(self, t: TrialRecord) -> tuple[int, float, int]:
        """Fewest limits missed first, then the smallest shortfall, then the earliest trial."""
        missed = self.misses(t)
        return len(missed), sum(m[0] for m in missed), t.number

    def explain(self, t: TrialRecord) -> str:
        """``trial 7 (12,345 bytes, 54.3x, accuracy 0.9290, drop +0.0130): drop ... over ...``."""
        shown = (
            f"trial {t.number} ({t.size_bytes:,} bytes, {t.ratio or 0:.1f}x, accuracy {t.accuracy:.4f}, "
            f"drop {t.accuracy_drop:+.4f})"
        )
        return f"{shown}: {'; '.join(m[1] for m in self.misses(t))}"
