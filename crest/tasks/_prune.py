"""Magnitude pruning (Han et al.): threshold = quality x the layer's weight std."""

from __future__ import annotations

import torch

__all__ = ["magnitude_mask", "sparsity_mask"]


def magnitude_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Keep-mask of the weights whose magnitude exceeds ``quality * std(weight)``.

    Args:
        weight: any shape, float.
        quality: the quality parameter (>= 0); 0 keeps every nonzero weight.

    Returns:
        bool tensor of ``weight``'s shape and device; True = kept.
    """
    if weight.numel() < 2:
        return weight != 0
    threshold = quality * float(weight.detach().float().std())
    return weight.detach().abs() > threshold


def sparsity_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that zeroes the ``sparsity`` fraction (0..1) of smallest-magnitude weights."""
    n = weight.numel()
    k = int(round(sparsity * n))
    if k <= 0:
        return weight != 0
    if k >= n:
        return torch.zeros_like(weight, dtype=torch.bool)
    flat = weight.detach().abs().flatten()
    threshold = flat.kthvalue(k).values
    return weight.detach().abs() > threshold
