"""Published results drawn beside a study's own: Deep Compression on the LeNets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["PublishedPoint", "published_points"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedPoint:
    """A compressed model's size and accuracy change as a paper reports them.

    Attributes:
        label: what the legend says.
        size_bytes: the compressed size (the paper's KB are 1,000 bytes).
        ratio: the paper's compression rate over its dense fp32 model.
        accuracy_change: compressed minus reference top-1 accuracy, as a fraction
            (+0.0006 = 0.06 points better).
        note: where the numbers come from, and why they are not directly comparable.
    """

    label: str
    size_bytes: int
    ratio: float
    accuracy_change: float
    note: str


_SOURCE = "Han et al., Deep Compression, ICLR 2016, Table 1"
_FULL_MNIST = "full MNIST (10,000 test images); crest's built-in workloads use a 5,000-image subset"

# Table 1: LeNet-300-100 1070 KB -> 27 KB (40x), top-1 error 1.64% -> 1.58%;
# LeNet-5 1720 KB -> 44 KB (39x), top-1 error 0.80% -> 0.74%.
_PUBLISHED = {
    "lenet300-mnist": PublishedPoint(
        "Deep Compression (paper): 27 KB, 40x, error 1.64% -> 1.58%", 27_000, 40.0, 0.0006,
        f"{_SOURCE}; {_FULL_MNIST}",
    ),
    "lenet5-mnist": PublishedPoint(
        "Deep Compression (paper): 44 KB, 39x, error 0.80% -> 0.74%", 44_000, 39.0, 0.0006,
        f"{_SOURCE}; {_FULL_MNIST}",
    ),
}


def published_points(workload: str) -> list[PublishedPoint]:
    """The published points for a built-in workload (none for others)."""
    point = _PUBLISHED.get(workload)
    return [point] if point is not None else []
