"""The CUDA kernels on a real device: bit-exact decoding, the fused product, torch glue.

Every test here needs CuPy and a CUDA device (``gpu`` marker; skipped with the reason
elsewhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import crest.gpu
from crest.gpu import decode, encode, gpu_unavailable_reason, parse, sparse_matmul, to_device
from tests.format._corpus import BLOBS, bits, corpus, weight

pytestmark = pytest.mark.gpu
_REASON = gpu_unavailable_reason()
if _REASON is not None:  # also skip when collected without the repository's conftest hook
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=_REASON)]

CORPUS = corpus(seed=1, count=80)


def _same(got: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    import cupy as cp

    assert list(got) == list(want)
    for name, ref in want.items():
        arr = got[name]
        assert isinstance(arr, cp.ndarray), name
        host = cp.asnumpy(arr)
        assert host.dtype == ref.dtype and host.shape == ref.shape, name
        assert np.array_equal(bits(host), bits(ref)), name


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_cuda_decode_is_bit_exact(case: tuple[str, bytes, dict[str, np.ndarray]]) -> None:
    _, blob, _ = case
    _same(decode(blob, device="cuda"), decode(blob))


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_cuda_decode_fuzz_corpus_blobs(name: str) -> None:
    blob = BLOBS[name][0]
    _same(decode(blob, device="cuda"), decode(blob))


@pytest.mark.parametrize("chunk", [32, 256, 1024, 4096, 65536])
@pytest.mark.parametrize("index_bits,code_bits", [(4, 5), (8, 8), (16, 3), (1, 1), (3, 16)])
def test_cuda_decode_layer_sized(chunk: int, index_bits: int, code_bits: int) -> None:
    rng = np.random.default_rng(chunk + index_bits)
    w = weight(rng, 512, 1200, 0.09, n_values=min(31, (1 << code_bits) - 1))
    blob = encode({"w": w, "h": w.astype(np.float16)}, index_bits=index_bits, code_bits=code_bits, chunk_entries=chunk)
    _same(decode(blob, device="cuda"), decode(blob))


def test_cuda_decode_to_float16_matches_numpy_astype() -> None:
    rng = np.random.default_rng(5)
    w = weight(rng, 300, 700, 0.09)
    w[0, :5] = [1e-8, 7e4, -1e-30, 65504.0, 3e38]  # underflow, overflow to inf, rounding
    b = rng.standard_normal(300).astype(np.float32)
    i = np.arange(10, dtype=np.int32)
    blob = encode({"w": w, "b": b, "i": i}, index_bits=4, code_bits=5, overrides={"b": {"encoding": "dense"}})
    got = decode(blob, device="cuda", dtype="float16")
    ref = decode(blob, dtype="float16")
    _same(got, ref)
    assert got["i"].dtype == np.int32


def test_torch_cuda_output_through_dlpack() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA build here")
    rng = np.random.default_rng(6)
    tensors = {"w": weight(rng, 64, 90, 0.1), "m": rng.random(33) < 0.5, "h": weight(rng, 5, 7, 0.5).astype(np.float16)}
    blob = encode(tensors, chunk_entries=32)
    got = decode(blob, device="torch:cuda")
    for name, ref in tensors.items():
        t = got[name]
        assert isinstance(t, torch.Tensor) and t.is_cuda, name
        assert np.array_equal(bits(t.cpu().numpy()), bits(ref)), name
    half = decode(blob, device="torch:cuda", dtype="float16")
    assert half["w"].dtype == torch.float16


def test_auto_picks_the_gpu_and_device_index() -> None:
    import cupy as cp

    blob = encode({"w": np.array([0, 1.5, 0, 0, 2.5], np.float32)})
    assert isinstance(decode(blob, device="auto")["w"], cp.ndarray)
    assert isinstance(decode(blob, device="cuda:0")["w"], cp.ndarray)
    assert crest.gpu.gpu_unavailable_reason() is None


def test_max_output_bytes_checked_before_the_gpu() -> None:
    blob = encode({"w": np.zeros(1000, np.float32)})
    with pytest.raises(crest.gpu.FormatError, match="max_output_bytes"):
        decode(blob, device="cuda", max_output_bytes=3999)


@pytest.mark.parametrize("batch", [None, 1, 8, 16, 20])
@pytest.mark.parametrize("index_bits,chunk", [(4, 1024), (2, 32), (16, 64), (8, 4096)])
def test_fused_product_matches_numpy(batch: int | None, index_bits: int, chunk: int) -> None:
    import cupy as cp

    rng = np.random.default_rng(index_bits * 100 + (batch or 0))
    w = weight(rng, 300, 2000, 0.09)
    t = parse(encode({"w": w}, index_bits=index_bits, code_bits=5, chunk_entries=chunk))[0]
    x = rng.standard_normal(2000 if batch is None else (2000, batch)).astype(np.float32)
    want = sparse_matmul(t, x)
    dt = to_device(t)
    for enc in (t, dt):
        got = sparse_matmul(enc, cp.asarray(x))
        assert isinstance(got, cp.ndarray) and got.dtype == cp.float32 and got.shape == want.shape
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-4, atol=1e-4)


def test_fused_product_narrow_rows_and_fp16() -> None:
    """Rows shorter than a warp's entries (many rows per warp) use the per-run atomics."""
    import cupy as cp

    rng = np.random.default_rng(9)
    w = weight(rng, 4000, 24, 0.5).astype(np.float16)
    t = parse(encode({"w": w}, index_bits=3, code_bits=5, chunk_entries=256))[0]
    x = rng.standard_normal((24, 3)).astype(np.float16)
    got = sparse_matmul(t, cp.asarray(x))
    assert got.dtype == cp.float16
    want = w.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(cp.asnumpy(got).astype(np.float64), want, rtol=1e-2, atol=1e-2)


def test_fused_product_torch_cuda_input() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA build here")
    rng = np.random.default_rng(10)
    w = weight(rng, 128, 512, 0.1)
    t = parse(encode({"w": w}))[0]
    x = torch.randn(512, 4, device="cuda")
    y = sparse_matmul(t, x)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    torch.testing.assert_close(y, torch.from_numpy(w).cuda() @ x, rtol=1e-4, atol=1e-4)


def test_compressed_modules_on_cuda_match_dense() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA build here")
    from crest.gpu import CompressedConv2d, CompressedLinear

    rng = np.random.default_rng(11)
    w = weight(rng, 96, 400, 0.1)
    b = rng.standard_normal(96).astype(np.float32)
    layer = CompressedLinear(parse(encode({"w": w}))[0], b).cuda()
    dense = torch.nn.Linear(400, 96).cuda()
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(w))
        dense.bias.copy_(torch.from_numpy(b))
        for shape in [(400,), (1, 400), (8, 400), (2, 8, 400), (64, 400)]:  # fused up to 16 rows
            x = torch.randn(*shape, device="cuda")
            torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)
        assert torch.equal(layer.decoded_weight().cpu(), torch.from_numpy(w))
    conv = torch.nn.Conv2d(6, 12, 3, padding=1, groups=3).cuda()
    cw = weight(rng, 12, 2 * 3 * 3, 0.3).reshape(12, 2, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(cw))
    cl = CompressedConv2d.from_conv(conv, parse(encode({"c": cw}))[0], conv.bias.detach().cpu()).cuda()
    x = torch.randn(2, 6, 10, 10, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(cl(x), conv(x), rtol=1e-4, atol=1e-4)
    half = layer.half()
    xh = torch.randn(4, 400, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        torch.testing.assert_close(half(xh), dense.half()(xh), rtol=2e-2, atol=2e-2)


def test_load_model_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA build here")
    from crest.gpu import CompressedLinear, load_model
    from tests.gpu._nets import Net, compressed_net

    net, blob = compressed_net(3)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    model = load_model(blob, Net().eval().cuda())
    assert isinstance(model.head, CompressedLinear) and model.head.index_stream.is_cuda
    with torch.no_grad():
        torch.testing.assert_close(model(x.cuda()).cpu(), want, rtol=1e-4, atol=1e-4)
