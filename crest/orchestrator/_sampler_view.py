"""The sampler's view of the study, kept in memory by the driver.

Optuna's ``ask`` and each ``suggest`` read every trial of the study back from the
database (a query per call, more with each trial) and write each parameter in a commit
of its own. The driver is the study's only writer (it holds the lease), so it keeps the
study's finished trials in an in-memory Optuna study and lets the sampler propose there;
the proposal is then created in the database as one RUNNING trial holding all its
parameters, in one commit. Every trial the ledger settles is told to both. Queued trials
(retries) are asked from the database as before, and copied into the view.

The view is rebuilt from the database whenever the ledger reads its state
(:meth:`~crest.orchestrator._ledger.TrialLedger.refresh`: at start, after ``recover``),
so it never holds what the database does not.

A sampler reads every trial it is given on every ``ask``: TPE's cost grows linearly with
the study (about 2 ms at 200 trials, 32 ms at 5,000 on the 2-core machine). With a
``window``, the view holds a bounded set of the study's finished trials (:func:`select`):
the best :data:`BEST_PER_OBJECTIVE` complete trials by each objective (feasible ones
first) and the most recent ones, up to ``window`` in all; it is re-selected whenever it
has grown by a quarter. TPE weights old trials down already and its good set is at most
25 trials, so what it proposes from the window differs little from the whole study
(``bench/sampler_window.py`` measures it); the database keeps every trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from crest.orchestrator._optuna_private import (
    copy_trial,
    frozen_trial,
    set_intermediate_value,
    set_user_attrs,
    trial_id,
)
from crest.orchestrator._space import CONSTRAINT_ATTR, suggest
from crest.tasks import TrialPlan

__all__ = ["SamplerView", "select", "BEST_PER_OBJECTIVE"]

logger = logging.getLogger(__name__)

BEST_PER_OBJECTIVE = 50  # complete trials kept in a bounded view for each objective
_USED = (TrialState.COMPLETE, TrialState.PRUNED)  # what samplers read (failed trials: nothing)


def _violation(t: optuna.trial.FrozenTrial) -> float:
    """How far a trial is from feasible (0 when it is): its constraint values above 0."""
    c = t.user_attrs.get(CONSTRAINT_ATTR)
    if not isinstance(c, list):
        return 0.0
    return float(sum(max(0.0, float(v)) for v in c))


def select(
    trials: list[optuna.trial.FrozenTrial], directions: list[optuna.study.StudyDirection], window: int
) -> list[optuna.trial.FrozenTrial]:
    """The trials a bounded view keeps, in their order in ``trials``.

    Args:
        trials: finished trials, oldest first.
        directions: the study's objective directions.
        window: how many to keep at most (at least ``BEST_PER_OBJECTIVE`` per objective).

    Returns:
        for each objective the best :data:`BEST_PER_OBJECTIVE` complete trials (feasible
        first, then by violation, then by value), then the most recent complete or pruned
        trials, up to ``window`` in all (more only when the best sets alone are more: 3
        objectives and a window under 150); failed trials are not kept.
    """
    used = [(i, t) for i, t in enumerate(trials) if t.state in _USED]
    if len(used) <= window:
        return [t for _, t in used]
    keep: set[int] = set()
    complete = [(i, t) for i, t in used if t.state == TrialState.COMPLETE and t.values is not None]
    for k, direction in enumerate(directions):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(complete, key=lambda it: (_violation(it[1]), sign * it[1].values[k], it[0]))
        keep.update(i for i, _ in ranked[:BEST_PER_OBJECTIVE])
    for i, _ in reversed(used):
        if len(keep) >= window:
            break
        keep.add(i)
    return [t for i, t in used if i in keep]


class SamplerView:
    """An in-memory copy of ``study``'s finished trials that its sampler proposes from.

    Args:
        study: the Optuna study in the database (its sampler is the one used).
        window: finished trials the view holds at most (see :func:`select`); None: all.
    """

    def __init__(self, study: optuna.Study, *, window: int | None = None) -> None:
        self.study = study
        self.window = window
        self.memory = self._empty()
        self._ids: dict[int, tuple[int, int]] = {}  # database trial id -> (id, number) in memory
        self._held = 0  # finished trials in the view

    def _empty(self) -> optuna.Study:
        return optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), sampler=self.study.sampler, directions=self.study.directions
        )

    def load(self) -> None:
        """Copy the study's finished trials from the database (after a fresh read)."""
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()]
        self._rebuild(done, running={})

    def _rebuild(self, finished: list[optuna.trial.FrozenTrial], running: dict[int, optuna.trial.FrozenTrial]) -> None:
        """A new in-memory study: ``finished`` (selected when the view has a window), then
        the ``running`` trials (database trial id -> trial) that will be told later."""
        memory = self._empty()
        kept = select(finished, self.study.directions, self.window) if self.window else finished
        for t in kept:
            copy_trial(memory, t)
        ids = {tid: copy_trial(memory, t) for tid, t in running.items()}
        self.memory, self._ids, self._held = memory, ids, len(kept)
        if self.window and len(kept) < len(finished):
            logger.debug("sampler view: %d of %d finished trials", len(kept), len(finished))

    def _bound(self) -> None:
        """Re-select the view once it has grown a quarter past its window."""
        if not self.window or self._held <= self.window + self.window // 4:
            return
        trials = self.memory.get_trials(deepcopy=False)
        by_id = {trial_id(t): t for t in trials}
        running = {tid: by_id[mid] for tid, (mid, _) in self._ids.items()}
        self._rebuild([t for t in trials if t.state.is_finished()], running)

    def ask(
        self, plan: TrialPlan, create: Callable[[dict[str, Any], dict[str, Any]], tuple[int, int]]
    ) -> tuple[int, int, dict[str, Any]]:
        """Propose a new trial and create it in the database.

        Args:
            plan: the trial's stages and parameters.
            create: writes a RUNNING trial holding (params, distributions) in one commit;
                returns its database trial id and number.

        Returns:
            its database trial id, its number, and every parameter of the plan.
        """
        proposal = self.memory.ask()
        params = suggest(proposal, plan)
        frozen = frozen_trial(self.memory, trial_id(proposal))  # in memory, no database
        tid, number = create(dict(frozen.params), dict(frozen.distributions))
        self._ids[tid] = (trial_id(proposal), proposal.number)
        return tid, number, params

    def started(self, trial: optuna.trial.Trial) -> None:
        """A trial asked from the database (a queued retry) runs: copy it in."""
        frozen = frozen_trial(self.study, trial_id(trial))
        self._ids[trial_id(trial)] = copy_trial(self.memory, frozen)

    def finished(
        self, tid: int, state: TrialState, values: list[float] | None = None, constraint: list[float] | None = None,
        curve: dict[int, float] | None = None,
    ) -> None:
        """Tell the view how database trial ``tid`` ended (what the sampler reads of it)."""
        ids = self._ids.pop(tid, None)
        if ids is None:  # not asked through this view (settled by recover, which reloads)
            return
        mid, number = ids
        if constraint is not None:
            set_user_attrs(self.memory, mid, {CONSTRAINT_ATTR: constraint})
        for step, value in (curve or {}).items():
            set_intermediate_value(self.memory, mid, step, value)
        self.memory.tell(number, values, state=state if state != TrialState.COMPLETE else None, skip_if_finished=True)
        self._held += 1
        self._bound()
