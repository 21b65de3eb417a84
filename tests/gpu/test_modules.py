"""CompressedLinear, CompressedConv2d and load_model on the CPU (NumPy decoding)."""

from __future__ import annotations

from pathlib import Path

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


def _layer(seed: int, *, rows: int = 40, cols: int = 50) -> tuple[object, np.ndarray]:
    from crest.gpu import CompressedLinear

    w = weight(np.random.default_rng(seed), rows, cols, 0.2, n_values=20)  # codes 21..31 are out of range
    return CompressedLinear(parse(encode({"w": w}, index_bits=8, chunk_entries=32))[0]), w


def _tamper(kind: str, state: dict[str, object]) -> None:
    bounds, index, code, book = (state[k] for k in ("chunk_bounds", "index_stream", "code_stream", "codebook"))
    if kind == "chunk table offsets shifted":
        bounds[1:-1] += 7
    elif kind == "a chunk base moved back":
        bounds[2] = bounds[1]
    elif kind == "negative chunk base":
        bounds[1] = -1000
    elif kind == "bounds end past the tensor":
        bounds[-1] += 1
    elif kind == "gap bits flipped: positions past the tensor":
        index[-16:] = 0xFF
    elif kind == "gap bits flipped in the middle":
        index[len(index) // 2] ^= 0xFF
    elif kind == "code beyond the codebook":
        code[:4] = 0xFF
    elif kind == "codebook[0] not zero":
        book[0] = 1.0
    elif kind == "truncated code stream":
        state["code_stream"] = code[:-8].clone()
    elif kind == "streams of another dtype":
        state["index_stream"] = index.to(torch.int32)
    else:
        raise AssertionError(kind)


TAMPERS = [
    "chunk table offsets shifted", "a chunk base moved back", "negative chunk base", "bounds end past the tensor",
    "gap bits flipped: positions past the tensor", "gap bits flipped in the middle", "code beyond the codebook",
    "codebook[0] not zero", "truncated code stream", "streams of another dtype",
]


@pytest.mark.parametrize("kind", TAMPERS)
def test_a_tampered_state_dict_is_refused_and_changes_nothing(kind: str) -> None:
    layer, w = _layer(3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    _tamper(kind, state)
    with pytest.raises(FormatError):
        layer.load_state_dict(state)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(layer.decoded_weight(), torch.from_numpy(w))


def test_a_tampered_state_dict_is_refused_inside_a_model() -> None:
    from crest.gpu import load_model

    net, blob = compressed_net()
    fresh = load_model(blob, Net().eval())
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    state["head.chunk_bounds"][1:-1] += 3
    with pytest.raises(FormatError, match="head"):
        fresh.load_state_dict(state)


def test_an_honest_state_dict_of_another_pattern_replaces_the_launch_plan() -> None:
    """Another weight of the same stored sizes (rows permuted: other gaps and chunk bases)
    loads, and the module then computes with it, not with a plan cached for the old one."""
    layer, w = _layer(5)
    from crest.gpu import CompressedLinear

    other = w[::-1].copy()
    donor = CompressedLinear(parse(encode({"w": other}, index_bits=8, chunk_entries=32))[0])
    assert not torch.equal(donor.chunk_bounds, layer.chunk_bounds)
    layer.load_state_dict(donor.state_dict())
    assert torch.equal(layer.decoded_weight(), torch.from_numpy(other))
    x = torch.randn(3, 50)
    torch.testing.assert_close(layer(x), x @ torch.from_numpy(other).t())


def test_load_model_checks_shapes_before_decoding(tmp_path: Path) -> None:
    """A file declaring a 1 GiB tensor under a model's name is refused before decoding it."""
    from tests.format import _bombs

    shapes = {k: tuple(v.shape) for k, v in Net().state_dict().items()}
    entries = [_bombs.empty_sparse(k, (2**28,) if k == "features.1.running_var" else s) for k, s in shapes.items()]
    blob = _bombs.artifact(entries, {})
    c = _bombs.cost("from crest.gpu import load_model\nfrom tests.gpu._nets import Net",
                    "load_model(DATA, Net())", data=blob, tmp_path=tmp_path, trace=True)
    assert c.error == "FormatError" and "shape" in c.message, c
    assert c.cheap(), c
