"""The GPU kernels' algorithm, run with ``xp=numpy``, against the NumPy reference decoder.

Same decomposition as ``kernels.cu``: chunk base + in-chunk inclusive scan of gap + 1,
codebook gather, region writes that must tile the output (checked by starting from a
poisoned buffer), staged vs zero-filled regions as planned for the kernels. Also the
NumPy path of ``sparse_matmul`` and the device argument of ``decode`` (CPU only).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crest.gpu
from crest.exceptions import GpuUnavailableError
from crest.format import _bits
from crest.gpu import _probe, _xp, decode, encode, parse, sparse_matmul
from tests.format._corpus import BLOBS, bits, corpus, sparse_array, weight
from tests.format._isolation import run_blocked

CORPUS = corpus()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_xp_decode(blob: bytes, stage_cap: int = _xp.STAGE_CAP_BYTES) -> None:
    ref = decode(blob)
    for t in parse(blob):
        if t.encoding != "sparse":
            continue
        got = _xp.decode_sparse_xp(t, np, stage_cap=stage_cap, poison=True)
        want = ref[t.name]
        assert got.dtype == want.dtype and got.shape == want.shape, t.name
        assert np.array_equal(bits(got), bits(want)), t.name


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_xp_decode_matches_reference_on_corpus(case: tuple[str, bytes, dict[str, np.ndarray]]) -> None:
    _check_xp_decode(case[1])


@pytest.mark.parametrize("stage_cap", [0, 64, 1024])
@pytest.mark.parametrize("case", CORPUS[::5], ids=[c[0] for c in CORPUS[::5]])
def test_xp_decode_with_big_regions(case: tuple[str, bytes, dict[str, np.ndarray]], stage_cap: int) -> None:
    """Small shared-memory budgets force the zero-fill-and-scatter path for most chunks."""
    _check_xp_decode(case[1], stage_cap)


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_xp_decode_on_fuzz_corpus_blobs(name: str) -> None:
    _check_xp_decode(BLOBS[name][0])
    _check_xp_decode(BLOBS[name][0], stage_cap=0)


@FAST
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(["float16", "float32", "int8", "uint16", "int64", "bool"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
        elements=None,
    ),
    index_bits=st.integers(1, 16),
    code_bits=st.integers(1, 8),
    chunk=st.sampled_from([32, 64, 256]),
    stage_cap=st.sampled_from([0, 96, _xp.STAGE_CAP_BYTES]),
)
def test_xp_decode_property(arr: np.ndarray, index_bits: int, code_bits: int, chunk: int, stage_cap: int) -> None:
    blob = encode({"t": arr}, index_bits=index_bits, code_bits=code_bits, chunk_entries=chunk)
    _check_xp_decode(blob, stage_cap)


@pytest.mark.parametrize("width", range(1, 17))
def test_unpack_xp_matches_reference_unpack(width: int) -> None:
    rng = np.random.default_rng(width)
    values = rng.integers(0, 1 << width, 1000, dtype=np.uint16)
    stream = _bits.pack(values, width)
    words = stream.view("<u4").astype(np.uint32)
    for count in (0, 1, 7, 999, 1000):
        assert np.array_equal(_xp.unpack_xp(words, width, count, np), _bits.unpack(stream, width, count))


def test_positions_are_per_chunk_scans_from_the_stored_base() -> None:
    x = np.zeros(5000, np.float32)
    x[[0, 1, 700, 4999]] = [1, 2, 3, 4]
    t = parse(encode({"x": x}, index_bits=2, code_bits=3, chunk_entries=32))[0]
    pos, codes = _xp.positions_xp(t, np)
    assert t.n_chunks > 3
    real = pos[codes != 0]
    assert real.tolist() == [0, 1, 700, 4999]
    bounds = _xp.chunk_bounds(t)
    assert bounds[0] == 0 and bounds[-1] == x.size
    # each chunk's positions lie in its own region
    chunk = np.arange(pos.shape[0]) // 32
    assert np.all((pos >= bounds[chunk]) & (pos < bounds[chunk + 1]))


def test_plan_regions_rule() -> None:
    bounds = np.array([0, 10, 5000, 5016, 100_000], np.int64)
    plan = _xp.plan_regions(bounds, 4, stage_cap=1024)
    # regions in bytes: 40, 19960, 64, 379936; staged iff bytes + 32 <= stage_bytes
    assert plan.big.tolist() == [1, 3]
    assert plan.stage_bytes == 96 and plan.stage_bytes % 16 == 0
    assert plan.big_starts.tolist() == [10, 5016] and plan.big_ends.tolist() == [5000, 100_000]
    none = _xp.plan_regions(bounds, 8, stage_cap=0)
    assert none.stage_bytes == 0 and none.big.tolist() == [0, 1, 2, 3]
    assert _xp.launch_shape(32) == (32, 1) and _xp.launch_shape(1024) == (256, 4)
    assert _xp.launch_shape(65536) == (256, 256)


def test_fc6_like_layer_stages_every_chunk() -> None:
    """At AlexNet-fc6 statistics every region fits the 64 KB staging budget."""
    rng = np.random.default_rng(0)
    w = weight(rng, 256, 9216, 0.09)
    t = parse(encode({"w": w}, index_bits=4, code_bits=5))[0]
    for itemsize in (2, 4):
        plan = _xp.plan_regions(_xp.chunk_bounds(t), itemsize)
        assert plan.big.size == 0 and 0 < plan.stage_bytes <= _xp.STAGE_CAP_BYTES


# ----------------------------------------------------------------- sparse_matmul on NumPy


@pytest.mark.parametrize("batch", [None, 1, 3, 16, 20])
@pytest.mark.parametrize("index_bits,chunk", [(4, 1024), (1, 32), (16, 64)])
def test_sparse_matmul_numpy_matches_dense(batch: int | None, index_bits: int, chunk: int) -> None:
    rng = np.random.default_rng(index_bits + (batch or 0))
    w = weight(rng, 37, 301, 0.1)
    t = parse(encode({"w": w}, index_bits=index_bits, code_bits=5, chunk_entries=chunk))[0]
    x = rng.standard_normal(301 if batch is None else (301, batch)).astype(np.float32)
    y = sparse_matmul(t, x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == ((37,) if batch is None else (37, batch))
    np.testing.assert_allclose(y, w.astype(np.float64) @ x.astype(np.float64), rtol=1e-5, atol=1e-5)
    y_xp = _xp.sparse_matmul_xp(t, x, np)
    np.testing.assert_allclose(y_xp, w.astype(np.float64) @ x.astype(np.float64), rtol=1e-12, atol=1e-9)


def test_sparse_matmul_numpy_dense_fp16_and_conv_shapes() -> None:
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((8, 12)).astype(np.float32)
    t = parse(encode({"w": dense}, overrides={"w": {"encoding": "dense"}}))[0]
    x = rng.standard_normal(12).astype(np.float64)
    np.testing.assert_allclose(sparse_matmul(t, x), dense.astype(np.float64) @ x, rtol=1e-12)
    half = weight(rng, 6, 20, 0.4).astype(np.float16)
    th = parse(encode({"w": half}))[0]
    xh = rng.standard_normal((20, 2)).astype(np.float16)
    y = sparse_matmul(th, xh)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), half.astype(np.float64) @ xh.astype(np.float64), rtol=2e-3, atol=2e-3)
    conv = weight(rng, 4, 3 * 3 * 3, 0.3).reshape(4, 3, 3, 3)
    tc = parse(encode({"c": conv}))[0]
    xc = rng.standard_normal(27).astype(np.float32)
    np.testing.assert_allclose(sparse_matmul(tc, xc), conv.reshape(4, 27) @ xc, rtol=1e-5, atol=1e-5)
    empty = parse(encode({"e": np.zeros((5, 0), np.float32), "z": np.zeros((3, 4), np.float32)}))
    assert sparse_matmul(empty[0], np.zeros(0, np.float32)).tolist() == [0.0] * 5
    assert sparse_matmul(empty[1], np.ones((4, 2), np.float32)).tolist() == [[0.0, 0.0]] * 3


def test_sparse_matmul_errors() -> None:
    t = parse(encode({"w": weight(np.random.default_rng(2), 4, 5, 0.5)}))[0]
    with pytest.raises(ValueError, match=r"\[5\] or \[5, batch\]"):
        sparse_matmul(t, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="floating"):
        sparse_matmul(t, np.zeros(5, np.int32))
    with pytest.raises(TypeError, match="NumPy, CuPy or torch"):
        sparse_matmul(t, [0.0] * 5)
    scalar = parse(encode({"s": np.float32(1.0)}))[0]
    with pytest.raises(ValueError, match="scalar"):
        sparse_matmul(scalar, np.zeros(1, np.float32))


def test_sparse_matmul_torch_cpu_returns_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w = weight(rng, 9, 33, 0.2)
    t = parse(encode({"w": w}))[0]
    x = torch.randn(33, 4)
    y = sparse_matmul(t, x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and tuple(y.shape) == (9, 4)
    torch.testing.assert_close(y, torch.from_numpy(w) @ x, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ decode devices


def test_decode_cpu_default_and_float16_output() -> None:
    rng = np.random.default_rng(4)
    tensors: dict[str, Any] = {
        "w": weight(rng, 30, 40, 0.2),
        "b": rng.standard_normal(30).astype(np.float32),
        "m": sparse_array(rng, (50,), 0.3, 1, "bool"),
        "i": sparse_array(rng, (60,), 0.3, 7, "int32"),
    }
    blob = encode(tensors, overrides={"b": {"encoding": "dense"}})
    for device in ("cpu", "numpy"):
        out = decode(blob, device=device)
        assert all(np.array_equal(bits(out[k]), bits(v)) for k, v in tensors.items())
    half = decode(blob, dtype="float16")
    assert half["w"].dtype == np.float16 and half["b"].dtype == np.float16
    assert np.array_equal(bits(half["w"]), bits(tensors["w"].astype(np.float16)))
    assert half["m"].dtype == np.bool_ and half["i"].dtype == np.int32  # non-floats kept


def test_decode_auto_without_a_device_is_numpy() -> None:
    if crest.gpu.gpu_unavailable_reason() is None:
        pytest.skip("a CUDA device is present: auto picks it (covered by test_cupy.py)")
    blob = encode({"w": np.array([0, 1.5, 0], np.float32)})
    out = decode(blob, device="auto")
    assert isinstance(out["w"], np.ndarray) and out["w"].tolist() == [0, 1.5, 0]


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        ({"device": "gpu"}, ValueError, "device must be one of"),
        ({"device": "cuda:x"}, ValueError, "index"),
        ({"device": 3}, TypeError, "device must be a str"),
        ({"dtype": "int8"}, ValueError, "float16, float32 or float64"),
        ({"dtype": "nonsense"}, ValueError, "float16, float32 or float64"),
    ],
)
def test_decode_argument_errors(kwargs: dict[str, Any], exc: type[Exception], needle: str) -> None:
    blob = encode({"w": np.array([0, 1.5, 0], np.float32)})
    with pytest.raises(exc, match=needle):
        decode(blob, **kwargs)


class _FakeCupy:
    def __init__(self, available: bool | Exception) -> None:
        self.available = available

    def is_available(self) -> bool:
        if isinstance(self.available, Exception):
            raise self.available
        return self.available


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """The CuPy probe forgets its cached answer before and after the test."""
    _probe.probe_cupy.cache_clear()
    yield
    _probe.probe_cupy.cache_clear()


@pytest.mark.parametrize(
    "fake,needle",
    [
        (_FakeCupy(False), "CuPy sees no CUDA device"),
        (_FakeCupy(RuntimeError("cudaErrorInsufficientDriver")), "CuPy cannot use a device"),
    ],
)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_gpu_unavailable_error_names_the_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None, fake: _FakeCupy, needle: str, device: str
) -> None:
    monkeypatch.setattr(_probe, "_import_cupy", lambda: fake)
    blob = encode({"w": np.array([0, 1.5, 0], np.float32)})
    with pytest.raises(GpuUnavailableError, match=needle):
        decode(blob, device=device)
    assert needle in (crest.gpu.gpu_unavailable_reason() or "")
    t = parse(blob)[0]
    with pytest.raises(GpuUnavailableError, match=needle):
        crest.gpu.to_device(t)
    # auto falls back to NumPy
    assert isinstance(decode(blob, device="auto")["w"], np.ndarray)


def test_cupy_is_probed_once_per_process(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    imports: list[int] = []

    def fake_import() -> _FakeCupy:
        imports.append(1)
        return _FakeCupy(False)

    monkeypatch.setattr(_probe, "_import_cupy", fake_import)
    blob = encode({"w": np.array([0, 1.5, 0], np.float32)})
    for _ in range(3):
        assert crest.gpu.gpu_unavailable_reason() == "CuPy sees no CUDA device"
        assert isinstance(decode(blob, device="auto")["w"], np.ndarray)
    probe = crest.gpu.probe_cupy()
    assert isinstance(probe.module, _FakeCupy) and not probe.available
    assert len(imports) == 1


def test_gpu_unavailable_error_without_cupy() -> None:
    out = run_blocked(
        """
        import numpy as np
        from crest.gpu import decode, encode
        from crest.exceptions import GpuUnavailableError
        blob = encode({"w": np.array([0, 1.5, 0], np.float32)})
        try:
            decode(blob, device="cuda")
        except GpuUnavailableError as e:
            print("MSG", e)
        assert isinstance(decode(blob, device="auto")["w"], np.ndarray)
        """
    )
    assert "MSG CuPy is not installed (pip install 'crest-sweep[gpu]')" in out
