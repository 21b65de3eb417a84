"""Centroid fine-tuning after k-means weight sharing (Deep Compression, section 3.1).

Each quantized layer keeps its labels fixed; the gradient of a shared value is the sum
of the gradients of the weights that use it, so the values stay shared and zeros
(label 0) stay zero. Unquantized parameters (biases, layers left dense) train too,
with their masks held.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from crest.tasks._adam import Adam
from crest.tasks._train import fit_epoch_steps
from crest.tasks._workload import Workload

__all__ = ["finetune_centroids"]

_TINY = float(np.finfo(np.float32).tiny)


def finetune_centroids(
    model: nn.Module,
    workload: Workload,
    codebooks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    lr: float,
    seed: int,
    masks: Mapping[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> dict[str, np.ndarray]:
    """Fine-tune the shared values of quantized layers in place.

    Args:
        model: the model, its quantized weights already equal to ``codebook[labels]``.
        workload: training data, batch size and loss.
        codebooks: parameter name -> (labels int64 of the weight's shape, 0 = zero;
            codebook float32 [k + 1] with codebook[0] == 0).
        epochs: passes over the training set (0: nothing changes).
        lr: Adam learning rate of the shared values and the other parameters.
        seed: seeds the shuffle.
        masks: held masks of the other (unquantized) parameters.
        teacher, distill_weight, temperature: optional distillation, as in
            :func:`crest.tasks.train`.

    Returns:
        parameter name -> the final codebook (float32 [k + 1], codebook[0] == 0).
    """
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    labels = {n: torch.from_numpy(np.asarray(lab, dtype=np.int64)).to(device).reshape(-1) for n, (lab, _) in codebooks.items()}
    values = {
        n: nn.Parameter(torch.from_numpy(np.asarray(cb[1:], dtype=np.float32)).to(device).clone())
        for n, (_, cb) in codebooks.items()
    }
    held = {n: m.to(device) for n, m in (masks or {}).items() if n not in codebooks}
    others = [p for n, p in params.items() if n not in codebooks]

    def write() -> None:
        with torch.no_grad():
            for n, v in values.items():
                v[v == 0] = _TINY
                table = torch.cat([torch.zeros(1, device=device), v])
                params[n].copy_(table[labels[n]].reshape(params[n].shape))

    if epochs <= 0 or not values:
        write()
        return {n: np.concatenate([[0.0], v.detach().cpu().numpy()]).astype(np.float32) for n, v in values.items()}
    def shared_gradients() -> None:
        """Each shared value's gradient is the sum over the weights that use it."""
        for n, v in values.items():
            grad = params[n].grad
            if grad is None:
                continue
            summed = torch.zeros(v.numel() + 1, device=device, dtype=grad.dtype)
            summed.index_add_(0, labels[n], grad.reshape(-1))
            v.grad = summed[1:]
            params[n].grad = None

    opt = Adam([*values.values(), *others], lr=lr)
    write()
    for _ in fit_epoch_steps(model, workload, opt, epochs=epochs, seed=seed, held=held, teacher=teacher,
                             distill_weight=distill_weight, temperature=temperature,
                             after_backward=shared_gradients, after_step=write):
        pass
    return {n: np.concatenate([[0.0], v.detach().cpu().numpy()]).astype(np.float32) for n, v in values.items()}
