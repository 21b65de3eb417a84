"""The Workload: what a sweep compresses (a model, its data, how to train and score it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from crest.tasks._fit import FitContext

__all__ = ["DataSource", "Workload"]

# a Dataset, or a zero-argument factory returning a DataLoader (any iterable of (inputs, targets))
DataSource = Dataset | Callable[[], Iterable[Any]]  # type: ignore[type-arg]


@dataclass
class Workload:
    """A trainable model with its data.

    Args:
        name: short name shown in tables and stored with the study.
        build_model: returns a freshly initialised ``torch.nn.Module`` (CPU).
        train_set: training data; items are ``(input, label)``. A Dataset, or a
            zero-argument factory returning a ``DataLoader`` (called once per pass, so
            your ``num_workers``, ``pin_memory`` and sampler hold).
        test_set: held-out data used for every recorded accuracy (same forms).
        baseline_epochs: epochs of the study's dense baseline training.
        batch_size: minibatch size for training and evaluation.
        lr: Adam learning rate of the baseline (retraining defaults to it).
        evaluate: optional ``model -> float`` (higher is better) replacing top-1
            accuracy on ``test_set``; the model is on the trial's device (read it from
            ``next(model.parameters()).device``).
        loss: optional ``(logits, labels) -> loss``; cross-entropy by default.
        description: one line for ``--help`` and tables.
        fit: optional ``fit(model, ctx)`` training ``model`` (on ``ctx.device``) with your
            own optimizer, schedule and loader; ``ctx`` is a :class:`crest.tasks.FitContext`
            and ``ctx.after_step()`` must follow every optimizer step. None: crest's
            Adam loop (:func:`crest.tasks.default_fit`).
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train_set: DataSource
    test_set: DataSource
    baseline_epochs: int
    batch_size: int
    lr: float
    evaluate: Callable[[torch.nn.Module], float] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    description: str = field(default="")
    fit: Callable[[torch.nn.Module, FitContext], Any] | None = None
