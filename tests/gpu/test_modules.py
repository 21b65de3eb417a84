"""CompressedLinear, CompressedConv2d and load_model on the CPU (NumPy decoding)."""

from __future__ import annotations

import numpy as np
import pytest

from crest.exceptions import FormatError
from crest.gpu import encode, parse
from tests.format._corpus import weight
from tests.gpu._nets import Net, compressed_net, quantize_  # skips this module without torch

torch = pytest.importorskip("torch")
nn = torch.nn


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
    quantize_(conv, rng, 0.4)
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

    net, blob = compressed_net()
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

    _, blob = compressed_net()

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
