"""The plan's plain data: a trial's stages and parameters (dataclasses, no pydantic).

Kept apart from :mod:`crest.tasks._plan` (which resolves a sweep file into a plan and
needs the sweep-file parser) so that running trials needs only torch and NumPy: the GPU
script runs the trial pipeline where neither pydantic nor YAML is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crest.format import DEFAULT_CHUNK_ENTRIES

__all__ = ["ParamSpec", "StagePlan", "TrialPlan"]


@dataclass(frozen=True)
class ParamSpec:
    """One named trial parameter: fixed, a range, or a set of choices."""

    name: str
    kind: str  # "float" or "int"
    fixed: float | int | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[float | int, ...] | None = None

    @property
    def searched(self) -> bool:
        """True when Optuna chooses the value."""
        return self.fixed is None


@dataclass(frozen=True)
class StagePlan:
    """One stage with its layers mapped to parameter names.

    ``layers`` maps a parameter (layer) name to ``(rule, param_name)``: for prune the rule
    is "quality" or "sparsity", for quantize it is "bits", for lowrank "rank" or "ratio"
    (keyed by the original weight name, e.g. ``fc1.weight``). ``options`` maps option
    names to a parameter name (searched or fixed; a str) or a plain value: retrain's
    "epochs", "lr", "rounds", "dsd_epochs", "distill_weight", "distill_temperature"
    (parameter names; "rounds" absent means 1) and "schedule", "dsd" (values);
    quantize's "iterations" (value), "finetune_epochs" and "finetune_lr" (parameter
    names; absent means no fine-tuning / the default lr). ``names`` are the model's
    parameter names after this stage (they change at a lowrank stage).
    """

    type: str
    label: str
    layers: dict[str, tuple[str, str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrialPlan:
    """The resolved stages and every parameter a trial takes."""

    stages: tuple[StagePlan, ...]
    params: tuple[ParamSpec, ...]
    index_bits: int | str = "auto"
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES

    def fixed_params(self) -> dict[str, float | int]:
        """Parameters whose value the sweep file fixes."""
        return {p.name: p.fixed for p in self.params if p.fixed is not None}

    def searched(self) -> list[ParamSpec]:
        """Parameters Optuna chooses."""
        return [p for p in self.params if p.searched]
