"""The Optuna side: samplers, constraints, and asking for a trial's parameters."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from crest.config import SweepConfig
from crest.tasks import TrialPlan

__all__ = ["make_sampler", "sampler_for", "suggest", "directions", "CONSTRAINT_ATTR"]

CONSTRAINT_ATTR = "crest_constraint"


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    # a trial without the attribute (failed, or not told by crest) counts as infeasible
    value = trial.user_attrs.get(CONSTRAINT_ATTR)
    return list(value) if isinstance(value, list) else [1.0]


def make_sampler(config: SweepConfig, *, seed_offset: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler; ``seed_offset`` (trials already in the study) keeps resumes reproducible."""
    return sampler_for(config.sampler, seed=config.seed + seed_offset, n_trials=config.n_trials)


def sampler_for(kind: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """crest's sampler settings: ``kind`` "tpe" or "random", seeded, for a study of ``n_trials``.

    TPE reads each trial's feasibility from the ``CONSTRAINT_ATTR`` user attribute
    (a one-element list: accuracy drop minus the allowed drop; <= 0 is feasible).
    """
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # Optuna 5 deprecates constraints_func for Trial.set_constraint, which older
        # releases lack; constraints_func works in every supported release
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constraints_func=_constraints,
            n_startup_trials=min(10, max(2, n_trials // 4)),
        )


def directions(config: SweepConfig) -> list[str]:
    """Optuna directions of the objectives (size is minimised, accuracy maximised)."""
    return ["minimize" if o == "size" else "maximize" for o in config.objectives]


def objective_values(config: SweepConfig, size_bytes: int, accuracy: float) -> list[float]:
    """The values told to Optuna, in the order of ``config.objectives``."""
    return [float(size_bytes) if o == "size" else float(accuracy) for o in config.objectives]


def suggest(trial: optuna.trial.Trial, plan: TrialPlan) -> dict[str, Any]:
    """Every parameter of the plan: the fixed ones and those Optuna proposes now."""
    params: dict[str, Any] = dict(plan.fixed_params())
    for spec in plan.searched():
        if spec.choices is not None:
            params[spec.name] = trial.suggest_categorical(spec.name, list(spec.choices))
        elif spec.kind == "int":
            params[spec.name] = trial.suggest_int(
                spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log  # type: ignore[arg-type]
            )
        else:
            params[spec.name] = trial.suggest_float(
                spec.name, float(spec.low), float(spec.high), step=spec.step, log=spec.log  # type: ignore[arg-type]
            )
    return params
