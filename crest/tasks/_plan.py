"""A sweep's stages resolved against a model: concrete layers and named search parameters.

The plan is plain data (picklable, no pydantic), built once by the driver and shipped to
every worker; the driver turns its :class:`ParamSpec` list into Optuna distributions.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
    is_glob,
    match_layers,
)
from crest.exceptions import ConfigError
from crest.format import DEFAULT_CHUNK_ENTRIES
from crest.tasks._factor_names import factorised_param_names
from crest.tasks._plan_types import ParamSpec, StagePlan, TrialPlan

if TYPE_CHECKING:
    import torch

__all__ = ["ParamSpec", "StagePlan", "TrialPlan", "embedding_tables", "resolve_plan", "sensitivity_range"]

logger = logging.getLogger(__name__)


def _spec(name: str, kind: str, value: Any) -> ParamSpec:
    if isinstance(value, FloatRange | IntRange):
        return ParamSpec(name, kind, low=value.low, high=value.high, log=value.log, step=value.step)
    if isinstance(value, FloatChoices | IntChoices):
        return ParamSpec(name, kind, choices=tuple(value.choices))
    return ParamSpec(name, kind, fixed=int(value) if kind == "int" else float(value))


def _option(params: list[ParamSpec], name: str, kind: str, value: Any) -> str:
    params.append(_spec(name, kind, value))
    return name


def embedding_tables(model: torch.nn.Module) -> list[str]:
    """Parameter names of the model's embedding tables (nn.Embedding / nn.EmbeddingBag
    weights), as ``model.named_parameters()`` names them: a table whose weight is tied to
    a module registered before it (a head, say) is listed under that module's name."""
    # the model is built, so torch is imported; resolving a plan does not import it
    from torch import nn

    name_of = {id(p): name for name, p in model.named_parameters()}
    tables = [name_of[id(p)] for module in model.modules() if isinstance(module, nn.Embedding | nn.EmbeddingBag)
              for p in module.parameters(recurse=False) if id(p) in name_of]
    return list(dict.fromkeys(tables))


def _shown(names: Sequence[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


_LEFT_OUT = ("1-D parameters or embedding tables", ", which globs leave out; name one exactly to include it")


def _map_layers(
    index: int,
    patterns: dict[str, Any],
    names: Sequence[str],
    eligible: Collection[str] | None = None,
    left_out: tuple[str, str] = _LEFT_OUT,
) -> dict[str, tuple[str, Any]]:
    """Each layer a stage's patterns match -> (its first matching pattern, that pattern's settings).

    A glob matches only ``eligible`` names (None: every name); an exact name matches itself.
    ``left_out`` is (what they are, a hint), for the error of a glob whose only matches are not eligible.
    """
    mapped: dict[str, tuple[str, Any]] = {}
    for pattern, layer_cfg in patterns.items():
        hits = match_layers(pattern, list(names), eligible=eligible)
        if not hits:
            skipped = match_layers(pattern, list(names)) if is_glob(pattern) else []
            if skipped:
                raise ConfigError(
                    f"stages[{index}].layers: glob '{pattern}' matches only {left_out[0]} "
                    f"({_shown(skipped, 6)}){left_out[1]}"
                )
            raise ConfigError(
                f"stages[{index}].layers: pattern '{pattern}' matches no parameter "
                f"(the model's parameters: {_shown(names)})"
            )
        for name in hits:
            mapped.setdefault(name, (pattern, layer_cfg))
    return mapped


def _glob_eligible(
    names: Sequence[str], ndims: Mapping[str, int] | None, embeddings: Collection[str]
) -> set[str] | None:
    """The names a glob may match: 2 or more dimensions and no embedding table (None: no shapes known)."""
    if ndims is None:
        return None
    return {n for n in names if ndims.get(n, 2) >= 2 and n not in embeddings}


def _factor_ndims(ndims: dict[str, int], before: Sequence[str], after: Sequence[str]) -> None:
    """Add the dimensions of a lowrank stage's factor parameters (weights 2-D or 4-D, bias 1-D)."""
    for name in after:
        if name in ndims:
            continue
        layer = name.split(".")
        original = ".".join(layer[:-2]) + ".weight"
        ndims[name] = 1 if name.endswith(".bias") else ndims.get(original, 2)
    for name in set(before) - set(after):
        ndims.pop(name, None)


def _lowrank_layers(
    index: int,
    stage: LowRankStage,
    names: Sequence[str],
    shapes: Mapping[str, Sequence[int]] | None,
    embeddings: Collection[str],
) -> dict[str, tuple[str, Any]]:
    if shapes is None:
        raise ConfigError(
            f"stages[{index}]: a lowrank stage needs the parameters' shapes "
            "(resolve_plan(..., shapes={name: shape}))"
        )
    eligible = [
        n for n in names if n.endswith(".weight") and len(shapes.get(n, ())) in (2, 4) and n not in embeddings
    ]
    not_eligible = ("parameters that are not the weight of a Linear or Conv2d layer", "; low rank takes 2-D and 4-D weights")
    mapped = _map_layers(index, stage.layers, names, eligible, not_eligible)
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
    embeddings: Collection[str] = (),
) -> TrialPlan:
    """Resolve the stages' layer globs against a model's parameter names.

    When several patterns of one stage match a layer, the first pattern wins. A
    ``lowrank`` stage's globs match the baseline's weight names; every later stage's
    globs match the names after factorisation (``fc1.first.weight``, ...). A glob
    matches only parameters of 2 or more dimensions that are not embedding tables (when
    ``shapes`` is given); a pattern without glob characters matches the parameter it
    names, 1-D or embedding included.

    Args:
        stages: the sweep file's stages.
        param_names: the baseline model's parameter names, in model order.
        shapes: name -> shape of every parameter; needed with a lowrank stage (to tell
            Linear from Conv2d factors) and for globs to skip 1-D parameters.
        sensitivity: layer -> [(sparsity, prune-only accuracy drop)], for layers whose
            sparsity is ``sensitivity``; None resolves such layers to [0, 0.99] (used
            while the sensitivity itself is measured).
        embeddings: the names of embedding tables (:func:`embedding_tables`), which
            globs leave out.

    Raises:
        ConfigError: a pattern matches no parameter (the message names a glob that
            matches only 1-D parameters or embedding tables), or a lowrank pattern
            matches one that is not a Linear / Conv2d weight.
    """
    param_names = list(param_names)
    embeddings = frozenset(embeddings)
    ndims = None if shapes is None else {n: len(s) for n, s in shapes.items()}
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
            for name, (_, cfg) in _lowrank_layers(i, stage, param_names, shapes, embeddings).items():
                rule = "rank" if cfg.rank is not None else "ratio"
                pname = f"{label}/{name}/{rule}"
                params.append(_spec(pname, "int" if rule == "rank" else "float", getattr(cfg, rule)))
                layers[name] = (rule, pname)
            before = param_names
            param_names = factorised_param_names(param_names, shapes or {}, list(layers))
            if ndims is not None:
                _factor_ndims(ndims, before, param_names)
            plans.append(StagePlan("lowrank", label, layers=layers, names=tuple(param_names)))
        elif isinstance(stage, PruneStage):
            eligible = _glob_eligible(param_names, ndims, embeddings)
            for name, (pattern, cfg) in _map_layers(i, stage.layers, param_names, eligible).items():
                rule = "quality" if cfg.quality is not None else "sparsity"
                pname = f"{label}/{name}/{rule}"
                if cfg.sparsity == "sensitivity":
                    params.append(_sensitivity_spec(i, pattern, name, pname, stage, sensitivity))
                else:
                    params.append(_spec(pname, "float", getattr(cfg, rule)))
                layers[name] = (rule, pname)
            plans.append(StagePlan("prune", label, layers=layers, names=tuple(param_names)))
        elif isinstance(stage, QuantizeStage):
            eligible = _glob_eligible(param_names, ndims, embeddings)
            for name, (_, cfg) in _map_layers(i, stage.layers, param_names, eligible).items():
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
