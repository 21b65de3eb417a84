"""Where a trial runs: resolving ``device: auto | cpu | cuda``, moving batches, memory peaks.

Imports torch and the standard library only (no Ray: a worker outside Ray, such as the
GPU script, resolves ``auto`` from torch alone).
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from crest.exceptions import GpuUnavailableError

__all__ = ["DEVICE_SETTINGS", "count_workers", "device_name", "gpu_peak_bytes", "peak_rss_bytes", "reset_gpu_peak",
           "resolve_device", "synchronize", "to_device"]

logger = logging.getLogger(__name__)

DEVICE_SETTINGS = ("auto", "cpu", "cuda")


def _holds_gpu() -> bool:
    """True when this process may use a GPU: Ray gave it one (or a fraction), or, outside
    Ray, torch sees one."""
    ray = sys.modules.get("ray")  # only when Ray is already loaded: never import it here
    if ray is not None and ray.is_initialized():
        try:
            return len(ray.get_gpu_ids()) > 0 and torch.cuda.is_available()
        except RuntimeError as e:  # the driver process, not a worker: no GPU ids to read
            logger.debug("ray.get_gpu_ids() failed (%s); asking torch", e)
    return torch.cuda.is_available()


def resolve_device(setting: str | torch.device = "auto") -> torch.device:
    """The torch device a worker's trials run on.

    Args:
        setting: ``"auto"`` (``cuda`` when the worker holds a GPU, else ``cpu``), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"`` (under Ray, ``cuda`` is the GPU Ray assigned: Ray
            sets ``CUDA_VISIBLE_DEVICES``, so it is device 0 of the process).

    Returns:
        The device (``cuda`` resolves to ``cuda:<current device>``).

    Raises:
        GpuUnavailableError: ``cuda`` was asked for and torch sees no CUDA device.
        ValueError: an unknown setting.
    """
    text = str(setting)
    if text == "auto":
        text = "cuda" if _holds_gpu() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GpuUnavailableError(
                f"device '{text}' was asked for but torch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
            )
        dev = torch.device(text)
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    raise ValueError(f"device must be one of {', '.join(DEVICE_SETTINGS)} (or cuda:N), got {text!r}")


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:N``, as a trial records it."""
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def to_device(batch: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``batch`` on ``device``; a CPU batch bound for CUDA goes through pinned memory
    (asynchronous copy), so the host gathers the next batch while the GPU computes."""
    if device is None or batch.device == device:
        return batch
    if device.type == "cuda" and batch.device.type == "cpu":
        if not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    return batch.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_gpu_peak(device: torch.device) -> None:
    """Start counting the device's peak allocated bytes afresh (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_bytes(device: torch.device) -> int | None:
    """Peak bytes torch allocated on ``device`` since :func:`reset_gpu_peak`; None on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024



def count_workers(trials: Iterable[tuple[str | None, Mapping[str, Any] | None]]) -> dict[str, int]:
    """Distinct workers (``details["worker"]``, host:pid) that ran trials on a GPU and on the
    CPU, from recorded trials' ``(device, details)``; trials without a worker are skipped.

    Returns:
        ``{"gpu": n, "cpu": m}``.
    """
    seen: dict[str, set[str]] = {"gpu": set(), "cpu": set()}
    for device, details in trials:
        worker = details.get("worker") if isinstance(details, Mapping) else None
        if isinstance(worker, str) and isinstance(device, str):
            seen["cpu" if device == "cpu" else "gpu"].add(worker)
    return {k: len(v) for k, v in seen.items()}
