"""Crest artifacts the tests share: the fuzz fixtures and a seeded random corpus.

Used by the format's tests (tests/format) and by the decoder tests of tests/gpu (the
kernels' algorithm on the CPU, the emulated kernels, CuPy): :data:`BLOBS` (the fuzz
fixtures) and :func:`corpus` (many shapes, gap widths 1..16, code widths 1..8, chunk
sizes 32..4096, gaps far beyond ``2**index_bits``, many chunks, empty and all-zero
tensors, every dtype).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crest.format import encode

DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool"]


def sparse_array(
    rng: np.random.Generator, shape: tuple[int, ...], density: float, n_values: int, dtype: str
) -> np.ndarray:
    """A tensor with about ``density`` nonzeros drawn from ``n_values`` distinct bit patterns."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    if dt == np.bool_:
        return (rng.random(n) < density).reshape(shape)
    bits = np.dtype(f"u{dt.itemsize}")
    info = np.iinfo(bits)
    values = rng.integers(1, int(info.max), size=max(n_values, 1), dtype=bits, endpoint=True)
    out = np.zeros(n, dtype=bits)
    nz = rng.random(n) < density
    out[nz] = values[rng.integers(0, values.shape[0], int(nz.sum()))]
    return out.view(dt).reshape(shape)


def corpus(seed: int = 0, count: int = 40) -> list[tuple[str, bytes, dict[str, np.ndarray]]]:
    """``(label, blob, original tensors)`` triples covering the format's corner cases."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, bytes, dict[str, np.ndarray]]] = []

    def add(label: str, tensors: dict[str, np.ndarray], **kw: Any) -> None:
        cases.append((label, encode(tensors, **kw), tensors))

    # fixed corner cases
    for ib in range(1, 17):
        x = np.zeros(100_000, np.float32)
        x[[3, 60_000, 99_999]] = [1.5, -2.0, 1.5]  # gaps far beyond 2**index_bits
        add(f"three-in-100000-ib{ib}", {"x": x}, index_bits=ib, code_bits=2, chunk_entries=32)
    head = np.zeros(300_000, np.float32)
    head[:40] = 0.25  # nonzeros only at the start: the last region is huge
    add("huge-last-region", {"x": head}, index_bits=8, code_bits=1, chunk_entries=32)
    add(
        "empty-and-zero",
        {
            "e": np.zeros((0, 4), np.float16),
            "z": np.zeros((7, 9), np.float32),
            "s": np.float32(2.5),
            "s0": np.float64(0.0),
            "one": np.array([0, 0, 0, 3], np.int16),
        },
        index_bits=2,
        code_bits=2,
        chunk_entries=32,
        overrides={"s": {"encoding": "sparse"}},
    )
    special = np.zeros(5000, np.float32)
    special[::7] = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.0], np.float32).repeat(120)[: special[::7].shape[0]]
    add("special-floats", {"w": special}, index_bits=3, code_bits=3, chunk_entries=64)
    # random tensors: widths, chunk sizes, densities, dtypes, shapes
    for i in range(count):
        dtype = DTYPES[i % len(DTYPES)]
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(d) for d in rng.integers(1, 70, size=ndim))
        density = float(rng.choice([0.002, 0.05, 0.3, 0.9, 1.0]))
        cb = int(rng.integers(1, 9))
        ib = int(rng.integers(1, 17))
        chunk = int(2 ** rng.integers(5, 13))
        x = sparse_array(rng, shape, density, (1 << cb) - 1, dtype)
        add(f"random-{i}-{dtype}-{list(shape)}-ib{ib}-cb{cb}-k{chunk}", {"t": x}, index_bits=ib, code_bits=cb, chunk_entries=chunk)
    return cases


def weight(rng: np.random.Generator, out_f: int, in_f: int, density: float, n_values: int = 31) -> np.ndarray:
    """A float32 ``[out_f, in_f]`` weight with ``n_values`` shared values (quantized)."""
    values = rng.standard_normal(n_values).astype(np.float32)
    values[values == 0] = 1.0
    w = np.zeros(out_f * in_f, np.float32)
    nz = rng.random(w.shape[0]) < density
    w[nz] = values[rng.integers(0, n_values, int(nz.sum()))]
    return w.reshape(out_f, in_f)


def bits(a: Any) -> np.ndarray:
    """Bit patterns of a NumPy array (C order) as unsigned ints."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(f"u{a.dtype.itemsize}")


def _fuzz_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w = np.zeros((40, 50), np.float32)
    nz = rng.random(w.shape) < 0.2
    w[nz] = rng.choice(np.array([0.5, -0.25, np.nan, -0.0, 3.0], np.float32), nz.sum())
    return {
        "conv.weight": w,
        "conv.bias": rng.standard_normal(7).astype(np.float32),  # dense
        "mask": rng.random(30) < 0.5,
        "steps": np.int64(12345),
        "empty": np.zeros((0, 4), np.float16),
    }


# The fuzz fixtures: a small model (sparse with many chunks, dense, bool, 0-d, empty,
# metadata) and a tiny int16 file; BLOBS maps a label to (blob, original tensors).
ORIGINAL = _fuzz_tensors()
BLOB = encode(
    ORIGINAL,
    index_bits=3,
    code_bits=3,
    chunk_entries=32,
    overrides={"mask": {"index_bits": 1, "code_bits": 1}, "conv.bias": {"encoding": "dense"}},
    metadata={"model": "tiny", "layers": [1, 2, {"k": None}]},
)
SMALL = {"x": np.array([0, 0, 7, 0, 0, 0, 0, 0, 0, 9, 7, 0], np.int16)}
SMALL_BLOB = encode(SMALL, index_bits=2, code_bits=2, chunk_entries=32)
BLOBS = {"model": (BLOB, ORIGINAL), "small": (SMALL_BLOB, SMALL)}
