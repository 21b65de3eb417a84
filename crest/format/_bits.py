"""Vectorized LSB-first bit packing of unsigned integers of width 1..16.

Stream layout (the one the crest format uses): value ``i`` of width ``w`` occupies stream
bits ``[i*w, (i+1)*w)``, its least significant bit first; stream bit ``b`` is bit
``b % 8`` of byte ``b // 8``. A packed stream is padded with zero bytes to a multiple of
8 bytes (``packed_nbytes``).

Both directions work on groups of 8 values: 8 values of width ``w`` fill exactly ``w``
bytes, which fit in two little-endian 64-bit words, so packing and unpacking are a fixed
number (8) of whole-array shift/or passes, with no per-element Python loop.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["MAX_WIDTH", "packed_nbytes", "pack", "unpack", "padding_is_zero"]

logger = logging.getLogger(__name__)

MAX_WIDTH = 16

_LE_U8 = np.dtype("<u8")


def _check_width(width: int) -> None:
    if type(width) is not int or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an int in 1..{MAX_WIDTH}, got {width!r}")


def packed_nbytes(count: int, width: int) -> int:
    """Byte length of a packed stream of ``count`` values of ``width`` bits.

    Args:
        count: number of values (>= 0).
        width: bits per value, 1..16.

    Returns:
        ``ceil(count * width / 64) * 8``: the bits rounded up to whole 8-byte words.
    """
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return (count * width + 63) // 64 * 8


def pack(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers LSB-first into a byte stream.

    Args:
        values: 1-D array of non-negative integers, each ``< 2**width``.
        width: bits per value, 1..16.

    Returns:
        uint8 array of length ``packed_nbytes(len(values), width)``; bits past the last
        value are zero.

    Raises:
        ValueError: a bad width, a non-1-D input, or a value that does not fit.
    """
    _check_width(width)
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if values.dtype.kind not in "ui" and values.size:
        raise ValueError(f"values must be integers, got dtype {values.dtype}")
    n = int(values.shape[0])
    out_len = packed_nbytes(n, width)
    if n == 0:
        return np.zeros(out_len, dtype=np.uint8)
    if values.dtype.kind == "i" and int(values.min()) < 0:
        raise ValueError("values must be non-negative")
    if int(values.max()) >= 1 << width:
        raise ValueError(f"a value does not fit in {width} bits")
    ngroups = (n + 7) // 8
    v = np.zeros(ngroups * 8, dtype=np.uint64)
    v[:n] = values
    v = np.ascontiguousarray(v.reshape(ngroups, 8).T)  # row j: the j-th value of each group
    lo = np.zeros(ngroups, dtype=np.uint64)
    hi = np.zeros(ngroups, dtype=np.uint64)
    for j in range(8):
        s = j * width
        col = v[j]
        if s < 64:
            lo |= col << np.uint64(s)
            if s + width > 64:
                hi |= col >> np.uint64(64 - s)
        else:
            hi |= col << np.uint64(s - 64)
    words = np.empty((ngroups, 2), dtype=_LE_U8)
    words[:, 0] = lo
    words[:, 1] = hi
    grouped = words.view(np.uint8).reshape(ngroups, 16)[:, :width].reshape(-1)
    out = np.zeros(out_len, dtype=np.uint8)
    m = min(out_len, grouped.shape[0])
    out[:m] = grouped[:m]  # bytes past out_len hold only bits past n*width: zero
    return out


def unpack(stream: np.ndarray, width: int, count: int) -> np.ndarray:
    """Unpack the first ``count`` values of ``width`` bits from an LSB-first stream.

    Args:
        stream: 1-D uint8 array holding at least ``ceil(count * width / 8)`` bytes.
        width: bits per value, 1..16.
        count: number of values to read (>= 0).

    Returns:
        uint16 array of length ``count``.

    Raises:
        ValueError: a bad width or count, or a stream too short for ``count`` values.
    """
    _check_width(width)
    stream = np.asarray(stream)
    if stream.ndim != 1 or stream.dtype != np.uint8:
        raise ValueError("stream must be a 1-D uint8 array")
    if type(count) is not int or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if stream.shape[0] * 8 < count * width:
        raise ValueError(
            f"stream of {stream.shape[0]} bytes is too short for {count} values of {width} bits"
        )
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    ngroups = (count + 7) // 8
    need = ngroups * width
    grouped = np.zeros((ngroups, 16), dtype=np.uint8)
    avail = min(need, stream.shape[0])
    flat = np.zeros(need, dtype=np.uint8)
    flat[:avail] = stream[:avail]
    grouped[:, :width] = flat.reshape(ngroups, width)
    words = grouped.view(_LE_U8)
    lo = words[:, 0].astype(np.uint64)
    hi = words[:, 1].astype(np.uint64)
    mask = np.uint64((1 << width) - 1)
    out = np.empty((ngroups, 8), dtype=np.uint16)
    for j in range(8):
        s = j * width
        if s < 64:
            val = lo >> np.uint64(s)
            if s + width > 64:
                val |= hi << np.uint64(64 - s)
        else:
            val = hi >> np.uint64(s - 64)
        out[:, j] = val & mask
    return out.reshape(-1)[:count]


def padding_is_zero(stream: np.ndarray, nbits: int) -> bool:
    """Whether every stream bit at or past bit ``nbits`` is zero.

    Args:
        stream: 1-D uint8 array.
        nbits: number of meaningful leading bits (>= 0).

    Returns:
        True when the padding bits are all zero.
    """
    stream = np.asarray(stream)
    full = (nbits + 7) // 8
    if full > stream.shape[0]:
        return False
    if nbits % 8 and int(stream[nbits // 8]) >> (nbits % 8):
        return False
    return not bool(stream[full:].any())
