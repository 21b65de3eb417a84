"""Inference time of a trial's compressed model on the worker's device.

Two forms of the same artifact are timed: the model with its weights decoded to dense
tensors, and the model whose sparse Linear/Conv2d weights stay compressed
(:class:`crest.gpu.CompressedLinear` / :class:`crest.gpu.CompressedConv2d`, decoded on
the fly in every forward; on CUDA at batch <= 16 a Linear runs the fused decode-and-
multiply kernel). Each is timed at batch 1 and at the workload's batch size: after
``warmup`` forwards, the median wall time of ``repeats`` forwards, the device
synchronised around each.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
from torch import nn

from crest import gpu
from crest.tasks._device import synchronize
from crest.tasks._latency_options import LATENCY_OBJECTIVE, LatencyOptions
from crest.tasks._lowrank import apply_structure
from crest.tasks._train import batches
from crest.tasks._workload import Workload

__all__ = ["LATENCY_OBJECTIVE", "LatencyOptions", "measure_latency", "median_ms"]

logger = logging.getLogger(__name__)

@torch.no_grad()
def median_ms(model: nn.Module, x: torch.Tensor, *, warmup: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``model(x)`` over ``repeats`` runs after ``warmup`` runs.

    Args:
        model: in eval mode, on ``device``.
        x: one input batch on ``device``.
        warmup, repeats: counts (repeats >= 1).
        device: synchronised before and after each timed run (CUDA kernels are async).
    """
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(max(1, repeats)):
        synchronize(device)
        t0 = time.perf_counter()
        model(x)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def _sample(workload: Workload, device: torch.device) -> torch.Tensor:
    """The first test batch (the workload's batch size) on ``device``."""
    for xb, _ in batches(workload.test_set, workload.batch_size, shuffle=False, device=device):
        return xb
    raise ValueError("the workload's test data is empty")


def measure_latency(
    dense: nn.Module,
    blob: bytes,
    workload: Workload,
    structure: dict[str, Any] | None,
    device: torch.device,
    options: LatencyOptions,
) -> dict[str, Any]:
    """Time the artifact's model, dense and compressed, at batch 1 and the batch size.

    Args:
        dense: the model holding the artifact's decoded tensors, on ``device``.
        blob: the artifact (the compressed modules are built from it).
        workload: builds the model and supplies an input batch (its test data).
        structure: the artifact's low-rank structure (None: unfactorised).
        device: where both run.
        options: warm-up and repeats.

    Returns:
        ``{"batch_size", "warmup", "repeats", "dense_b1_ms", "dense_batch_ms",
        "compressed_b1_ms", "compressed_batch_ms", "compressed_layers", "seconds"}``
        (milliseconds, median; ``compressed_layers``: how many layers stayed compressed).
    """
    start = time.perf_counter()
    x = _sample(workload, device)
    model = workload.build_model()
    if structure:
        apply_structure(model, structure)
    model.to(device)
    compressed = gpu.load_model(blob, model)
    compressed.eval()
    layers = sum(1 for m in compressed.modules() if isinstance(m, (gpu.CompressedLinear, gpu.CompressedConv2d)))
    out: dict[str, Any] = {"batch_size": int(x.shape[0]), "warmup": options.warmup, "repeats": options.repeats,
                           "compressed_layers": layers}
    for label, net in (("dense", dense), ("compressed", compressed)):
        net.eval()
        for suffix, inputs in (("b1", x[:1]), ("batch", x)):
            out[f"{label}_{suffix}_ms"] = round(
                median_ms(net, inputs, warmup=options.warmup, repeats=options.repeats, device=device), 4)
    out["seconds"] = round(time.perf_counter() - start, 4)
    return out
