"""A sweep's stages resolved against a model: concrete layers and named search parameters.

The plan is plain data (picklable, no pydantic), built once by the driver and shipped to
every worker; the driver turns its :class:`ParamSpec` list into Optuna distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crest.config import (
    EncodeStage,
    FloatChoices,
    FloatRange,
    IntChoices,
    IntRange,
    PruneStage,
    QuantizeStage,
    RetrainStage,
    Stage,
    match_layers,
)
from crest.exceptions import ConfigError

__all__ = ["ParamSpec", "StagePlan", "TrialPlan", "resolve_plan"]


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
    is "quality" or "sparsity", for quantize it is "bits". ``options`` maps option names
    (retrain's "epochs" and "lr", encode's "index_bits") to a parameter name or a value.
    """

    type: str
    label: str
    layers: dict[str, tuple[str, str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialPlan:
    """The resolved stages and every parameter a trial takes."""

    stages: tuple[StagePlan, ...]
    params: tuple[ParamSpec, ...]
    index_bits: int | str = "auto"
    chunk_entries: int = 1024

    def fixed_params(self) -> dict[str, float | int]:
        """Parameters whose value the sweep file fixes."""
        return {p.name: p.fixed for p in self.params if p.fixed is not None}

    def searched(self) -> list[ParamSpec]:
        """Parameters Optuna chooses."""
        return [p for p in self.params if p.searched]


def _spec(name: str, kind: str, value: Any) -> ParamSpec:
    if isinstance(value, FloatRange | IntRange):
        return ParamSpec(name, kind, low=value.low, high=value.high, log=value.log, step=value.step)
    if isinstance(value, FloatChoices | IntChoices):
        return ParamSpec(name, kind, choices=tuple(value.choices))
    return ParamSpec(name, kind, fixed=int(value) if kind == "int" else float(value))


def _map_layers(
    index: int, label: str, patterns: dict[str, Any], names: Sequence[str]
) -> dict[str, tuple[str, Any]]:
    mapped: dict[str, tuple[str, Any]] = {}
    for pattern, layer_cfg in patterns.items():
        hits = match_layers(pattern, list(names))
        if not hits:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ConfigError(
                f"stages[{index}].layers: pattern '{pattern}' matches no parameter "
                f"(the model's parameters: {shown})"
            )
        for name in hits:
            mapped.setdefault(name, (pattern, layer_cfg))
    return mapped


def resolve_plan(stages: Sequence[Stage], param_names: Sequence[str]) -> TrialPlan:
    """Resolve the stages' layer globs against a model's parameter names.

    When several patterns of one stage match a layer, the first pattern wins.

    Raises:
        ConfigError: a pattern matches no parameter.
    """
    counts: dict[str, int] = {}
    plans: list[StagePlan] = []
    params: list[ParamSpec] = []
    index_bits: int | str = "auto"
    chunk_entries = 1024
    for i, stage in enumerate(stages):
        counts[stage.type] = counts.get(stage.type, 0) + 1
        label = stage.type if counts[stage.type] == 1 else f"{stage.type}{counts[stage.type]}"
        if isinstance(stage, PruneStage):
            layers: dict[str, tuple[str, str]] = {}
            for name, (_, cfg) in _map_layers(i, label, stage.layers, param_names).items():
                rule = "quality" if cfg.quality is not None else "sparsity"
                pname = f"{label}/{name}/{rule}"
                params.append(_spec(pname, "float", getattr(cfg, rule)))
                layers[name] = (rule, pname)
            plans.append(StagePlan("prune", label, layers=layers))
        elif isinstance(stage, QuantizeStage):
            layers = {}
            for name, (_, cfg) in _map_layers(i, label, stage.layers, param_names).items():
                pname = f"{label}/{name}/bits"
                params.append(_spec(pname, "int", cfg.bits))
                layers[name] = ("bits", pname)
            plans.append(
                StagePlan("quantize", label, layers=layers, options={"iterations": stage.iterations})
            )
        elif isinstance(stage, RetrainStage):
            options: dict[str, Any] = {}
            pname = f"{label}/epochs"
            params.append(_spec(pname, "int", stage.epochs))
            options["epochs"] = pname
            if stage.lr is not None:
                lname = f"{label}/lr"
                params.append(_spec(lname, "float", stage.lr))
                options["lr"] = lname
            plans.append(StagePlan("retrain", label, options=options))
        elif isinstance(stage, EncodeStage):
            index_bits = stage.index_bits
            chunk_entries = stage.chunk_entries
    return TrialPlan(tuple(plans), tuple(params), index_bits, chunk_entries)
