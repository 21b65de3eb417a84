"""The GPU kernels' algorithm written against an array namespace (``xp``: NumPy or CuPy).

``crest/gpu/kernels.cu`` decodes a sparse tensor with one CUDA block per chunk of the
chunk table; this module performs the same decomposition with whole-array operations so
that it can be checked on a CPU (``xp=numpy``) against the reference decoder:

1. the chunk's absolute start ``bounds[c]`` (the chunk table's base; ``bounds[n_chunks]``
   is ``numel``), and its region ``[bounds[c], bounds[c+1])``;
2. an inclusive scan of ``gap + 1`` inside each chunk only (never across chunks):
   ``pos_j = bounds[c] + scan_j - 1``;
3. the codebook gather ``codebook[code_j]``;
4. the region write: every chunk writes its whole region (zeros included), so the regions
   must tile ``[0, numel)``; regions too large for shared memory (see :func:`plan_regions`)
   are zero-filled separately and then scattered into.

It also holds the host-side planning the CUDA path uses (:func:`chunk_bounds`,
:func:`plan_regions`, :func:`launch_shape`), so the same code decides staging on both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest.exceptions import FormatError
from crest.format import EncodedTensor

__all__ = [
    "STAGE_CAP_BYTES",
    "MAX_BATCH",
    "RegionPlan",
    "chunk_bounds",
    "plan_regions",
    "launch_shape",
    "unpack_xp",
    "positions_xp",
    "decode_sparse_xp",
    "sparse_matmul_xp",
]

logger = logging.getLogger(__name__)

STAGE_CAP_BYTES = 64 * 1024  # shared memory a block may use to stage its region (FACTS: 64 KB)
MAX_BATCH = 16  # columns of x the fused product takes in one launch
_BLOCK_THREADS = 256


@dataclass(frozen=True)
class RegionPlan:
    """Which chunks stage their region in shared memory.

    Attributes:
        stage_bytes: dynamic shared memory for staging (0 when no chunk is staged); a chunk
            is staged iff ``region_bytes + 32 <= stage_bytes`` (the kernel's own test).
        big: int64 ids of the chunks whose region is zero-filled and scattered into instead.
        big_starts: int64 first element of each big region.
        big_ends: int64 end (exclusive) of each big region.
    """

    stage_bytes: int
    big: np.ndarray
    big_starts: np.ndarray
    big_ends: np.ndarray


def chunk_bounds(t: EncodedTensor) -> np.ndarray:
    """Region bounds of a sparse tensor: int64 ``[n_chunks + 1]``, chunk bases then numel.

    Args:
        t: a sparse tensor from :func:`crest.gpu.parse` (host arrays).

    Returns:
        ``bounds[c]`` is the absolute position before chunk ``c``'s first entry;
        ``bounds[n_chunks] == numel``. Chunk ``c`` writes exactly ``[bounds[c], bounds[c+1])``.

    Raises:
        FormatError: ``t`` is not sparse.
    """
    if t.encoding != "sparse" or t.chunk_table is None:
        raise FormatError(f"tensor {t.name[:200]!r} is not sparse")
    bounds = np.empty(t.n_chunks + 1, dtype=np.int64)
    bounds[:-1] = t.chunk_table[:, 0].astype(np.int64)
    bounds[-1] = t.numel
    return bounds


def plan_regions(bounds: np.ndarray, itemsize: int, stage_cap: int = STAGE_CAP_BYTES) -> RegionPlan:
    """Decide which chunk regions fit in shared memory (host side, NumPy).

    Args:
        bounds: int64 ``[n_chunks + 1]`` from :func:`chunk_bounds`.
        itemsize: bytes per output element (1, 2, 4 or 8).
        stage_cap: the most shared memory one block may stage, in bytes (multiple of 16).

    Returns:
        The :class:`RegionPlan`: the smallest ``stage_bytes`` (multiple of 16, at most
        ``stage_cap``) that stages every region of at most ``stage_cap - 32`` bytes.
    """
    bounds = np.asarray(bounds, dtype=np.int64)
    region_bytes = np.diff(bounds) * itemsize + 32
    fits = region_bytes <= stage_cap
    stage = int(region_bytes[fits].max()) if bool(fits.any()) else 0
    stage = (stage + 15) // 16 * 16
    big = np.flatnonzero(~fits).astype(np.int64)
    return RegionPlan(stage, big, bounds[big].copy(), bounds[big + 1].copy())


def launch_shape(chunk_entries: int) -> tuple[int, int]:
    """Threads per block and entries per thread for a chunk size (a power of two >= 32)."""
    threads = min(_BLOCK_THREADS, chunk_entries)
    return threads, chunk_entries // threads


def unpack_xp(words: Any, width: int, count: int, xp: Any) -> Any:
    """Values ``0..count-1`` of ``width`` bits (1..16) from an LSB-first stream.

    Reads the stream as uint32 little-endian words, like the kernel: value ``i`` starts at
    bit ``i * width``, in word ``bit >> 5`` at shift ``bit & 31``, and may continue into the
    next word.

    Args:
        words: uint32 ``[n_words]`` (the stream's bytes viewed as ``<u4``), on xp's device.
        width: bits per value.
        count: values to read.
        xp: the array namespace (numpy or cupy).

    Returns:
        uint32 ``[count]`` on xp's device.
    """
    if count == 0:
        return xp.zeros(0, dtype=xp.uint32)
    bit = xp.arange(count, dtype=xp.uint64) * xp.uint64(width)
    word = (bit >> xp.uint64(5)).astype(xp.int64)
    shift = (bit & xp.uint64(31)).astype(xp.uint64)
    nxt = xp.minimum(word + 1, words.shape[0] - 1)
    pair = words[word].astype(xp.uint64) | (words[nxt].astype(xp.uint64) << xp.uint64(32))
    return ((pair >> shift) & xp.uint64((1 << width) - 1)).astype(xp.uint32)


def _words(stream: np.ndarray, xp: Any) -> Any:
    return xp.asarray(np.ascontiguousarray(stream).view(np.dtype("<u4")).astype(np.uint32, copy=False))


def positions_xp(t: EncodedTensor, xp: Any) -> tuple[Any, Any]:
    """Absolute position and code of every entry, by per-chunk scans (fillers included).

    Args:
        t: a sparse tensor from :func:`crest.gpu.parse`.
        xp: the array namespace.

    Returns:
        ``(pos int64 [n_entries], code uint32 [n_entries])`` on xp's device.
    """
    n, k = t.n_entries or 0, t.chunk_entries or 1
    if t.index_stream is None or t.code_stream is None:
        raise FormatError(f"tensor {t.name[:200]!r}: sparse sections missing")
    gaps = unpack_xp(_words(t.index_stream, xp), t.index_bits or 1, n, xp)
    codes = unpack_xp(_words(t.code_stream, xp), t.code_bits or 1, n, xp)
    bounds = xp.asarray(chunk_bounds(t))
    n_chunks = t.n_chunks
    steps = xp.zeros(n_chunks * k, dtype=xp.int64)
    steps[:n] = gaps.astype(xp.int64) + 1
    scan = xp.cumsum(steps.reshape(n_chunks, k), axis=1)  # inclusive, inside each chunk
    pos = (bounds[:-1, None] + scan - 1).reshape(-1)[:n]
    return pos, codes


def _zero_ranges(out: Any, lo: Any, hi: Any, xp: Any) -> None:
    """Set ``out[lo[r]:hi[r]] = 0`` for every range r (a difference array, vectorized)."""
    if lo.shape[0] == 0:
        return
    numel = out.shape[0]
    edges = xp.bincount(lo, minlength=numel + 1)[: numel + 1].astype(xp.int64)
    edges -= xp.bincount(hi, minlength=numel + 1)[: numel + 1]
    out[xp.cumsum(edges)[:numel] > 0] = 0


def decode_sparse_xp(
    t: EncodedTensor,
    xp: Any,
    *,
    codebook: Any = None,
    stage_cap: int = STAGE_CAP_BYTES,
    poison: bool = False,
) -> Any:
    """Decode one sparse tensor the way the CUDA kernels do, with array operations.

    Args:
        t: a sparse tensor from :func:`crest.gpu.parse`.
        xp: the array namespace (numpy or cupy).
        codebook: the values to gather, ``[n_codes]`` of any dtype with
            ``codebook[0] == 0`` (default: the tensor's own codebook as bit patterns).
        stage_cap: shared-memory budget used to plan staged vs zero-filled regions.
        poison: start from an output filled with ones bits instead of zeros, to prove the
            region writes cover every element (tests).

    Returns:
        The decoded tensor: shape ``t.shape``, dtype of ``codebook`` (default the tensor's
        dtype), on xp's device.
    """
    if t.codebook is None:
        raise FormatError(f"tensor {t.name[:200]!r}: codebook missing")
    itemsize = t.dtype.itemsize
    if codebook is None:
        bits = np.dtype(f"u{itemsize}")
        table = xp.asarray(np.ascontiguousarray(t.codebook).view(bits.newbyteorder("<")).astype(bits))
        view_as: Any = t.dtype
    else:
        table = xp.asarray(codebook)
        view_as = None
    numel = t.numel
    out = xp.empty(numel, dtype=table.dtype)
    if poison:
        out.view(xp.uint8)[...] = 0xFF
    if (t.n_entries or 0) == 0:
        out[...] = 0
    else:
        bounds = chunk_bounds(t)
        plan = plan_regions(bounds, int(table.dtype.itemsize), stage_cap)
        # 4a. every region is written once, zeros included: staged regions by their block
        # (from a zeroed shared-memory copy), big regions by the fill kernel. The regions
        # must tile [0, numel): nothing else clears the output.
        staged = np.ones(bounds.shape[0] - 1, dtype=bool)
        staged[plan.big] = False
        for lo, hi in ((bounds[:-1][staged], bounds[1:][staged]), (plan.big_starts, plan.big_ends)):
            _zero_ranges(out, xp.asarray(lo), xp.asarray(hi), xp)
        starts = xp.asarray(bounds[:-1])
        ends = xp.asarray(bounds[1:])
        pos, codes = positions_xp(t, xp)
        # 4b. the kernel's guard: an entry writes only inside its own chunk's region
        chunk = xp.arange(pos.shape[0], dtype=xp.int64) // (t.chunk_entries or 1)
        keep = (codes != 0) & (pos >= starts[chunk]) & (pos < ends[chunk])
        out[pos[keep]] = table[codes[keep].astype(xp.int64)]
    out = out.reshape(t.shape)
    return out.view(view_as) if view_as is not None else out


def sparse_matmul_xp(t: EncodedTensor, x: Any, xp: Any) -> Any:
    """``y = W x`` from the sparse form, W the tensor viewed as ``[out, in]``.

    Args:
        t: a sparse tensor of a floating or integer dtype, 2-D ``[out, in]`` (other ranks
            are viewed as ``[shape[0], prod(shape[1:])]``).
        x: ``[in]`` or ``[in, batch]`` array on xp's device.
        xp: the array namespace.

    Returns:
        ``[out]`` or ``[out, batch]``: float64 accumulation of float32 weight values,
        in float64.
    """
    if t.codebook is None:
        raise FormatError(f"tensor {t.name[:200]!r}: codebook missing")
    out_f = t.shape[0] if t.shape else 1
    in_f = int(np.prod(t.shape[1:], dtype=np.int64))
    x2 = x.reshape(x.shape[0], 1) if x.ndim == 1 else x
    batch = x2.shape[1]
    y = xp.zeros((out_f, batch), dtype=xp.float64)
    if (t.n_entries or 0) and in_f:
        values = xp.asarray(np.ascontiguousarray(t.codebook).astype(t.dtype).astype(np.float32))
        pos, codes = positions_xp(t, xp)
        keep = codes != 0
        pos, codes = pos[keep], codes[keep].astype(xp.int64)
        rows, cols = pos // in_f, pos % in_f
        w = values[codes].astype(xp.float64)
        xs = x2.astype(xp.float64)
        for b in range(batch):
            y[:, b] = xp.bincount(rows, weights=w * xs[cols, b], minlength=out_f)[:out_f]
    return y.reshape(out_f) if x.ndim == 1 else y
