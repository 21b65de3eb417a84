"""A finished trial, as a worker returns it to the driver: plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrialOutcome"]

@dataclass
class TrialOutcome:
    """A finished trial: the artifact bytes and what was measured on their decoded form.

    ``layers`` maps each tensor name to {"sparsity" (fraction of zeros), "bits" (code
    width, or None when not quantized), "encoding", "index_bits", "nonzeros"}.
    ``transport_bytes`` is the size of the Huffman-coded transport form
    (:func:`crest.gpu.to_transport`); ``size_bytes`` is the GPU-resident file.
    ``size_bounds`` is what a step-by-step run reported before retraining (low, high bytes).
    ``device`` is where the trial ran (``cpu``, ``cuda:0``); ``details`` holds its
    measurements as a small JSON object: ``timings`` (seconds per phase), ``latency``,
    ``peak_rss_bytes``, ``fit_warning`` (each optional).
    """

    blob: bytes
    accuracy: float
    accuracy_drop: float
    size_bytes: int
    ratio: float
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    transport_bytes: int | None = None
    size_bounds: tuple[int, int] | None = None
    device: str = "cpu"
    details: dict[str, Any] = field(default_factory=dict)
