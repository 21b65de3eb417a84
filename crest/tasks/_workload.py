"""The Workload: what a sweep compresses (a model, its data, how to train and score it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

__all__ = ["Workload"]


@dataclass
class Workload:
    """A trainable model with its data.

    Args:
        name: short name shown in tables and stored with the study.
        build_model: returns a freshly initialised ``torch.nn.Module`` (CPU).
        train_set: training data; items are ``(input, label)``.
        test_set: held-out data used for every recorded accuracy.
        baseline_epochs: epochs of the study's dense baseline training.
        batch_size: minibatch size for training and evaluation.
        lr: Adam learning rate of the baseline (retraining defaults to it).
        evaluate: optional ``model -> float`` (higher is better) replacing top-1
            accuracy on ``test_set``.
        loss: optional ``(logits, labels) -> loss``; cross-entropy by default.
        description: one line for ``--help`` and tables.
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train_set: Dataset  # type: ignore[type-arg]
    test_set: Dataset  # type: ignore[type-arg]
    baseline_epochs: int
    batch_size: int
    lr: float
    evaluate: Callable[[torch.nn.Module], float] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    description: str = field(default="")
