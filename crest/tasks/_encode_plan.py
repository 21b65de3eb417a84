"""Choosing each tensor's encoding options: the smallest crest encoding that is exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crest.format import CHUNK_TABLE_COLUMNS, DEFAULT_CHUNK_ENTRIES

__all__ = ["TensorPlan", "plan_counts", "plan_encoding", "plan_tensor"]

_MAX_BITS = 16


@dataclass(frozen=True)
class TensorPlan:
    """Encoding options of one tensor and the payload size they give (bytes, estimated)."""

    encoding: str  # "dense" or "sparse"
    index_bits: int
    code_bits: int
    est_bytes: int


def _sparse_bytes(gaps: np.ndarray, index_bits: int, code_bits: int, n_codes: int, itemsize: int) -> int:
    fillers = int((gaps >> index_bits).sum()) if gaps.size else 0
    entries = gaps.size + fillers
    chunk_table = CHUNK_TABLE_COLUMNS * 8 * -(-entries // DEFAULT_CHUNK_ENTRIES)  # u64 columns per chunk
    return -(-entries * index_bits // 8) + -(-entries * code_bits // 8) + (n_codes + 1) * itemsize + chunk_table


def plan_tensor(
    array: np.ndarray, *, code_bits: int | None = None, index_bits: int | str = "auto"
) -> TensorPlan:
    """The cheapest exact encoding of ``array``.

    Args:
        array: any shape and dtype.
        code_bits: fixed code width (a quantized layer's bits), or None to use the
            narrowest width that holds all distinct nonzero values.
        index_bits: a fixed gap width, or "auto" for the width (1..16) that
            minimises the gap and code streams (fillers included).

    Returns:
        The plan; dense when sparse would not be smaller or cannot hold the values.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    itemsize = flat.dtype.itemsize
    if flat.size == 0 or itemsize not in (1, 2, 4, 8):
        return TensorPlan("dense", 1, 1, flat.size * itemsize)
    bits_view = flat.view(f"u{itemsize}")
    nz = np.flatnonzero(bits_view)
    n_codes = int(np.unique(bits_view[nz]).size)
    gaps = np.diff(nz, prepend=-1) - 1 if nz.size else np.zeros(0, dtype=np.int64)
    return plan_counts(gaps, flat.size, itemsize, n_codes, code_bits=code_bits, index_bits=index_bits)


def plan_counts(
    gaps: np.ndarray,
    numel: int,
    itemsize: int,
    n_codes: int,
    *,
    code_bits: int | None = None,
    index_bits: int | str = "auto",
) -> TensorPlan:
    """:func:`plan_tensor`'s choice from what it depends on: the zero pattern and the
    count of distinct nonzero values, not the values themselves.

    Args:
        gaps: zeros before each nonzero entry, in C order (int64, one per nonzero).
        numel: the tensor's element count.
        itemsize: bytes per element (1, 2, 4 or 8).
        n_codes: distinct nonzero bit patterns.
        code_bits, index_bits: as for :func:`plan_tensor`.
    """
    dense = TensorPlan("dense", 1, 1, numel * itemsize)
    if numel == 0 or itemsize not in (1, 2, 4, 8):
        return dense
    needed = max(1, int(n_codes).bit_length())
    if code_bits is None:
        code_bits = needed
    if needed > code_bits or code_bits > _MAX_BITS:
        return dense
    candidates = range(1, _MAX_BITS + 1) if index_bits == "auto" else [int(index_bits)]
    best: TensorPlan | None = None
    for ib in candidates:
        size = _sparse_bytes(gaps, ib, code_bits, n_codes, itemsize)
        if best is None or size < best.est_bytes:
            best = TensorPlan("sparse", ib, code_bits, size)
    if best is None or best.est_bytes >= dense.est_bytes:
        return dense
    return best


def plan_encoding(
    tensors: dict[str, np.ndarray],
    *,
    code_bits: dict[str, int] | None = None,
    index_bits: int | str = "auto",
) -> dict[str, dict[str, int | str]]:
    """Per-tensor ``overrides`` for :func:`crest.gpu.encode` that give the smallest exact file."""
    code_bits = code_bits or {}
    overrides: dict[str, dict[str, int | str]] = {}
    for name, array in tensors.items():
        plan = plan_tensor(array, code_bits=code_bits.get(name), index_bits=index_bits)
        if plan.encoding == "dense":
            overrides[name] = {"encoding": "dense"}
        else:
            overrides[name] = {"index_bits": plan.index_bits, "code_bits": plan.code_bits}
    return overrides
