"""A wide test model: 8 Linear layers, a LayerNorm and an Embedding, on scikit-learn's digits.

Importable as the workload ``tests.wide_workload:make`` (with the repository root on the
search path), so that real Ray workers build it as a user's workload.
"""

from __future__ import annotations

import torch
from torch import nn

from crest.tasks import Workload
from crest.tasks._data import digits

__all__ = ["LINEARS", "WideNet", "make"]

LINEARS = ["inp", *(f"blocks.{i}" for i in range(6)), "head"]
"""The Linear layers' module names, in model order."""


class WideNet(nn.Module):
    """64 -> 16 -> 6 x (16 -> 16) -> 10, with a LayerNorm and a one-row embedding added as a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 16)
        self.inp = nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.emb(torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        h = self.norm(torch.relu(h))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.head(h)


def make() -> Workload:
    """The wide model on digits (a few seconds of CPU training)."""
    train, test = digits()
    return Workload(
        name="wide-digits", build_model=WideNet, train_set=train, test_set=test,
        baseline_epochs=4, batch_size=64, lr=3e-3, description="8 Linear + LayerNorm + Embedding on digits",
    )
