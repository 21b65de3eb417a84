"""A sweep's stages resolved against a model: concrete layers and named search parameters.

The plan is plain data (picklable, no pydantic), built once by the driver and shipped to
every worker; the driver turns its :class:`ParamSpec` list into Optuna distributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crest.config import (
    EncodeStage,
    FloatChoices,
    FloatRange,
    IntChoices,
    IntRange,
    LowRankStage,
    PruneStage,
    QuantizeStage,
    RetrainStage,
    Stage,
    match_layers,
)
from crest.exceptions import ConfigError
from crest.format import DEFAULT_CHUNK_ENTRIES
from crest.tasks._lowrank import factorised_param_names

__all__ = ["ParamSpec", "StagePlan", "TrialPlan", "resolve_plan", "sensitivity_range"]


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


def _spec(name: str, kind: str, value: Any) -> ParamSpec:
    if isinstance(value, FloatRange | IntRange):
        return ParamSpec(name, kind, low=value.low, high=value.high, log=value.log, step=value.step)
    if isinstance(value, FloatChoices | IntChoices):
        return ParamSpec(name, kind, choices=tuple(value.choices))
    return ParamSpec(name, kind, fixed=int(value) if kind == "int" else float(value))


def _option(params: list[ParamSpec], name: str, kind: str, value: Any) -> str:
    params.append(_spec(name, kind, value))
    return name


def _map_layers(index: int, patterns: dict[str, Any], names: Sequence[str]) -> dict[str, tuple[str, Any]]:
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


def _lowrank_layers(
    index: int, stage: LowRankStage, names: Sequence[str], shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[str, Any]]:
    if shapes is None:
        raise ConfigError(
            f"stages[{index}]: a lowrank stage needs the parameters' shapes "
            "(resolve_plan(..., shapes={name: shape}))"
        )
    eligible = [n for n in names if n.endswith(".weight") and len(shapes.get(n, ())) in (2, 4)]
    mapped = _map_layers(index, stage.layers, names)
    bad = [n for n in mapped if n not in eligible]
    if bad:
        raise ConfigError(
            f"stages[{index}].layers: '{mapped[bad[0]][0]}' matches '{bad[0]}', which is not "
            "the weight of a Linear or Conv2d layer (2-D or 4-D)"
        )
    return mapped


def sensitivity_range(
    table: Sequence[tuple[float, float]], *, low_drop: float, high_drop: float
) -> tuple[float, float]:
    """A layer's sparsity search range from its (sparsity, prune-only drop) table.

    Returns:
        (low, high): the highest measured sparsity with drop <= ``low_drop`` (0 when
        none) and the highest with drop <= ``high_drop`` (at least ``low``).
    """
    ordered = sorted(table)
    low = max([s for s, d in ordered if d <= low_drop], default=0.0)
    high = max([s for s, d in ordered if d <= high_drop], default=low)
    return low, max(low, high)


def _sensitivity_spec(
    index: int,
    pattern: str,
    layer: str,
    pname: str,
    stage: PruneStage,
    sensitivity: Mapping[str, Sequence[tuple[float, float]]] | None,
) -> ParamSpec:
    if sensitivity is None:  # resolving only to measure sensitivity: any range will do
        return ParamSpec(pname, "float", low=0.0, high=0.99)
    table = sensitivity.get(layer)
    if not table:
        raise ConfigError(
            f"stages[{index}].layers.{pattern}.sparsity: 'sensitivity' needs the sensitivity of "
            f"'{layer}'; run `crest sensitivity SWEEP_FILE` for this study first"
        )
    low, high = sensitivity_range(
        table, low_drop=stage.sensitivity.low_drop, high_drop=stage.sensitivity.high_drop
    )
    if low == high:
        return ParamSpec(pname, "float", fixed=low)
    return ParamSpec(pname, "float", low=low, high=high)


def resolve_plan(
    stages: Sequence[Stage],
    param_names: Sequence[str],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    sensitivity: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> TrialPlan:
    """Resolve the stages' layer globs against a model's parameter names.

    When several patterns of one stage match a layer, the first pattern wins. A
    ``lowrank`` stage's globs match the baseline's weight names; every later stage's
    globs match the names after factorisation (``fc1.first.weight``, ...).

    Args:
        stages: the sweep file's stages.
        param_names: the baseline model's parameter names, in model order.
        shapes: name -> shape of every parameter; needed only with a lowrank stage
            (to tell Linear from Conv2d factors).
        sensitivity: layer -> [(sparsity, prune-only accuracy drop)], for layers whose
            sparsity is ``sensitivity``; None resolves such layers to [0, 0.99] (used
            while the sensitivity itself is measured).

    Raises:
        ConfigError: a pattern matches no parameter (or a lowrank pattern matches one
            that is not a Linear / Conv2d weight).
    """
    param_names = list(param_names)
    counts: dict[str, int] = {}
    plans: list[StagePlan] = []
    params: list[ParamSpec] = []
    index_bits: int | str = "auto"
    chunk_entries = DEFAULT_CHUNK_ENTRIES
    for i, stage in enumerate(stages):
        counts[stage.type] = counts.get(stage.type, 0) + 1
        label = stage.type if counts[stage.type] == 1 else f"{stage.type}{counts[stage.type]}"
        layers: dict[str, tuple[str, str]] = {}
        if isinstance(stage, LowRankStage):
            for name, (_, cfg) in _lowrank_layers(i, stage, param_names, shapes).items():
                rule = "rank" if cfg.rank is not None else "ratio"
                pname = f"{label}/{name}/{rule}"
                params.append(_spec(pname, "int" if rule == "rank" else "float", getattr(cfg, rule)))
                layers[name] = (rule, pname)
            param_names = factorised_param_names(param_names, shapes or {}, list(layers))
            plans.append(StagePlan("lowrank", label, layers=layers, names=tuple(param_names)))
        elif isinstance(stage, PruneStage):
            for name, (pattern, cfg) in _map_layers(i, stage.layers, param_names).items():
                rule = "quality" if cfg.quality is not None else "sparsity"
                pname = f"{label}/{name}/{rule}"
                if cfg.sparsity == "sensitivity":
                    params.append(_sensitivity_spec(i, pattern, name, pname, stage, sensitivity))
                else:
                    params.append(_spec(pname, "float", getattr(cfg, rule)))
                layers[name] = (rule, pname)
            plans.append(StagePlan("prune", label, layers=layers, names=tuple(param_names)))
        elif isinstance(stage, QuantizeStage):
            for name, (_, cfg) in _map_layers(i, stage.layers, param_names).items():
                pname = f"{label}/{name}/bits"
                params.append(_spec(pname, "int", cfg.bits))
                layers[name] = ("bits", pname)
            qopts: dict[str, Any] = {"iterations": stage.iterations}
            if stage.finetune_epochs != 0:
                qopts["finetune_epochs"] = _option(
                    params, f"{label}/finetune_epochs", "int", stage.finetune_epochs
                )
            if stage.finetune_lr is not None:
                qopts["finetune_lr"] = _option(params, f"{label}/finetune_lr", "float", stage.finetune_lr)
            plans.append(StagePlan("quantize", label, layers=layers, options=qopts, names=tuple(param_names)))
        elif isinstance(stage, RetrainStage):
            options: dict[str, Any] = {}
            pname = f"{label}/epochs"
            params.append(_spec(pname, "int", stage.epochs))
            options["epochs"] = pname
            if stage.lr is not None:
                lname = f"{label}/lr"
                params.append(_spec(lname, "float", stage.lr))
                options["lr"] = lname
            if stage.rounds != 1:
                options["rounds"] = _option(params, f"{label}/rounds", "int", stage.rounds)
            options["schedule"] = stage.schedule
            options["dsd"] = stage.dsd
            if stage.dsd:
                dsd_epochs = stage.dsd_epochs if stage.dsd_epochs is not None else stage.epochs
                options["dsd_epochs"] = _option(params, f"{label}/dsd_epochs", "int", dsd_epochs)
            if stage.distill is not None:
                options["distill_weight"] = _option(
                    params, f"{label}/distill_weight", "float", stage.distill.weight
                )
                options["distill_temperature"] = _option(
                    params, f"{label}/distill_temperature", "float", stage.distill.temperature
                )
            plans.append(StagePlan("retrain", label, options=options, names=tuple(param_names)))
        elif isinstance(stage, EncodeStage):
            index_bits = stage.index_bits
            chunk_entries = stage.chunk_entries
    return TrialPlan(tuple(plans), tuple(params), index_bits, chunk_entries)
