"""Read-side queries shared by the CLI: a study's status and its best trials."""

from __future__ import annotations

from typing import Any

from crest.storage._store import Store, StudyInfo, TrialRecord

__all__ = ["study_status", "trial_state_counts", "max_drop_of", "pareto_front"]


def trial_state_counts(store: Store, study_name: str) -> dict[str, int]:
    """Optuna's trial counts per state (COMPLETE, RUNNING, FAIL, WAITING, PRUNED)."""
    storage = store.optuna_storage()
    counts = {"COMPLETE": 0, "RUNNING": 0, "FAIL": 0, "WAITING": 0, "PRUNED": 0}
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return counts
    for t in storage.get_all_trials(study_id, deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def max_drop_of(info: StudyInfo) -> float:
    """The study's accuracy-drop constraint from its stored sweep."""
    return info.config.constraints.max_accuracy_drop


def study_status(store: Store, info: StudyInfo, *, lease_ttl: float) -> dict[str, Any]:
    """The object printed by ``crest status --json``."""
    counts = trial_state_counts(store, info.name)
    max_drop = max_drop_of(info)
    best = store.best(info.id, max_drop=max_drop, top=1)
    alive = info.driver_alive(lease_ttl)
    return {
        "study": info.name,
        "workload": info.workload,
        "n_trials": info.n_trials,
        "complete": counts["COMPLETE"],
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
