"""The Optuna side: samplers, constraints, and asking for a trial's parameters."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from crest.config import SweepConfig
from crest.tasks import TrialPlan
from crest.tasks._latency_options import LATENCY_OBJECTIVE

__all__ = ["CONSTRAINT_ATTR", "directions", "latency_ms", "make_sampler", "objective_values", "sampler_for", "suggest"]

logger = logging.getLogger(__name__)

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
    """Optuna directions of the objectives (size and latency are minimised, accuracy maximised)."""
    return ["maximize" if o == "accuracy" else "minimize" for o in config.objectives]


def latency_ms(details: Mapping[str, Any] | None) -> float | None:
    """The latency objective of a trial's details: milliseconds of one forward pass at
    batch 1 with the compressed modules, on the trial's device (None when not measured)."""
    latency = (details or {}).get("latency")
    value = latency.get(LATENCY_OBJECTIVE) if isinstance(latency, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def objective_values(
    config: SweepConfig, size_bytes: int, accuracy: float, details: Mapping[str, Any] | None = None
) -> list[float]:
    """The values told to Optuna, in the order of ``config.objectives`` (``details``: the
    trial's, read for ``latency``; a trial whose latency could not be measured gets +inf,
    the worst value, and a warning)."""
    values = []
    for o in config.objectives:
        if o == "latency":
            ms = latency_ms(details)
            if ms is None:
                logger.warning("a trial has no latency measured (%s); Optuna gets +inf",
                               str((details or {}).get("latency"))[:200])
            values.append(math.inf if ms is None else ms)
        else:
            values.append(float(size_bytes) if o == "size" else float(accuracy))
    return values


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
