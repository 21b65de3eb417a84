"""Bring your own training: ``Workload.fit(model, ctx)`` and the context crest hands it.

crest trains through one function: the workload's ``fit`` when it has one, else its own
Adam loop (:func:`default_fit`). Whatever ``fit`` does, crest projects the model back
onto the trial's constraints when it returns (:meth:`FitContext.project`): pruned
weights to zero, each quantized layer's weights to the mean of their shared value's
group, so the artifact keeps every pruned zero and at most ``2**bits - 1`` distinct
nonzeros per quantized layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crest.exceptions import WorkloadError
from crest.tasks._adam import Adam
from crest.tasks._train import batch_loss, batches, fit_epoch_steps
from crest.tasks._workload import Workload

__all__ = ["FIT_WARNING", "FitContext", "default_fit", "run_fit"]

logger = logging.getLogger(__name__)

FIT_WARNING = "fit() never called ctx.after_step(); crest re-applied masks and weight sharing only when it returned"
_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class FitContext:
    """What a workload's ``fit(model, ctx)`` gets for one training phase of a trial.

    Attributes:
        epochs: passes over the training data this phase asks for.
        lr: the learning rate this phase proposes (your schedule may start from it).
        device: where ``model`` is (``cpu`` or ``cuda:N``); put your batches there.
        seed: the phase's seed (crest seeded torch with the trial's seed already).
        stage: ``baseline``, ``retrain``, ``dense`` (a DSD dense phase, no masks) or
            ``finetune`` (after weight sharing: shared values must stay shared).
        workload: the workload (its data, batch size and loss).
        masks: parameter name -> bool keep-mask on ``device`` (pruned weights are False).
        shared: parameter name -> int64 labels (flat, on ``device``; 0 = a zero weight)
            of the weight-shared layers.
        teacher: the dense baseline, when the stage distils from it.
        distill_weight, temperature: the distillation mix (see :meth:`loss`).
        steps: calls of :meth:`after_step` so far.
    """

    epochs: int
    lr: float
    device: torch.device
    seed: int
    stage: str
    workload: Workload
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    shared: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher: nn.Module | None = None
    distill_weight: float = 0.0
    temperature: float = 4.0
    steps: int = 0
    _params: dict[str, nn.Parameter] = field(default_factory=dict, init=False, repr=False)
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)
    _groups: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)  # name -> weights per label

    def bind(self, model: nn.Module) -> FitContext:
        """Attach the model whose parameters :meth:`after_step` projects; returns self."""
        self._params = dict(model.named_parameters())
        unknown = [n for n in (*self.masks, *self.shared) if n not in self._params]
        if unknown:
            raise WorkloadError(f"the model has no parameter {unknown[0][:200]!r} to hold")
        # the labels never change during a phase: count each group once (no sync per step)
        self._groups = {n: torch.bincount(lab, minlength=1).clamp(min=1) for n, lab in self.shared.items()}
        return self

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """crest's loss of one batch: the workload's loss (cross-entropy by default), mixed
        with distillation from the dense teacher when the stage asks for it:
        ``(1 - w) * loss + w * T^2 * KL`` for ``w = distill_weight``.

        Args:
            model: the model being trained.
            inputs, targets: one batch, on ``device``.

        Returns:
            The scalar batch loss (differentiable).
        """
        loss_fn = self.workload.loss or nn.functional.cross_entropy
        return batch_loss(model, loss_fn, inputs, targets, self.teacher, self.distill_weight, self.temperature)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the workload's training data, shuffled (seeded by ``seed``; each
        call continues the sequence), as ``(inputs, targets)`` on ``device``."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return batches(self.workload.train_set, self.workload.batch_size, shuffle=True,
                       generator=self._generator, device=self.device)

    def after_step(self) -> None:
        """Call after every optimizer step: pruned weights back to zero, shared values shared."""
        self.steps += 1
        self.project()

    @torch.no_grad()
    def project(self) -> None:
        """Put the bound model back onto the trial's constraints: masked weights to zero; in
        each weight-shared layer, every group of weights with one label to their mean
        (label 0 stays zero; a mean of exactly 0 becomes the smallest float32)."""
        for name, mask in self.masks.items():
            self._params[name].mul_(mask)
        for name, labels in self.shared.items():
            w = self._params[name]
            flat = w.reshape(-1)
            counts = self._groups[name]
            sums = torch.zeros(counts.numel(), dtype=flat.dtype, device=flat.device).index_add_(0, labels, flat)
            means = sums / counts.to(flat.dtype)
            means[means == 0] = _TINY
            means[0] = 0
            w.copy_(means[labels].reshape(w.shape))


def default_fit(model: nn.Module, ctx: FitContext) -> None:
    """crest's own training loop as a ``fit``: Adam at ``ctx.lr`` over ``ctx.epochs``
    passes of :meth:`FitContext.batches`, with masked gradients zeroed and
    :meth:`FitContext.after_step` after every step. (A trial of a workload without ``fit``
    runs this loop one epoch at a time, so it can report a score after each.)"""
    opt = Adam(model.parameters(), lr=ctx.lr)
    for _ in fit_epoch_steps(model, ctx.workload, opt, epochs=ctx.epochs, seed=ctx.seed, held=ctx.masks,
                             teacher=ctx.teacher, distill_weight=ctx.distill_weight,
                             temperature=ctx.temperature, after_step=ctx.after_step):
        pass


def run_fit(model: nn.Module, ctx: FitContext) -> str | None:
    """Train ``model`` with the workload's ``fit`` (else :func:`default_fit`), then project it
    onto the trial's constraints.

    Returns:
        :data:`FIT_WARNING` when the fit trained (epochs > 0) without ever calling
        ``ctx.after_step()``, else None.

    Raises:
        WorkloadError: the workload's ``fit`` raised (its message is kept).
    """
    ctx.bind(model)
    if ctx.teacher is not None:
        ctx.teacher.eval()
    fit = ctx.workload.fit or default_fit
    model.train()
    try:
        fit(model, ctx)
    except WorkloadError:
        raise
    except Exception as e:
        raise WorkloadError(f"the workload's fit failed in stage {ctx.stage}: {type(e).__name__}: {e}") from e
    ctx.project()
    model.eval()
    if ctx.steps == 0 and ctx.epochs > 0:
        logger.warning("workload %s: %s", ctx.workload.name, FIT_WARNING)
        return FIT_WARNING
    return None


def fit_epochs(model: nn.Module, ctx: FitContext, warnings: list[str]) -> Iterator[int]:
    """:func:`run_fit` as the epoch counter the trial's steps read: one report, after the
    whole call (``ctx.epochs``), since a user's fit cannot be paused between epochs.
    A warning from the fit is appended to ``warnings``."""
    if ctx.epochs <= 0:
        return
    warning = run_fit(model, ctx)
    if warning is not None:
        warnings.append(warning)
    yield ctx.epochs


def label_tensors(codebooks: Mapping[str, tuple[np.ndarray, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    """Parameter name -> flat int64 labels on ``device``, from k-means' (labels, codebook)."""
    return {n: torch.from_numpy(np.asarray(lab, dtype=np.int64).reshape(-1)).to(device)
            for n, (lab, _) in codebooks.items()}
