"""The transport form: canonical Huffman streams, exact round trip, sizes, malformed input.

Includes a small decoder written from docs/format.md section 7 alone (pure Python, bit by
bit), so the document and the implementation are checked against each other.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crest.format import (
    TRANSPORT_MAGIC,
    FormatError,
    decode,
    encode,
    from_transport,
    inspect,
    parse,
    sha256,
    to_transport,
    transport_size,
)
from crest.format import _bits, _huffman
from crest.format._huffman import canonical_codes, code_lengths, length_limit
from tests.format._corpus import corpus, sparse_array

REPO = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int16", "int64", "bool"]


def roundtrip(blob: bytes, **kw: Any) -> bytes:
    """to_transport / from_transport, checking exactness and the predicted size."""
    tr = to_transport(blob, **kw)
    assert tr[:8] == TRANSPORT_MAGIC
    assert transport_size(blob, **kw) == len(tr)
    back = from_transport(tr)
    assert back == blob
    assert sha256(back) == sha256(blob)
    return tr


def skewed_layer(rng: np.random.Generator, n: int, density: float, n_values: int = 31) -> np.ndarray:
    """Deep Compression's fc layer: normal weights pruned by magnitude to ``density``, then
    quantized to ``n_values`` linearly spaced centroids (so the code histogram is skewed
    toward the centroids near the pruning threshold)."""
    w = rng.standard_normal(n).astype(np.float32)
    keep = np.abs(w) > np.quantile(np.abs(w), 1 - density)
    centroids = np.linspace(w[keep].min(), w[keep].max(), n_values).astype(np.float32)
    centroids[centroids == 0] = 1e-3
    out = np.zeros(n, np.float32)
    out[keep] = centroids[np.abs(w[keep, None] - centroids[None, :]).argmin(axis=1)]
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("block_log2", [5, 10])
def test_corpus_roundtrip(block_log2: int) -> None:
    for label, blob, _ in corpus(seed=3, count=30):
        tr = roundtrip(blob, block_log2=block_log2)
        assert len(tr) <= len(blob), label


def test_inspect_reports_transport_bytes() -> None:
    for _, blob, _ in corpus(seed=4, count=6):
        assert inspect(blob)["transport_bytes"] == len(to_transport(blob))


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n_tensors=st.integers(0, 3),
    index_bits=st.integers(1, 16),
    code_bits=st.integers(1, 8),
    chunk=st.sampled_from([32, 64, 256, 4096, 65536]),
    block_log2=st.integers(5, 12),
    data=st.data(),
)
def test_roundtrip_property(
    seed: int, n_tensors: int, index_bits: int, code_bits: int, chunk: int, block_log2: int, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for i in range(n_tensors):
        dtype = data.draw(st.sampled_from(DTYPES))
        shape = tuple(data.draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
        density = data.draw(st.sampled_from([0.0, 0.001, 0.02, 0.1, 0.5, 1.0]))
        n_values = data.draw(st.integers(1, (1 << code_bits) - 1))
        tensors[f"t{i}"] = sparse_array(rng, shape, density, n_values, dtype)
        enc = data.draw(st.sampled_from(["auto", "dense", "auto"]))
        overrides[f"t{i}"] = {"encoding": enc}
    metadata = data.draw(
        st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-5, 5), st.text(max_size=8), st.none()), max_size=3)
    )
    blob = encode(
        tensors,
        index_bits=index_bits,
        code_bits=code_bits,
        chunk_entries=chunk,
        overrides=overrides,
        metadata=metadata,
    )
    roundtrip(blob, block_log2=block_log2)


def test_special_files() -> None:
    roundtrip(encode({}))  # no tensors at all
    roundtrip(encode({}, metadata={"ünï": ["cødé", {"deep": [1, 2.5, None]}]}))
    roundtrip(encode({"z": np.zeros((50, 60), np.float32)}))  # all-zero: n_entries 0
    roundtrip(encode({"e": np.zeros((0, 3), np.int8), "s": np.float64(2.0)}))
    dense_only = {"a": np.arange(300, dtype=np.float32), "b": np.linspace(-1, 1, 77)}
    roundtrip(encode(dense_only, overrides={"a": {"encoding": "dense"}, "b": {"encoding": "dense"}}))
    roundtrip(encode({"one": np.array([0, 0, 0, 7], np.int16)}, index_bits=1, code_bits=1))
    # 16-bit gaps and codes: alphabets of 65536 symbols
    x = np.zeros(400_000, np.uint16)
    rng = np.random.default_rng(1)
    x[rng.choice(400_000, 3000, replace=False)] = rng.integers(1, 65535, 3000, dtype=np.uint16)
    roundtrip(encode({"x": x}, index_bits=16, code_bits=16, chunk_entries=32))


def test_large_gaps_and_many_blocks() -> None:
    rng = np.random.default_rng(7)
    w = skewed_layer(rng, 300_000, 0.09)
    blob = encode({"w": w}, index_bits=4, code_bits=5, chunk_entries=64)
    for block_log2 in (5, 7, 16):
        roundtrip(blob, block_log2=block_log2)
    out = decode(from_transport(to_transport(blob)))["w"]
    assert np.array_equal(out.view(np.uint32), w.view(np.uint32))


def test_block_log2_argument() -> None:
    blob = encode({"x": np.ones(10, np.float32)})
    for bad in (4, 17):
        with pytest.raises(ValueError):
            to_transport(blob, block_log2=bad)
        with pytest.raises(ValueError):
            transport_size(blob, block_log2=bad)
    with pytest.raises(TypeError):
        to_transport(blob, block_log2=10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_transport("not bytes")  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        to_transport(b"\x89CREST\r\n" + bytes(40))  # an invalid crest file
    assert from_transport(bytearray(to_transport(blob))) == blob
    assert from_transport(memoryview(to_transport(blob))) == blob


# --------------------------------------------------------------------------- sizes


def test_realistic_layer_is_smaller() -> None:
    """9% density, 4-bit gaps, 5-bit codes with a skewed code histogram (linear centroids)."""
    rng = np.random.default_rng(0)
    w = skewed_layer(rng, 1024 * 1024, 0.09).reshape(1024, 1024)
    blob = encode({"fc.weight": w}, index_bits=4, code_bits=5)
    tr = roundtrip(blob)
    ratio = len(tr) / len(blob)
    print(f"\nrealistic layer: file {len(blob)} B, transport {len(tr)} B, ratio {ratio:.3f}")
    assert ratio < 0.8
    (t,) = parse(blob)
    _, pieces = _huffman._plan(blob, [t], 10)
    index_plan, code_plan = pieces[0][1][0], pieces[0][2][0]
    n = t.n_entries or 0
    # gaps of a 9%-dense layer: ~3.7 bits of 4 (geometric); skewed codes: ~3.1 bits of 5
    assert index_plan.payload_bits / n < 3.8
    assert code_plan.payload_bits / n < 3.5


def test_transport_never_much_larger() -> None:
    # uniform symbols: Huffman cannot help, the writer falls back to stored streams
    rng = np.random.default_rng(5)
    x = rng.integers(1, 256, 50_000).astype(np.uint8)
    blob = encode({"x": x}, index_bits=1, code_bits=8)
    tr = roundtrip(blob)
    assert len(tr) <= len(blob)


@pytest.mark.parametrize(
    ("name", "dense_fp32"),
    [("lenet300-mnist-best.crest", 1_066_440), ("lenet5-mnist-best.crest", 1_724_320)],
)
def test_committed_artifacts(name: str, dense_fp32: int) -> None:
    path = REPO / "bench" / "results" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    blob = path.read_bytes()
    tr = roundtrip(blob)
    assert inspect(blob)["transport_bytes"] == len(tr)
    assert len(tr) < 0.85 * len(blob)
    print(
        f"\n{name}: file {len(blob)} B ({dense_fp32 / len(blob):.1f}x), "
        f"transport {len(tr)} B ({dense_fp32 / len(tr):.1f}x)"
    )


# --------------------------------------------------------------------------- Huffman codes


def huffman_cost(freqs: list[int]) -> int:
    """Total bits of an optimal (unlimited) prefix code: the sum of Huffman's merge weights."""
    import heapq

    heap = [f for f in freqs if f]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def kraft(lengths: np.ndarray) -> float:
    ls = lengths[lengths > 0].astype(np.int64)
    return float(sum(2.0 ** -int(x) for x in ls))


@FAST
@given(freqs=st.lists(st.integers(0, 10**6), min_size=2, max_size=300), limit=st.integers(9, 20))
def test_code_lengths_properties(freqs: list[int], limit: int) -> None:
    f = np.array(freqs, dtype=np.int64)
    used = int(np.count_nonzero(f))
    lengths = code_lengths(f, limit)
    assert np.array_equal(lengths > 0, f > 0)
    if used >= 2:
        assert kraft(lengths) == 1.0  # complete: Kraft equality
        assert int(lengths.max()) <= limit
        cost = int(np.dot(f, lengths.astype(np.int64)))
        if int(lengths.max()) < limit:  # the limit did not bind: optimal
            assert cost == huffman_cost(freqs)
        assert cost >= huffman_cost(freqs)
        # more frequent symbols never get longer codes
        order = np.argsort(-f[f > 0], kind="stable")
        assert np.all(np.diff(lengths[f > 0][order].astype(int)) >= 0)
    elif used == 1:
        assert int(lengths.max()) == 1


def test_length_limit_binds() -> None:
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    free = code_lengths(np.array(fib), 32)
    assert int(free.max()) == 25  # Fibonacci weights: a maximally deep Huffman tree
    assert kraft(free) == 1.0 and int(np.dot(fib, free.astype(np.int64))) == huffman_cost(fib)
    for limit in (6, 12, 20):
        lengths = code_lengths(np.array(fib), limit)
        assert int(lengths.max()) == limit and kraft(lengths) == 1.0
    with pytest.raises(ValueError):
        code_lengths(np.ones(65), 6)  # 65 symbols do not fit in 6-bit codes
    full = code_lengths(np.ones(64, dtype=np.int64), 6)
    assert np.all(full == 6)
    assert length_limit(1) == 1 and length_limit(2) == 2 and length_limit(1000) == 10
    assert length_limit(10**9) == 20


def test_canonical_codes_deflate_example() -> None:
    # RFC 1951 3.2.2: lengths (3,3,3,3,3,2,4,4) for A..H give
    # F=00, A=010, B=011, C=100, D=101, E=110, G=1110, H=1111
    codes = canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4]))
    assert codes.tolist() == [2, 3, 4, 5, 6, 0, 14, 15]


@FAST
@given(freqs=st.lists(st.integers(0, 1000), min_size=2, max_size=200))
def test_canonical_codes_prefix_free_and_table(freqs: list[int]) -> None:
    f = np.array(freqs, dtype=np.int64)
    if np.count_nonzero(f) < 2:
        return
    lengths = code_lengths(f, 16)
    codes = canonical_codes(lengths)
    words = sorted(format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths))
    for a, b in itertools.pairwise(words):
        assert not b.startswith(a)  # sorted order puts a prefix right before its extensions
    sym_table, len_table, top = _huffman._decode_table(lengths)
    assert top == int(lengths.max()) and sym_table.shape[0] == 1 << top
    for s in np.flatnonzero(lengths):
        ln = int(lengths[s])
        rev = int(format(int(codes[s]), f"0{ln}b")[::-1], 2)
        hits = rev + (np.arange(1 << (top - ln)) << ln)
        assert np.all(sym_table[hits] == s) and np.all(len_table[hits] == ln)


def test_single_symbol_streams_are_constant() -> None:
    x = np.zeros(100_000, np.float32)
    x[2::3] = 1.5  # every gap 2, every code 1: both streams hold one symbol
    blob = encode({"x": x}, index_bits=4, code_bits=2)
    tr = roundtrip(blob)
    (t,) = parse(blob)
    _, pieces = _huffman._plan(blob, [t], 10)
    assert [p[0].mode for p in pieces[0][1:]] == [_huffman.MODE_CONSTANT] * 2
    assert len(tr) < 600  # header, codebook, two 3-byte stream records
    assert code_lengths(np.array([0, 0, 9, 0]), 20).tolist() == [0, 0, 1, 0]


# --------------------------------------------------------------------------- the spec


class SpecReader:
    """A transport reader written from docs/format.md section 7 (pure Python)."""

    def __init__(self, data: bytes) -> None:
        self.d = data
        self.p = 0

    def take(self, n: int) -> bytes:
        assert self.p + n <= len(self.d)
        self.p += n
        return self.d[self.p - n : self.p]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    @staticmethod
    def bits(data: bytes, start_bit: int, count: int, width: int) -> list[int]:
        out = []
        for i in range(count):
            v = 0
            for j in range(width):
                b = start_bit + i * width + j
                v |= ((data[b // 8] >> (b % 8)) & 1) << j
            out.append(v)
        return out

    def stream(self, n: int, w: int, block: int) -> list[int]:
        mode = self.uint(1)
        if mode == 0:
            raw = self.take((n * w + 7) // 8)
            return self.bits(raw, 0, n, w)
        if mode == 1:
            return [self.uint(2)] * n
        size = self.uint(2) + 1
        if mode == 2:
            lengths = dict(enumerate(self.bits(self.take((size * 5 + 7) // 8), 0, size, 5)))
        else:
            lengths = {}
            for _ in range(size):
                s = self.uint(2)
                lengths[s] = self.uint(1)
        lengths = {s: ln for s, ln in lengths.items() if ln}
        top = max(lengths.values())
        count = [0] * (top + 1)
        for ln in lengths.values():
            count[ln] += 1
        nxt, code = [0] * (top + 1), 0
        for b in range(1, top + 1):
            code = (code + (count[b - 1] if b > 1 else 0)) << 1
            nxt[b] = code
        codes = {}
        for s, ln in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
            codes[(ln, nxt[ln])] = s
            nxt[ln] += 1
        payload_bits = self.uint(8)
        nb = -(-n // block)
        width = (block * top).bit_length()
        sizes = self.bits(self.take(((nb - 1) * width + 7) // 8), 0, nb - 1, width)
        payload = self.take((payload_bits + 7) // 8)
        out, b = [], 0
        starts = [sum(sizes[:k]) for k in range(nb)]
        for i in range(n):
            if i % block == 0:
                assert b == starts[i // block]
            code = ln = 0
            while (ln, code) not in codes:
                code = (code << 1) | ((payload[b // 8] >> (b % 8)) & 1)
                ln += 1
                b += 1
            out.append(codes[(ln, code)])
        assert b == payload_bits
        return out


def spec_read(tr: bytes) -> tuple[dict[str, Any], dict[str, tuple[list[int], list[int]]]]:
    r = SpecReader(tr)
    assert r.take(8) == b"\x89CRESTH\n" and r.uint(4) == 1
    assert r.uint(4) == zlib.crc32(tr[16:])
    r.take(32 + 8)
    n_header, z = r.uint(4), r.uint(4)
    block = 1 << r.uint(1)
    header_bytes = zlib.decompress(r.take(z))
    assert len(header_bytes) == n_header
    import json

    header = json.loads(header_bytes)
    streams = {}
    for t in header["tensors"]:
        itemsize = np.dtype(t["dtype"]).itemsize
        if t["encoding"] == "dense":
            r.take(math.prod(t["shape"]) * itemsize)
            continue
        r.take(t["n_codes"] * itemsize)
        gaps = r.stream(t["n_entries"], t["index_bits"], block)
        codes = r.stream(t["n_entries"], t["code_bits"], block)
        streams[t["name"]] = (gaps, codes)
    assert r.p == len(tr)
    return header, streams


@pytest.mark.parametrize("block_log2", [5, 10])
def test_spec_reader_agrees(block_log2: int) -> None:
    rng = np.random.default_rng(11)
    tensors = {
        "w": skewed_layer(rng, 6000, 0.09),
        "m": rng.random(3000) < 0.5,
        "c": np.tile(np.array([0, 0, 2.5], np.float32), 500),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    blob = encode(tensors, index_bits=3, code_bits=5, overrides={"m": {"index_bits": 1, "code_bits": 1}, "b": {"encoding": "dense"}})
    files = [blob]
    for name in ("lenet300-mnist-best.crest", "lenet5-mnist-best.crest"):
        if (REPO / "bench" / "results" / name).exists():
            files.append((REPO / "bench" / "results" / name).read_bytes())
    for f in files:
        tr = to_transport(f, block_log2=block_log2)
        _, streams = spec_read(tr)
        for t in parse(f):
            if t.encoding != "sparse":
                continue
            n = t.n_entries or 0
            gaps, codes = streams[t.name]
            assert gaps == _bits.unpack(t.index_stream, t.index_bits, n).tolist()
            assert codes == _bits.unpack(t.code_stream, t.code_bits, n).tolist()


def test_prefix_fields() -> None:
    blob = encode({"w": np.array([0, 0, 2.5, 0, 0, 0, 0, 0, 0, 0, 0, -1.0, 2.5, 0], np.float32)}, index_bits=3, code_bits=2, chunk_entries=32)
    tr = to_transport(blob)
    magic, version, crc, digest, length, n, z, g = struct.unpack_from("<8sII32sQIIB", tr)
    assert (magic, version, g) == (b"\x89CRESTH\n", 1, 10)
    assert crc == zlib.crc32(tr[16:]) and digest == hashlib.sha256(blob).digest() and length == len(blob)
    assert zlib.decompress(tr[65 : 65 + z]) == blob[24 : 24 + n]


# --------------------------------------------------------------------------- malformed input


def _restamp(tr: bytes | bytearray) -> bytes:
    out = bytearray(tr)
    struct.pack_into("<I", out, 12, zlib.crc32(bytes(out[16:])))
    return bytes(out)


def _fuzz_blob() -> bytes:
    rng = np.random.default_rng(2)
    return encode(
        {
            "w": skewed_layer(rng, 5000, 0.1),
            "m": rng.random(700) < 0.3,
            "k": np.tile(np.array([0, 3], np.int16), 100),
            "b": rng.standard_normal(6).astype(np.float32),
            "z": np.zeros(9, np.float16),
        },
        index_bits=3,
        code_bits=5,
        chunk_entries=32,
        overrides={"m": {"index_bits": 1, "code_bits": 1}, "b": {"encoding": "dense"}},
        metadata={"model": "fuzz"},
    )


FUZZ_BLOB = _fuzz_blob()
FUZZ_TR = to_transport(FUZZ_BLOB, block_log2=5)


def _only_format_error(data: bytes) -> None:
    try:
        out = from_transport(data)
    except FormatError:
        return
    assert out == FUZZ_BLOB  # the mutation hit nothing meaningful


def test_truncations() -> None:
    for cut in range(len(FUZZ_TR)):
        with pytest.raises(FormatError):
            from_transport(FUZZ_TR[:cut])
        with pytest.raises(FormatError):
            from_transport(_restamp(FUZZ_TR[:cut]) if cut >= 16 else FUZZ_TR[:cut])
    with pytest.raises(FormatError):
        from_transport(FUZZ_TR + b"\x00")
    with pytest.raises(FormatError):
        from_transport(_restamp(FUZZ_TR + b"\x00"))
    with pytest.raises(FormatError):
        from_transport(FUZZ_BLOB)  # a crest file is not a transport file


def test_random_mutations() -> None:
    rng = np.random.default_rng(0)
    for i in range(1500):
        data = bytearray(FUZZ_TR)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(data)))
            if rng.random() < 0.5:
                data[at] ^= 1 << int(rng.integers(0, 8))
            else:
                data[at] = int(rng.integers(0, 256))
        if bytes(data) == FUZZ_TR:
            continue
        with pytest.raises(FormatError):  # the CRC-32 sees every such change
            from_transport(bytes(data))
        # the same lie with a valid CRC: the structural checks and the SHA-256 must catch it
        _only_format_error(_restamp(data))


def test_every_byte_with_valid_crc() -> None:
    zend = 65 + struct.unpack_from("<I", FUZZ_TR, 60)[0]
    for at in range(16, len(FUZZ_TR)):
        if 65 <= at < zend and at % 5:
            continue  # inside the deflated header only zlib's own checks are at work
        for flip in (0x01, 0x80, 0xFF):
            data = bytearray(FUZZ_TR)
            data[at] ^= flip
            _only_format_error(_restamp(data))


def _rebuild_transport(blob: bytes, header: bytes, body: bytes, **fields: int) -> bytes:
    """A transport file from a (possibly lying) header and body, valid CRC."""
    z = zlib.compress(header)
    vals = {"length": len(blob), "n": len(header), "z": len(z), "g": 10, "version": 1}
    vals.update(fields)
    prefix = struct.pack(
        "<8sII32sQIIB", TRANSPORT_MAGIC, vals["version"], 0, hashlib.sha256(blob).digest(),
        vals["length"], vals["n"], vals["z"], vals["g"],
    )
    return _restamp(prefix + z + body)


def _parts(tr: bytes) -> tuple[bytes, bytes]:
    z = struct.unpack_from("<I", tr, 60)[0]
    return zlib.decompress(tr[65 : 65 + z]), tr[65 + z :]


def test_crafted_lies() -> None:
    header, body = _parts(FUZZ_TR)
    # sanity: the helper reproduces a valid file
    assert from_transport(_rebuild_transport(FUZZ_BLOB, header, body, g=5)) == FUZZ_BLOB
    cases = {
        "version": _rebuild_transport(FUZZ_BLOB, header, body, g=5, version=2),
        "block size": _rebuild_transport(FUZZ_BLOB, header, body, g=4),
        "block size big": _rebuild_transport(FUZZ_BLOB, header, body, g=17),
        "other block size": _rebuild_transport(FUZZ_BLOB, header, body, g=6),
        "file length": _rebuild_transport(FUZZ_BLOB, header, body, g=5, length=len(FUZZ_BLOB) + 64),
        "header length": _rebuild_transport(FUZZ_BLOB, header, body, g=5, n=len(header) - 1),
        "header length huge": _rebuild_transport(FUZZ_BLOB, header, body, g=5, n=2**32 - 1),
        "deflate length": _rebuild_transport(FUZZ_BLOB, header, body, g=5, z=3),
        "body short": _rebuild_transport(FUZZ_BLOB, header, body[:-1], g=5),
        "body long": _rebuild_transport(FUZZ_BLOB, header, body + b"\0", g=5),
    }
    for label, data in cases.items():
        with pytest.raises(FormatError):
            from_transport(data)
        assert label
    # a header that declares a huge dense tensor: refused before allocating
    big = header.replace(b'"shape":[6]', b'"shape":[4000000000]', 1)
    assert big != header
    with pytest.raises(FormatError):
        from_transport(_rebuild_transport(FUZZ_BLOB, big, body, g=5))
    # a header edited to another valid-looking JSON: the section CRCs / SHA-256 catch it
    other = header.replace(b'"model":"fuzz"', b'"model":"fuzy"', 1)
    with pytest.raises(FormatError):
        from_transport(_rebuild_transport(FUZZ_BLOB, other, body, g=5))


def test_max_output_bytes() -> None:
    x = np.ones(1_000_000, bool)  # constant streams: a tiny transport, a 250 kB file
    blob = encode({"x": x}, index_bits=1, code_bits=1)
    tr = to_transport(blob)
    assert len(tr) < 1000 < len(blob)
    assert from_transport(tr, max_output_bytes=len(blob)) == blob
    with pytest.raises(FormatError):
        from_transport(tr, max_output_bytes=len(blob) - 1)
    with pytest.raises(ValueError):
        from_transport(tr, max_output_bytes=-1)
    with pytest.raises(TypeError):
        from_transport(tr, max_output_bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        from_transport(None)  # type: ignore[arg-type]


def _stream_offsets(tr: bytes) -> list[tuple[int, int]]:
    """(record start, mode) of every stream record, by walking the file with SpecReader."""
    header, _ = spec_read(tr)
    r = SpecReader(tr)
    r.p = 65 + struct.unpack_from("<I", tr, 60)[0]
    block = 1 << tr[64]
    out = []
    for t in header["tensors"]:
        itemsize = np.dtype(t["dtype"]).itemsize
        if t["encoding"] == "dense":
            r.take(math.prod(t["shape"]) * itemsize)
            continue
        r.take(t["n_codes"] * itemsize)
        for w in (t["index_bits"], t["code_bits"]):
            out.append((r.p, tr[r.p]))
            r.stream(t["n_entries"], w, block)
    return out


def test_crafted_stream_records() -> None:
    records = _stream_offsets(FUZZ_TR)
    modes = {m for _, m in records}
    assert {_huffman.MODE_CONSTANT, _huffman.MODE_HUFFMAN_DENSE} <= modes, modes
    for at, mode in records:
        for new_mode in range(6):
            if new_mode != mode:
                data = bytearray(FUZZ_TR)
                data[at] = new_mode
                with pytest.raises(FormatError):
                    from_transport(_restamp(data))
        if mode in (_huffman.MODE_HUFFMAN_DENSE, _huffman.MODE_HUFFMAN_SPARSE):
            # every byte of the table size, the table and the payload bit count, set to extremes
            for k in range(1, 12):
                for value in (0, 0xFF):
                    data = bytearray(FUZZ_TR)
                    if data[at + k] == value:
                        continue
                    data[at + k] = value
                    _only_format_error(_restamp(data))
