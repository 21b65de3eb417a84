"""Training and evaluation loops (CPU or the model's device), with optional held masks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from crest.tasks._workload import Workload

__all__ = ["batch_loss", "batches", "distill_loss", "evaluate", "fit_epoch_steps", "train", "train_epochs"]


def batches(
    dataset: Dataset,  # type: ignore[type-arg]
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of ``(inputs, labels)``; a fast path for in-memory TensorDatasets."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for xb, yb in loader:
        yield xb, yb


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's soft-target loss: ``T^2 x KL(softmax(teacher/T) || softmax(student/T))``.

    Args:
        student, teacher: logits [batch, classes].
        temperature: T > 0.

    Returns:
        The batch-mean loss (a scalar).
    """
    t = float(temperature)
    log_p = nn.functional.log_softmax(student / t, dim=1)
    log_q = nn.functional.log_softmax(teacher / t, dim=1)
    return nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * (t * t)


def train(
    model: nn.Module,
    workload: Workload,
    *,
    epochs: int,
    lr: float,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> nn.Module:
    """Train ``model`` in place with Adam; masked parameters stay exactly zero.

    Args:
        model: the model (its parameters' device is used).
        workload: supplies the training set, batch size and loss.
        epochs: passes over the training set.
        lr: Adam learning rate.
        seed: seeds the shuffle, so equal seeds give equal runs.
        masks: parameter name -> bool tensor of the parameter's shape; False entries
            are held at zero (their gradients and Adam moments are zeroed too).
        teacher: a model whose logits the loss distils (with ``distill_weight`` > 0):
            loss = (1 - w) x workload loss + w x :func:`distill_loss`.
        distill_weight: w in [0, 1].
        temperature: the distillation temperature T.
    """
    for _ in train_epochs(model, workload, epochs=epochs, lr=lr, seed=seed, masks=masks, teacher=teacher,
                          distill_weight=distill_weight, temperature=temperature):
        pass
    return model


def train_epochs(
    model: nn.Module,
    workload: Workload,
    *,
    epochs: int,
    lr: float,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> Iterator[int]:
    """:func:`train`, one epoch at a time: yields the count of epochs done after each.

    The optimizer and the shuffle carry over between epochs, so draining it trains
    exactly as :func:`train` does; the model is in eval mode at every yield (it may be
    scored there).
    """
    if epochs <= 0:
        return
    params = dict(model.named_parameters())
    held = {name: m.to(params[name].device) for name, m in (masks or {}).items()}
    for name, m in held.items():
        with torch.no_grad():
            params[name].mul_(m)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    yield from fit_epoch_steps(model, workload, opt, epochs=epochs, seed=seed, held=held, teacher=teacher,
                               distill_weight=distill_weight, temperature=temperature)


def fit_epoch_steps(
    model: nn.Module,
    workload: Workload,
    opt: torch.optim.Optimizer,
    *,
    epochs: int,
    seed: int,
    held: Mapping[str, torch.Tensor],
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
    after_backward: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> Iterator[int]:
    """The minibatch loop of :func:`train` and centroid fine-tuning, on the model's device;
    yields the count of epochs done after each (the model in eval mode there).

    Per minibatch: zero the gradients, :func:`batch_loss`, backward, ``after_backward()``,
    zero the gradients of ``held`` entries (parameter name -> mask on its device), step,
    zero the held entries again, ``after_step()``. ``seed`` seeds the shuffle.
    """
    params = dict(model.named_parameters())
    loss_fn = workload.loss or nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    if teacher is not None:
        teacher.eval()
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(workload.train_set, workload.batch_size, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(model, loss_fn, xb.to(device), yb.to(device), teacher, distill_weight, temperature)
            loss.backward()
            if after_backward is not None:
                after_backward()
            for name, m in held.items():
                grad = params[name].grad
                if grad is not None:
                    grad.mul_(m)
            opt.step()
            with torch.no_grad():
                for name, m in held.items():
                    params[name].mul_(m)
            if after_step is not None:
                after_step()
        model.eval()
        yield epoch + 1
    model.eval()


def batch_loss(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
    teacher: nn.Module | None,
    distill_weight: float,
    temperature: float,
) -> torch.Tensor:
    """One minibatch's loss: the task loss, mixed with distillation from ``teacher`` when given.

    ``(1 - w) * loss + w * distill_loss(logits, teacher logits, T)`` for ``w = distill_weight``.
    """
    logits = model(xb)
    loss = loss_fn(logits, yb)
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            soft = teacher(xb)
        loss = (1 - distill_weight) * loss + distill_weight * distill_loss(logits, soft, temperature)
    return loss


@torch.no_grad()
def evaluate(model: nn.Module, workload: Workload) -> float:
    """The workload's score of ``model`` (higher is better): its ``evaluate`` or top-1 accuracy."""
    model.eval()
    if workload.evaluate is not None:
        return float(workload.evaluate(model))
    device = next(model.parameters()).device
    correct = 0
    total = 0
    for xb, yb in batches(workload.test_set, max(workload.batch_size, 256), shuffle=False):
        pred = model(xb.to(device)).argmax(dim=1)
        correct += int((pred == yb.to(device)).sum())
        total += len(yb)
    return correct / total if total else 0.0
