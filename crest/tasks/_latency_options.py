"""What a trial's latency objective is called, and how it is timed: no torch, so that the
driver reads them without importing it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATENCY_OBJECTIVE", "LatencyOptions"]

# the value ``objectives: [.., latency]`` minimises: compressed modules, batch 1, ms
LATENCY_OBJECTIVE = "compressed_b1_ms"


@dataclass(frozen=True)
class LatencyOptions:
    """How a trial times its model (``latency:`` in the sweep file).

    Attributes:
        enabled: measure at all.
        warmup: untimed forwards before each measurement.
        repeats: timed forwards; the median is reported.
    """

    enabled: bool = True
    warmup: int = 2
    repeats: int = 5
