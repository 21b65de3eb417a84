"""Round-trip properties of the crest format: bit-exact, order-keeping, rule-following."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crest.format import (
    FORMAT_VERSION,
    MAGIC,
    EncodedTensor,
    FormatError,
    decode,
    encode,
    inspect,
    parse,
    sha256,
)
from crest.format import _bits
from tests.format._corpus import bits

FLOATS = ["float16", "float32", "float64"]
INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
ALL_DTYPES = [*FLOATS, *INTS, "bool"]

# special bit patterns per float width: NaN payloads, -0.0, +-inf, subnormals, extremes
SPECIAL = {
    2: [0x7E00, 0x7C01, 0xFE01, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x7BFF],
    4: [0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001,
        0x807FFFFF, 0x7F7FFFFF],
    8: [0x7FF8000000000000, 0x7FF0000000000001, 0xFFF8DEADBEEF0001, 0x8000000000000000,
        0x7FF0000000000000, 0xFFF0000000000000, 0x0000000000000001, 0x800FFFFFFFFFFFFF],
}

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same(got: dict[str, np.ndarray], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        ref = np.asarray(value)
        out = got[name]
        assert out.dtype == np.dtype(ref.dtype.name) and out.dtype.isnative
        assert out.shape == ref.shape, name
        assert np.array_equal(bits(out), bits(ref.astype(ref.dtype.newbyteorder("="))), equal_nan=False), name
        assert out.flags.writeable


def expected_encoding(a: np.ndarray, code_bits: int) -> str:
    b = bits(a)
    return "sparse" if np.unique(b[b != 0]).shape[0] <= (1 << code_bits) - 1 else "dense"


@st.composite
def tensors(draw: st.DrawFn, max_side: int = 24) -> np.ndarray:
    """A tensor of any supported dtype and shape, with a drawn value structure."""
    dtype = np.dtype(draw(st.sampled_from(ALL_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=max_side))
    shape = shape if math.prod(shape) <= 6000 else shape[:1]
    n = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = dtype.itemsize
    udt = np.dtype(f"u{k}")
    mode = draw(st.sampled_from(["few", "many", "zeros", "dense_few"]))
    if dtype == np.bool_:
        raw = (rng.random(n) < draw(st.floats(0, 1))).astype(np.uint8)
    elif mode == "zeros":
        raw = np.zeros(n, dtype=udt)
    else:
        pool_size = draw(st.integers(1, 300)) if mode != "many" else n + 1
        hi = (1 << (8 * k)) - 1
        pool = rng.integers(0, hi, size=pool_size, dtype=udt, endpoint=True)
        if dtype.kind == "f":
            special = np.array(SPECIAL[k], dtype=udt)
            pool[: min(len(special), pool_size)] = special[: min(len(special), pool_size)]
        raw = pool[rng.integers(0, pool_size, size=n)]
        density = 1.0 if mode == "dense_few" else draw(st.floats(0, 1))
        raw[rng.random(n) >= density] = 0
    arr = raw.view(dtype).reshape(shape)
    layout = draw(st.sampled_from(["c", "f", "strided", "bigendian"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim >= 1:
        arr = np.repeat(arr, 2, axis=-1)[..., ::2]  # same values, non-contiguous view
        assert not arr.flags.c_contiguous or arr.size <= 1
    elif layout == "bigendian" and dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder(">"))
    return arr


@FAST
@given(
    arr=tensors(),
    index_bits=st.integers(1, 16),
    code_bits=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 16]),
    chunk=st.sampled_from([32, 64, 1024, 65536]),
)
def test_single_tensor_roundtrip_is_bit_exact(arr: np.ndarray, index_bits: int, code_bits: int, chunk: int) -> None:
    blob = encode({"t": arr}, index_bits=index_bits, code_bits=code_bits, chunk_entries=chunk)
    assert_same(decode(blob), {"t": arr})
    (entry,) = inspect(blob)["tensors"]
    assert entry["encoding"] == expected_encoding(arr, code_bits)
    assert entry["shape"] == list(arr.shape)
    assert entry["dtype"] == arr.dtype.name
    (t,) = parse(blob)
    assert isinstance(t, EncodedTensor)
    if t.encoding == "sparse":
        assert t.index_bits == index_bits and t.code_bits == code_bits and t.chunk_entries == chunk
        assert t.codebook is not None and bits(t.codebook)[0] == 0
        assert t.chunk_table is not None and t.chunk_table.shape == (t.n_chunks, 3)
        assert t.n_chunks == -(-(t.n_entries or 0) // chunk)
    else:
        assert t.data is not None and np.array_equal(bits(t.data), bits(arr.astype(arr.dtype.newbyteorder("="))))


@FAST
@given(
    named=st.dictionaries(
        st.text(min_size=1, max_size=12), tensors(max_side=8), min_size=0, max_size=5
    ),
    index_bits=st.integers(1, 16),
    code_bits=st.sampled_from([1, 2, 4, 5, 8, 16]),
    meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text() | st.booleans() | st.none(), max_size=3),
)
def test_many_tensors_keep_names_order_and_metadata(
    named: dict[str, np.ndarray], index_bits: int, code_bits: int, meta: dict[str, Any]
) -> None:
    blob = encode(named, index_bits=index_bits, code_bits=code_bits, chunk_entries=32, metadata=meta)
    assert_same(decode(blob), named)
    info = inspect(blob)
    assert [t["name"] for t in info["tensors"]] == list(named)
    assert [t.name for t in parse(blob)] == list(named)
    assert info["metadata"] == meta
    assert info["sha256"] == sha256(blob) and info["file_bytes"] == len(blob)


@FAST
@given(
    n=st.integers(1, 300_000),
    n_nonzero=st.integers(0, 6),
    index_bits=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_long_gaps_are_bridged_exactly(n: int, n_nonzero: int, index_bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.zeros(n, dtype=np.float32)
    pos = rng.choice(n, size=min(n, n_nonzero), replace=False)
    x[pos] = rng.standard_normal(pos.shape[0]).astype(np.float32)
    blob = encode({"x": x}, index_bits=index_bits, code_bits=3, chunk_entries=32)
    assert_same(decode(blob), {"x": x})


@pytest.mark.parametrize("index_bits", range(1, 17))
def test_three_nonzeros_in_100000(index_bits: int) -> None:
    x = np.zeros(100_000, dtype=np.float32)
    x[[3, 50_000, 99_999]] = [1.0, -0.0, np.float32("nan")]
    blob = encode({"x": x}, index_bits=index_bits, code_bits=2, chunk_entries=32)
    (t,) = parse(blob)
    assert t.encoding == "sparse"
    m1 = 1 << index_bits
    gaps = [3, 50_000 - 4, 99_999 - 50_001]
    assert t.n_entries == sum(g // m1 + 1 for g in gaps)
    assert_same(decode(blob), {"x": x})


def test_sparse_streams_match_the_documented_layout() -> None:
    # the worked example of docs/format.md
    x = np.array([0, 0, 2.5, 0, 0, 0, 0, 0, 0, 0, 0, -1.0, 2.5, 0], dtype=np.float32)
    blob = encode({"w": x}, index_bits=3, code_bits=2, chunk_entries=32)
    (t,) = parse(blob)
    # codebook sorted by bit pattern: 2.5 = 0x40200000 comes before -1.0 = 0xBF800000
    assert t.codebook is not None and t.codebook.tolist() == [0.0, 2.5, -1.0]
    # entries (gap, code): (2,1) (7,0) (0,2) (0,1): gap 8 after position 2 needs one filler
    assert t.n_entries == 4
    assert t.index_stream is not None and t.code_stream is not None and t.chunk_table is not None
    # gaps 2,7,0,0 in 3 bits LSB-first: 010 111 000 000 -> bits 0..11 = 0,1,0,1,1,1,0,...
    assert t.index_stream.tolist() == [0b00111010, 0, 0, 0, 0, 0, 0, 0]
    # codes 1,0,2,1 in 2 bits: byte = 1 | 0<<2 | 2<<4 | 1<<6
    assert t.code_stream.tolist() == [0b01100001, 0, 0, 0, 0, 0, 0, 0]
    assert t.chunk_table.tolist() == [[0, 0, 0]]
    raw = bytes(blob)
    assert raw[:8] == MAGIC == b"\x89CREST\r\n"
    version, _crc, hlen = struct.unpack_from("<IIQ", raw, 8)
    assert version == FORMAT_VERSION == 1
    header = json.loads(raw[24 : 24 + hlen])
    assert header["tensors"][0]["sections"]["index"]["length"] == 8
    data_start = -(-(24 + hlen) // 64) * 64
    off = header["tensors"][0]["sections"]["code"]["offset"]
    assert raw[data_start + off] == 0b01100001
    assert len(blob) % 64 == 0


def test_chunk_table_rows_with_many_chunks() -> None:
    rng = np.random.default_rng(7)
    x = np.zeros(50_000, dtype=np.int16)
    nz = rng.random(x.size) < 0.3
    x[nz] = rng.integers(1, 6, nz.sum())
    blob = encode({"x": x}, index_bits=2, code_bits=3, chunk_entries=32)
    (t,) = parse(blob)
    assert t.chunk_table is not None
    k = 32
    rows = np.arange(t.n_chunks, dtype=np.uint64)
    assert np.array_equal(t.chunk_table[:, 1], rows * k * 2)
    assert np.array_equal(t.chunk_table[:, 2], rows * k * 3)
    # the base of each chunk is the position after the previous chunk's last entry
    gaps = _bits.unpack(t.index_stream, 2, t.n_entries or 0).astype(np.int64)
    ends = np.cumsum(gaps + 1)
    assert t.chunk_table[0, 0] == 0
    assert np.array_equal(t.chunk_table[1:, 0], ends[np.arange(1, t.n_chunks) * k - 1])
    assert_same(decode(blob), {"x": x})


@pytest.mark.parametrize("width", range(1, 17))
def test_bit_packing_matches_a_bitwise_reference(width: int) -> None:
    rng = np.random.default_rng(width)
    for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000]:
        v = rng.integers(0, 1 << width, size=n, dtype=np.uint32)
        bitrows = (v[:, None] >> np.arange(width, dtype=np.uint32)) & 1
        ref = np.packbits(bitrows.astype(np.uint8).reshape(-1), bitorder="little")
        packed = _bits.pack(v, width)
        assert packed.shape[0] == _bits.packed_nbytes(n, width) == -(-n * width // 64) * 8
        assert packed[: ref.shape[0]].tolist() == ref.tolist()
        assert not packed[ref.shape[0] :].any()
        assert np.array_equal(_bits.unpack(packed, width, n), v)
        assert _bits.padding_is_zero(packed, n * width)
    with pytest.raises(ValueError):
        _bits.pack(np.array([1 << width]), width)


def test_encoding_rule_boundary() -> None:
    x = np.arange(8, dtype=np.float32)  # 7 distinct nonzero values
    assert inspect(encode({"x": x}, code_bits=3))["tensors"][0]["encoding"] == "sparse"
    assert inspect(encode({"x": x + 1}, code_bits=3))["tensors"][0]["encoding"] == "dense"  # 8 distinct
    assert inspect(encode({"x": x}, code_bits=2))["tensors"][0]["encoding"] == "dense"
    forced = encode({"x": x}, code_bits=3, overrides={"x": {"encoding": "dense"}})
    assert inspect(forced)["tensors"][0]["encoding"] == "dense"
    with pytest.raises(ValueError, match="sparse"):
        encode({"x": x + 1}, code_bits=3, overrides={"x": {"encoding": "sparse"}})


def test_overrides_apply_per_tensor() -> None:
    w = np.zeros(1000, np.float32)
    w[::7] = np.arange(143) % 200 + 1
    blob = encode(
        {"a": w, "b": w},
        index_bits=5,
        code_bits=5,
        overrides={"b": {"index_bits": 8, "code_bits": 8}},
    )
    a, b = inspect(blob)["tensors"]
    assert a["encoding"] == "dense"
    assert (b["encoding"], b["index_bits"], b["code_bits"]) == ("sparse", 8, 8)
    assert_same(decode(blob), {"a": w, "b": w})


def test_negative_zero_is_a_value_not_zero() -> None:
    x = np.array([0.0, -0.0, 0.0, -0.0], dtype=np.float64)
    (t,) = parse(encode({"x": x}))
    assert t.encoding == "sparse" and t.n_codes == 2 and t.n_entries == 2
    out = decode(encode({"x": x}))["x"]
    assert np.signbit(out).tolist() == [False, True, False, True]


def test_array_like_inputs() -> None:
    class Wrapper:
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return self.a

    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert_same(decode(encode({"w": Wrapper(a)})), {"w": a})
    assert_same(decode(encode({"s": np.float32(2.5)})), {"s": np.asarray(np.float32(2.5))})


def test_torch_cpu_tensor_input() -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(64, 3)
    t[::5, 1] = 0.25
    out = decode(encode({"w": t}))["w"]
    assert out.dtype == np.float32 and out.shape == (64, 3)
    assert np.array_equal(out, t.numpy())


def test_blob_types_and_sha256() -> None:
    blob = encode({"x": np.ones(3, np.uint8)}, metadata={"run": 1})
    for form in (blob, bytearray(blob), memoryview(blob)):
        assert_same(decode(form), {"x": np.ones(3, np.uint8)})
        assert inspect(form)["sha256"] == sha256(blob)
        assert len(parse(form)) == 1
    assert len(sha256(blob)) == 64
    assert encode({"x": np.ones(3, np.uint8)}, metadata={"run": 1}) == blob  # deterministic
    with pytest.raises(TypeError):
        decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        inspect(None)  # type: ignore[arg-type]


def test_max_output_bytes() -> None:
    blob = encode({"x": np.zeros((1000, 1000), np.float32)})  # tiny file, 4 MB decoded
    assert len(blob) < 1000
    with pytest.raises(FormatError, match="max_output_bytes"):
        decode(blob, max_output_bytes=3_999_999)
    assert decode(blob, max_output_bytes=4_000_000)["x"].shape == (1000, 1000)


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"index_bits": 0}, ValueError, "index_bits"),
        ({"index_bits": 17}, ValueError, "index_bits"),
        ({"code_bits": 0}, ValueError, "code_bits"),
        ({"code_bits": 3.0}, TypeError, "code_bits"),
        ({"index_bits": True}, TypeError, "index_bits"),
        ({"chunk_entries": 48}, ValueError, "chunk_entries"),
        ({"chunk_entries": 16}, ValueError, "chunk_entries"),
        ({"chunk_entries": 2**17}, ValueError, "chunk_entries"),
        ({"overrides": {"nope": {}}}, ValueError, "nope"),
        ({"overrides": {"x": {"bits": 3}}}, ValueError, "bits"),
        ({"overrides": {"x": {"code_bits": 20}}}, ValueError, "code_bits"),
        ({"overrides": {"x": {"encoding": "zip"}}}, ValueError, "encoding"),
        ({"metadata": {"bad": float("nan")}}, ValueError, "metadata"),
        ({"metadata": {"obj": object()}}, ValueError, "metadata"),
        ({"metadata": [1, 2]}, TypeError, "metadata"),
    ],
)
def test_encode_argument_errors(kwargs: dict[str, Any], exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle):
        encode({"x": np.ones(4, np.float32)}, **kwargs)


def test_encode_input_errors() -> None:
    with pytest.raises(TypeError, match="tensors"):
        encode([np.ones(2)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x"):
        encode({"x": [1.0, 2.0]})
    with pytest.raises(TypeError, match="complex"):
        encode({"x": np.ones(2, np.complex64)})
    with pytest.raises(TypeError, match="object"):
        encode({"x": np.array([None])})
    with pytest.raises(ValueError, match="non-empty"):
        encode({"": np.ones(2)})
    with pytest.raises(TypeError, match="str"):
        encode({3: np.ones(2)})  # type: ignore[dict-item]
    odd = np.array([0, 1, 2], dtype=np.uint8).view(np.bool_)
    with pytest.raises(ValueError, match="bool"):
        encode({"b": odd})
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="metadata"):
        encode({"x": np.ones(2)}, metadata={"deep": deep})


def test_encode_is_fast_enough_for_a_large_layer() -> None:
    import time

    rng = np.random.default_rng(3)
    w = np.zeros(2048 * 4096, np.float32)
    nz = rng.random(w.size) < 0.09
    w[nz] = rng.choice(rng.standard_normal(31).astype(np.float32), nz.sum())
    start = time.perf_counter()
    blob = encode({"w": w}, index_bits=4, code_bits=5)
    assert time.perf_counter() - start < 2.0  # about 0.1 s on a laptop core; generous bound
    assert_same(decode(blob), {"w": w})
