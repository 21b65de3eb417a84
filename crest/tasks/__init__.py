"""What one trial does: workloads, low rank, pruning, retraining, weight sharing, the pipeline.

Needs torch and NumPy only: running trials (the GPU script does, in-process) needs neither
Ray, a database nor the sweep-file parser. The names that resolve a sweep file into a
plan (``resolve_plan``, ``sensitivity_range``, ``embedding_tables``) load it on first use.
"""

from __future__ import annotations

from typing import Any

from crest.tasks._early_size import SizeBounds, TensorStructure, coincidence_allowance, size_bounds, structure_of
from crest.tasks._encode_plan import TensorPlan, plan_counts, plan_encoding, plan_tensor
from crest.tasks._device import resolve_device
from crest.tasks._finetune import finetune_centroids
from crest.tasks._fit import FitContext, default_fit, run_fit
from crest.tasks._latency import LatencyOptions, measure_latency
from crest.tasks._lowrank import (
    LowRankLinear,
    Tucker2Conv2d,
    apply_structure,
    factorize_layer,
    svd_factors,
    tucker2_factors,
)
from crest.tasks._pipeline import (
    TrialOutcome,
    TrialRunner,
    decoded_model,
    dense_fp32_bytes,
    encode_state,
    load_artifact,
    model_from_tensors,
    prune_schedule,
    state_to_numpy,
    train_baseline,
)
from crest.tasks._plan_types import ParamSpec, StagePlan, TrialPlan
from crest.tasks._prune import magnitude_mask, sparsity_mask
from crest.tasks._quantize import cluster_weights, kmeans_1d, share_weights
from crest.tasks._sensitivity import DEFAULT_SPARSITIES, layer_sensitivity, prunable_layers
from crest.tasks._steps import ScoreReport, SizeReport, StepKey, size_point, training_schedule
from crest.tasks._train import distill_loss, evaluate, train
from crest.tasks._resolve import builtin_workloads, get_workload, register_workload
from crest.tasks._workload import Workload

__all__ = [
    "DEFAULT_SPARSITIES",
    "FitContext",
    "LatencyOptions",
    "decoded_model",
    "default_fit",
    "measure_latency",
    "resolve_device",
    "run_fit",
    "layer_sensitivity",
    "prunable_layers",
    "sensitivity_range",
    "Workload",
    "get_workload",
    "builtin_workloads",
    "register_workload",
    "TrialRunner",
    "TrialOutcome",
    "TrialPlan",
    "StagePlan",
    "ParamSpec",
    "resolve_plan",
    "embedding_tables",
    "train",
    "evaluate",
    "train_baseline",
    "magnitude_mask",
    "sparsity_mask",
    "kmeans_1d",
    "share_weights",
    "plan_encoding",
    "plan_tensor",
    "plan_counts",
    "TensorPlan",
    "SizeBounds",
    "TensorStructure",
    "size_bounds",
    "structure_of",
    "coincidence_allowance",
    "SizeReport",
    "ScoreReport",
    "StepKey",
    "size_point",
    "training_schedule",
    "encode_state",
    "state_to_numpy",
    "model_from_tensors",
    "dense_fp32_bytes",
    "load_artifact",
    "prune_schedule",
    "cluster_weights",
    "finetune_centroids",
    "distill_loss",
    "LowRankLinear",
    "Tucker2Conv2d",
    "svd_factors",
    "tucker2_factors",
    "factorize_layer",
    "apply_structure",
]

_PLAN_NAMES = frozenset({"resolve_plan", "sensitivity_range", "embedding_tables"})


def __getattr__(name: str) -> Any:
    """Load the sweep-file side (pydantic, YAML) only when a plan is resolved."""
    if name in _PLAN_NAMES:
        from crest.tasks import _plan

        return getattr(_plan, name)
    raise AttributeError(f"module 'crest.tasks' has no attribute {name!r}")
