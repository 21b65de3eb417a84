"""A small torch model and its crest file, for the tests of the torch modules (CPU and CUDA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from crest.gpu import encode
from tests.format._corpus import weight

torch = pytest.importorskip("torch")
nn = torch.nn

__all__ = ["Net", "compressed_net", "quantize_"]


def quantize_(module: Any, rng: np.random.Generator, density: float) -> None:
    """Give a layer a pruned, weight-shared weight (few distinct values)."""
    with torch.no_grad():
        w = weight(rng, module.weight.shape[0], int(np.prod(module.weight.shape[1:])), density)
        module.weight.copy_(torch.from_numpy(w.reshape(module.weight.shape)))


class Net(nn.Module):  # type: ignore[misc]
    """Conv, batch norm, grouped conv without bias, two linear layers: ``[n, 3, 8, 8] -> [n, 5]``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False),
        )
        self.head = nn.Linear(8 * 4 * 4, 10)
        self.out = nn.Linear(10, 5)

    def forward(self, x: Any) -> Any:
        return self.out(torch.relu(self.head(self.features(x).flatten(1))))


def compressed_net(seed: int = 0) -> tuple[Any, bytes]:
    """A seeded :class:`Net` with pruned, weight-shared layers, and its crest file (the
    conv and linear weights sparse, everything else dense)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Net().eval()
    for m in (net.features[0], net.features[3], net.head, net.out):
        quantize_(m, rng, 0.3)
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    overrides = {k: {"encoding": "dense"} for k in state if not k.endswith("weight") or "features.1" in k}
    blob = encode(state, index_bits=4, code_bits=5, chunk_entries=32, overrides=overrides)
    return net, blob
