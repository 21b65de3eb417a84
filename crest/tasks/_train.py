"""Training and evaluation loops (CPU or the model's device), with optional held masks."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from crest.exceptions import WorkloadError
from crest.tasks._adam import Adam
from crest.tasks._device import to_device
from crest.tasks._workload import DataSource, Workload

__all__ = ["RESIDENT_MAX_BYTES", "batch_loss", "batches", "data_source", "distill_loss", "evaluate", "fit_epoch_steps", "train", "train_epochs"]


def batches(
    dataset: DataSource,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of ``(inputs, labels)`` on ``device`` (None: where the data is).

    ``dataset`` is a Dataset, a DataLoader, or a zero-argument factory returning one (a
    workload's own loader keeps its batch size, order, ``num_workers`` and ``pin_memory``;
    ``batch_size``, ``shuffle`` and ``generator`` then do not apply). An in-memory
    TensorDataset takes a fast path: on a GPU it is copied there once (up to
    :data:`RESIDENT_MAX_BYTES`) and indexed in place; other batches bound for a GPU go
    through pinned memory.
    """
    source = data_source(dataset)
    if isinstance(source, TensorDataset) and len(source.tensors) == 2:
        x, y = _resident(source, device)
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if x.device != order.device:
            order = order.to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield to_device(x[idx], device), to_device(y[idx], device)
        return
    if isinstance(source, Dataset):
        pin = device is not None and device.type == "cuda"
        source = DataLoader(source, batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin)
    for xb, yb in source:
        yield to_device(xb, device), to_device(yb, device)


def data_source(data: DataSource) -> Any:
    """A workload's data as a Dataset or an iterable of batches: a zero-argument factory is
    called (once per pass over the data).

    Raises:
        WorkloadError: the factory fails or returns something that is not iterable.
    """
    if isinstance(data, (Dataset, DataLoader)) or not callable(data):
        return data
    try:
        made = data()
    except Exception as e:
        raise WorkloadError(f"the workload's data factory failed: {type(e).__name__}: {e}") from e
    if not isinstance(made, (Dataset, DataLoader)) and not hasattr(made, "__iter__"):
        raise WorkloadError(f"the workload's data factory returned {type(made).__name__}, not a DataLoader")
    return made


RESIDENT_MAX_BYTES = 512 * 2**20  # an in-memory data set up to this size lives on the GPU
_RESIDENT: weakref.WeakKeyDictionary[TensorDataset, dict[torch.device, tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _resident(dataset: TensorDataset, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's two tensors, on ``device`` when it is a GPU and they fit (cached)."""
    x, y = dataset.tensors
    if device is None or device.type != "cuda" or x.device == device:
        return x, y
    if x.nbytes + y.nbytes > RESIDENT_MAX_BYTES:
        return x, y
    per_device = _RESIDENT.setdefault(dataset, {})
    if device not in per_device:
        per_device[device] = (x.to(device), y.to(device))
    return per_device[device]


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
    opt = Adam(model.parameters(), lr=lr)
    yield from fit_epoch_steps(model, workload, opt, epochs=epochs, seed=seed, held=held, teacher=teacher,
                               distill_weight=distill_weight, temperature=temperature)


def fit_epoch_steps(
    model: nn.Module,
    workload: Workload,
    opt: Adam | torch.optim.Optimizer,
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
        for xb, yb in batches(workload.train_set, workload.batch_size, shuffle=True, generator=gen, device=device):
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(model, loss_fn, xb, yb, teacher, distill_weight, temperature)
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
    correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: one sync at the end
    total = 0
    for xb, yb in batches(workload.test_set, max(workload.batch_size, 256), shuffle=False, device=device):
        pred = model(xb).argmax(dim=1)
        correct += (pred == yb).sum()
        total += len(yb)
    return int(correct) / total if total else 0.0
