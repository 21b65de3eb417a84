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
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState

from crest.orchestrator._optuna_private import (
    copy_trial,
    create_running_trial,
    frozen_trial,
    set_intermediate_value,
    set_user_attrs,
    trial_id,
)
from crest.orchestrator._space import CONSTRAINT_ATTR, suggest
from crest.tasks import TrialPlan

__all__ = ["SamplerView"]

logger = logging.getLogger(__name__)


class SamplerView:
    """An in-memory copy of ``study``'s finished trials that its sampler proposes from.

    Args:
        study: the Optuna study in the database (its sampler is the one used).
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.memory = self._empty()
        self._ids: dict[int, tuple[int, int]] = {}  # database trial id -> (id, number) in memory

    def _empty(self) -> optuna.Study:
        return optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), sampler=self.study.sampler, directions=self.study.directions
        )

    def load(self) -> None:
        """Copy the study's finished trials from the database (after a fresh read)."""
        memory = self._empty()
        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished():
                copy_trial(memory, t)
        self.memory, self._ids = memory, {}

    def ask(self, plan: TrialPlan) -> tuple[int, int, dict[str, Any]]:
        """Propose a new trial and create it in the database (one commit).

        Returns:
            its database trial id, its number, and every parameter of the plan.
        """
        proposal = self.memory.ask()
        params = suggest(proposal, plan)
        frozen = frozen_trial(self.memory, trial_id(proposal))  # in memory, no database
        tid, number = create_running_trial(self.study, dict(frozen.params), dict(frozen.distributions))
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
