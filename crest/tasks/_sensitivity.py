"""Per-layer sensitivity: how a layer's accuracy falls as it alone is pruned (no retraining)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from crest.tasks._prune import sparsity_mask
from crest.tasks._pipeline import model_from_tensors
from crest.tasks._train import evaluate
from crest.tasks._workload import Workload

__all__ = ["layer_sensitivity", "prunable_layers", "DEFAULT_SPARSITIES"]

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def prunable_layers(model: torch.nn.Module) -> list[str]:
    """Parameters worth pruning: weights of 2 or more dimensions (Linear, Conv)."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2]


@torch.no_grad()
def layer_sensitivity(
    workload: Workload,
    baseline: dict[str, np.ndarray],
    layer: str,
    sparsities: Sequence[float],
    *,
    device: torch.device | None = None,
) -> list[float]:
    """The workload's score with only ``layer`` pruned to each sparsity (magnitude, no retraining).

    Args:
        workload: the workload (its test set scores the model).
        baseline: the dense baseline's tensors (decoded artifact).
        layer: a parameter name of the model.
        sparsities: fractions of zeros, each in [0, 1).
        device: where the model is scored (None: the CPU).

    Returns:
        one score per sparsity, in the order given.
    """
    scores = []
    for sparsity in sparsities:
        model = model_from_tensors(workload, baseline).to(device or torch.device("cpu"))
        weight = dict(model.named_parameters())[layer]
        weight.mul_(sparsity_mask(weight, float(sparsity)))
        scores.append(evaluate(model, workload))
    return scores
