"""CompressedLinear, CompressedConv2d and load_model on the CPU (NumPy decoding)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from crest.exceptions import FormatError
from crest.gpu import encode, parse
from tests.gpu._corpus import weight

torch = pytest.importorskip("torch")
nn = torch.nn


def _quantize_(module: Any, rng: np.random.Generator, density: float) -> None:
    """Give a layer a pruned, weight-shared weight (few distinct values)."""
    with torch.no_grad():
        w = weight(rng, module.weight.shape[0], int(np.prod(module.weight.shape[1:])), density)
        module.weight.copy_(torch.from_numpy(w.reshape(module.weight.shape)))


class Net(nn.Module):  # type: ignore[misc]
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


def _net(seed: int = 0) -> tuple[Any, bytes]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Net().eval()
    for m in (net.features[0], net.features[3], net.head, net.out):
        _quantize_(m, rng, 0.3)
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    overrides = {k: {"encoding": "dense"} for k in state if not k.endswith("weight") or "features.1" in k}
    blob = encode(state, index_bits=4, code_bits=5, chunk_entries=32, overrides=overrides)
    return net, blob


def test_compressed_linear_matches_dense_on_cpu() -> None:
    from crest.gpu import CompressedLinear

    rng = np.random.default_rng(0)
    w = weight(rng, 20, 50, 0.2)
    b = rng.standard_normal(20).astype(np.float32)
    layer = CompressedLinear(parse(encode({"w": w}, chunk_entries=32))[0], b)
    x = torch.randn(3, 7, 50)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, torch.from_numpy(w), torch.from_numpy(b)))
    assert torch.equal(layer.decoded_weight(), torch.from_numpy(w))
    assert layer.compressed_bytes < w.nbytes
    names = {n for n, _ in layer.named_buffers()}
    assert names == {"codebook", "index_stream", "code_stream", "chunk_bounds"}
    assert "encoding=sparse" in repr(layer)


def test_compressed_conv2d_matches_dense_on_cpu() -> None:
    from crest.gpu import CompressedConv2d

    rng = np.random.default_rng(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    _quantize_(conv, rng, 0.4)
    enc = parse(encode({"w": conv.weight.detach().numpy()}))[0]
    layer = CompressedConv2d.from_conv(conv, enc, conv.bias.detach())
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x))


def test_module_argument_errors() -> None:
    from crest.gpu import CompressedConv2d, CompressedLinear

    ints = parse(encode({"i": np.array([[0, 1], [2, 0]], np.int32)}))[0]
    with pytest.raises(TypeError, match="float dtype"):
        CompressedLinear(ints)
    w = parse(encode({"w": np.ones((2, 3), np.float32)}))[0]
    with pytest.raises(ValueError, match="4 dimensions"):
        CompressedConv2d(w)
    with pytest.raises(ValueError, match="bias"):
        CompressedLinear(w, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="EncodedTensor"):
        CompressedLinear(np.ones((2, 3)))  # type: ignore[arg-type]


def test_dense_stored_weight_works_too() -> None:
    from crest.gpu import CompressedLinear

    w = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    layer = CompressedLinear(parse(encode({"w": w}, overrides={"w": {"encoding": "dense"}}))[0])
    assert layer.weight_encoding == "dense"
    x = torch.randn(6)
    torch.testing.assert_close(layer(x), torch.from_numpy(w) @ x)


def test_load_model_swaps_layers_and_loads_the_rest() -> None:
    from crest.gpu import CompressedConv2d, CompressedLinear, load_model

    net, blob = _net()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    fresh = Net().eval()
    assert load_model(blob, fresh) is fresh
    assert isinstance(fresh.features[0], CompressedConv2d) and isinstance(fresh.features[3], CompressedConv2d)
    assert isinstance(fresh.head, CompressedLinear) and isinstance(fresh.out, CompressedLinear)
    assert fresh.features[3].bias is None and fresh.features[3].groups == 2
    assert isinstance(fresh.features[1], nn.BatchNorm2d)
    torch.testing.assert_close(fresh.features[1].running_var, net.features[1].running_var)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, rtol=1e-5, atol=1e-5)


def test_load_model_rejects_a_mismatched_model() -> None:
    from crest.gpu import load_model

    _, blob = _net()

    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8 * 4 * 4, 11)

    with pytest.raises(FormatError, match="shape"):
        load_model(blob, Wider())

    class Extra(Net):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(FormatError, match="lacks 2 of the model's tensors"):
        load_model(blob, Extra())
    load_model(blob, Extra(), strict=False)
    small = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(FormatError, match="does not have"):
        load_model(blob, small)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        load_model(blob, object())
