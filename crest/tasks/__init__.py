"""What one trial does: workloads, low rank, pruning, retraining, weight sharing, the pipeline.

Needs torch and NumPy only: running trials (the GPU script does, in-process) needs neither
Ray, a database nor the sweep-file parser. Each public name is imported from its module
when first used, so that the driver reads the plain-data ones (``TrialPlan``,
``TrialOutcome``, ``SizeReport``, ``LatencyOptions``, ``resolve_plan``, ...) without
importing torch: a new local study's driver never imports it (its baseline trains in a
process of its own, :mod:`crest.orchestrator._baseline`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crest._lazy import lazy_attributes

if TYPE_CHECKING:
    from crest.tasks._device import resolve_device
    from crest.tasks._early_size import (
        SizeBounds,
        TensorStructure,
        coincidence_allowance,
        size_bounds,
        structure_of,
    )
    from crest.tasks._encode_plan import (
        TensorPlan,
        plan_counts,
        plan_encoding,
        plan_tensor,
    )
    from crest.tasks._finetune import finetune_centroids
    from crest.tasks._fit import FitContext, default_fit, run_fit
    from crest.tasks._latency import measure_latency
    from crest.tasks._latency_options import LatencyOptions
    from crest.tasks._lowrank import (
        LowRankLinear,
        Tucker2Conv2d,
        apply_structure,
        factorize_layer,
        svd_factors,
        tucker2_factors,
    )
    from crest.tasks._outcome import TrialOutcome
    from crest.tasks._pipeline import (
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
    from crest.tasks._plan import embedding_tables, resolve_plan, sensitivity_range
    from crest.tasks._plan_types import ParamSpec, StagePlan, TrialPlan
    from crest.tasks._prune import magnitude_mask, sparsity_mask
    from crest.tasks._quantize import cluster_weights, kmeans_1d, share_weights
    from crest.tasks._resolve import builtin_workloads, get_workload, register_workload
    from crest.tasks._sensitivity import (
        DEFAULT_SPARSITIES,
        layer_sensitivity,
        prunable_layers,
    )
    from crest.tasks._steps import (
        ScoreReport,
        SizeReport,
        StepKey,
        size_point,
        training_schedule,
    )
    from crest.tasks._train import distill_loss, evaluate, train
    from crest.tasks._workload import Workload

_WHERE = {  # public name -> the module that defines it
    "apply_structure": "crest.tasks._lowrank",
    "builtin_workloads": "crest.tasks._resolve",
    "cluster_weights": "crest.tasks._quantize",
    "coincidence_allowance": "crest.tasks._early_size",
    "decoded_model": "crest.tasks._pipeline",
    "default_fit": "crest.tasks._fit",
    "DEFAULT_SPARSITIES": "crest.tasks._sensitivity",
    "dense_fp32_bytes": "crest.tasks._pipeline",
    "distill_loss": "crest.tasks._train",
    "embedding_tables": "crest.tasks._plan",
    "encode_state": "crest.tasks._pipeline",
    "evaluate": "crest.tasks._train",
    "factorize_layer": "crest.tasks._lowrank",
    "finetune_centroids": "crest.tasks._finetune",
    "FitContext": "crest.tasks._fit",
    "get_workload": "crest.tasks._resolve",
    "kmeans_1d": "crest.tasks._quantize",
    "LatencyOptions": "crest.tasks._latency_options",
    "layer_sensitivity": "crest.tasks._sensitivity",
    "load_artifact": "crest.tasks._pipeline",
    "LowRankLinear": "crest.tasks._lowrank",
    "magnitude_mask": "crest.tasks._prune",
    "measure_latency": "crest.tasks._latency",
    "model_from_tensors": "crest.tasks._pipeline",
    "ParamSpec": "crest.tasks._plan_types",
    "plan_counts": "crest.tasks._encode_plan",
    "plan_encoding": "crest.tasks._encode_plan",
    "plan_tensor": "crest.tasks._encode_plan",
    "prunable_layers": "crest.tasks._sensitivity",
    "prune_schedule": "crest.tasks._pipeline",
    "register_workload": "crest.tasks._resolve",
    "resolve_device": "crest.tasks._device",
    "resolve_plan": "crest.tasks._plan",
    "run_fit": "crest.tasks._fit",
    "ScoreReport": "crest.tasks._steps",
    "sensitivity_range": "crest.tasks._plan",
    "share_weights": "crest.tasks._quantize",
    "size_bounds": "crest.tasks._early_size",
    "size_point": "crest.tasks._steps",
    "SizeBounds": "crest.tasks._early_size",
    "SizeReport": "crest.tasks._steps",
    "sparsity_mask": "crest.tasks._prune",
    "StagePlan": "crest.tasks._plan_types",
    "state_to_numpy": "crest.tasks._pipeline",
    "StepKey": "crest.tasks._steps",
    "structure_of": "crest.tasks._early_size",
    "svd_factors": "crest.tasks._lowrank",
    "TensorPlan": "crest.tasks._encode_plan",
    "TensorStructure": "crest.tasks._early_size",
    "train": "crest.tasks._train",
    "train_baseline": "crest.tasks._pipeline",
    "training_schedule": "crest.tasks._steps",
    "TrialOutcome": "crest.tasks._outcome",
    "TrialPlan": "crest.tasks._plan_types",
    "TrialRunner": "crest.tasks._pipeline",
    "tucker2_factors": "crest.tasks._lowrank",
    "Tucker2Conv2d": "crest.tasks._lowrank",
    "Workload": "crest.tasks._workload",
}

# spelled out, so that type checkers and linters see what the lazy names export
__all__ = [
    "DEFAULT_SPARSITIES",
    "FitContext",
    "LatencyOptions",
    "LowRankLinear",
    "ParamSpec",
    "ScoreReport",
    "SizeBounds",
    "SizeReport",
    "StagePlan",
    "StepKey",
    "TensorPlan",
    "TensorStructure",
    "TrialOutcome",
    "TrialPlan",
    "TrialRunner",
    "Tucker2Conv2d",
    "Workload",
    "apply_structure",
    "builtin_workloads",
    "cluster_weights",
    "coincidence_allowance",
    "decoded_model",
    "default_fit",
    "dense_fp32_bytes",
    "distill_loss",
    "embedding_tables",
    "encode_state",
    "evaluate",
    "factorize_layer",
    "finetune_centroids",
    "get_workload",
    "kmeans_1d",
    "layer_sensitivity",
    "load_artifact",
    "magnitude_mask",
    "measure_latency",
    "model_from_tensors",
    "plan_counts",
    "plan_encoding",
    "plan_tensor",
    "prunable_layers",
    "prune_schedule",
    "register_workload",
    "resolve_device",
    "resolve_plan",
    "run_fit",
    "sensitivity_range",
    "share_weights",
    "size_bounds",
    "size_point",
    "sparsity_mask",
    "state_to_numpy",
    "structure_of",
    "svd_factors",
    "train",
    "train_baseline",
    "training_schedule",
    "tucker2_factors",
]


__getattr__ = lazy_attributes(__name__, _WHERE)
