"""A trial's artifact size from its structure, before retraining sets its values.

Once a trial's masks, ranks and code widths are set, the length of its crest file
(docs/format.md) depends on the values it ends with through three things only:

* how many distinct nonzero values each tensor ends with: a sparse tensor's codebook
  length (``n_codes``), and for a tensor that is not quantized its code width too;
* whether a tensor is stored dense or sparse, which the encoder's planner
  (:func:`crest.tasks.plan_counts`) decides from that count and the zero pattern;
* the decimal digits of the CRC-32 that the JSON header stores for every section whose
  bytes depend on the values (a codebook, a code stream, dense data): 1 to 10 characters
  each, so the header's length, rounded up to 64 bytes, moves with them.

Everything else (gap streams, fillers, chunk tables, widths, offsets, the metadata) is
fixed by the zero pattern. :func:`size_bounds` takes the structure, applies the planner
and the format's layout, and bounds the length over the unknowns: ``low <= len(blob) <=
high``, with ``low == high == len(blob)`` when the unknowns are given (``distinct`` and
``crcs``). A quantized tensor's distinct count lies in ``[1, min(nonzeros, 2**bits - 1)]``
(k-means drops empty clusters); a tensor that is not quantized keeps one value per
nonzero weight but for exact coincidences, at most :func:`coincidence_allowance` of them
(an assumption: nothing bounds what training does; the pipeline checks every final
artifact against the bounds it reported and logs a miss).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest import format as crest_format
from crest.format import CHUNK_TABLE_COLUMNS
from crest.tasks._encode_plan import TensorPlan, plan_counts

__all__ = ["SizeBounds", "TensorStructure", "coincidence_allowance", "size_bounds", "structure_of"]

logger = logging.getLogger(__name__)

_ALIGN = 64
_PREFIX_BYTES = 24  # magic, version, header CRC-32, header length
_CRC_LOW, _CRC_HIGH = 0, 2**32 - 1  # the shortest and the longest CRC-32 in decimal
_MAX_CODE_BITS = 16


@dataclass(frozen=True)
class SizeBounds:
    """Bounds on an artifact's length in bytes: ``low <= len(blob) <= high``."""

    low: int
    high: int

    @property
    def exact(self) -> bool:
        """True when the structure fixes the length to the byte."""
        return self.low == self.high

    def holds(self, size: int) -> bool:
        """True when ``size`` (bytes) lies within the bounds."""
        return self.low <= size <= self.high


@dataclass(frozen=True)
class TensorStructure:
    """What fixes one tensor's encoding before its values are final.

    Attributes:
        name: the tensor's name in the artifact.
        dtype: its NumPy dtype.
        shape: its shape.
        nonzero: flat (C-order) indices of the entries that end nonzero, ascending, int64.
        code_bits: the code width of a quantized tensor (its bits), None when its values
            are not shared.
        distinct: the range of the count of distinct nonzero values it may end with;
            None: ``[1, min(nonzeros, 2**code_bits - 1)]`` when quantized, else one per
            nonzero less at most :func:`coincidence_allowance`.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nonzero: np.ndarray
    code_bits: int | None = None
    distinct: tuple[int, int] | None = None

    def distinct_range(self) -> tuple[int, int]:
        """The count of distinct nonzero values, at least and at most."""
        if self.distinct is not None:
            return self.distinct
        nnz = int(self.nonzero.size)
        if self.code_bits is None:
            return max(min(1, nnz), nnz - coincidence_allowance(nnz)), nnz
        return min(1, nnz), min(nnz, (1 << self.code_bits) - 1)


def coincidence_allowance(nonzeros: int) -> int:
    """How many of a tensor's ``nonzeros`` trained (not shared) values may coincide exactly.

    n values spread over the ~2**25 float32 patterns of a few binades coincide about
    n**2 / 2**26 times; this allows 16 times that, plus 8 (trained weights coincide far
    less: their values are not drawn from so few patterns).
    """
    return nonzeros * nonzeros // 2**22 + 8


def structure_of(name: str, array: np.ndarray, *, code_bits: int | None = None) -> TensorStructure:
    """The structure of ``array`` as it stands: its zero pattern (``-0.0`` counts as zero).

    Args:
        name: the tensor's name.
        array: the tensor now (any dtype; float ``-0.0`` is stored as zero by the pipeline).
        code_bits: its quantized code width, or None.
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    nonzero = np.flatnonzero(flat != 0) if flat.dtype.kind in "fc" else np.flatnonzero(flat)
    return TensorStructure(name, flat.dtype, tuple(int(d) for d in np.shape(array)), nonzero.astype(np.int64),
                           code_bits)


@dataclass(frozen=True)
class _Case:
    """One way a tensor may end up encoded: header fields and section lengths (bytes)."""

    fields: dict[str, Any]
    sections: tuple[tuple[str, int], ...]
    known_crc: dict[str, int]

    @property
    def data_bytes(self) -> int:
        return sum(_align(length) for _, length in self.sections)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _packed(entries: int, width: int) -> int:
    return -(-entries * width // 64) * 8  # whole 8-byte words


def _gaps(nonzero: np.ndarray) -> np.ndarray:
    return np.diff(nonzero, prepend=-1) - 1 if nonzero.size else np.zeros(0, dtype=np.int64)


def _groups(t: TensorStructure) -> list[tuple[int | None, int, int]]:
    """(code_bits, fewest, most distinct values) ranges within which the planner's choice
    is monotone: one range for a quantized tensor, one per code width otherwise."""
    lo, hi = t.distinct_range()
    if t.code_bits is not None:
        return [(t.code_bits, lo, hi)]
    groups: list[tuple[int | None, int, int]] = []
    for cb in range(1, _MAX_CODE_BITS + 2):  # width 17 stands for "too many values": dense
        a = max(lo, 0 if cb == 1 else 1 << (cb - 1))
        b = min(hi, (1 << cb) - 1) if cb <= _MAX_CODE_BITS else hi
        if a <= b:
            groups.append((None, a, b))
    return groups


class _Planner:
    """The encoder's choices for one tensor's structure, and the CRCs the structure fixes."""

    def __init__(self, t: TensorStructure, index_bits: int | str, chunk_entries: int) -> None:
        self.t = t
        self.index_bits = index_bits
        self.chunk = chunk_entries
        self.numel = math.prod(t.shape)
        self.itemsize = t.dtype.itemsize
        self.gaps = _gaps(t.nonzero)
        self._crcs: dict[tuple[int, int], dict[str, int]] = {}

    def plan(self, n: int, code_bits: int | None) -> TensorPlan:
        return plan_counts(self.gaps, self.numel, self.itemsize, n, code_bits=code_bits, index_bits=self.index_bits)

    def cases(self) -> list[_Case]:
        """Every way the tensor may end up encoded that can give the least or the most bytes."""
        out: list[_Case] = []
        for code_bits, a, b in _groups(self.t):
            first, last = self.plan(a, code_bits), self.plan(b, code_bits)
            out += [self.case(first, a), self.case(last, b)]
            if first.encoding == "sparse" and last.encoding == "dense":
                lo, hi = a, b
                while hi - lo > 1:  # the planner's sparse estimate grows with n: sparse is a prefix
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if self.plan(mid, code_bits).encoding == "sparse" else (lo, mid)
                out.append(self.case(self.plan(lo, code_bits), lo))
        return out

    def case(self, plan: TensorPlan, n: int) -> _Case:
        if plan.encoding == "dense":
            return self._dense()
        ib, cb = plan.index_bits, plan.code_bits
        entries = int(self.t.nonzero.size) + int((self.gaps >> ib).sum())
        fields = {"encoding": "sparse", "index_bits": ib, "code_bits": cb, "n_entries": entries,
                  "n_codes": n + 1, "chunk_entries": self.chunk}
        sections = (
            ("codebook", (n + 1) * self.itemsize),
            ("index", _packed(entries, ib)),
            ("code", _packed(entries, cb)),
            ("chunks", -(-entries // self.chunk) * CHUNK_TABLE_COLUMNS * 8),
        )
        return _Case(fields, sections, self._fixed_crcs(ib, cb))

    def _dense(self) -> _Case:
        return _Case({"encoding": "dense"}, (("data", self.numel * self.itemsize),), {})

    def _fixed_crcs(self, index_bits: int, code_bits: int) -> dict[str, int]:
        """CRC-32 of the gap stream and the chunk table: the zero pattern fixes their bytes.
        Read from an encode of a stand-in with the same zeros and one nonzero value."""
        key = (index_bits, code_bits)
        if key not in self._crcs:
            flat = np.zeros(self.numel, dtype=self.t.dtype)
            flat[self.t.nonzero] = 1
            blob = crest_format.encode(
                {self.t.name: flat.reshape(self.t.shape)},
                overrides={self.t.name: {"encoding": "sparse", "index_bits": index_bits, "code_bits": code_bits}},
                chunk_entries=self.chunk,
            )
            sections = _header_json(blob)["tensors"][0]["sections"]
            self._crcs[key] = {name: int(sections[name]["crc32"]) for name in ("index", "chunks")}
        return self._crcs[key]


def _header_json(blob: bytes) -> dict[str, Any]:
    """The header of a crest file, as docs/format.md lays it out (prefix, then JSON)."""
    (length,) = struct.unpack_from("<Q", blob, 16)
    parsed: dict[str, Any] = json.loads(blob[_PREFIX_BYTES : _PREFIX_BYTES + length])
    return parsed


def _dumps(obj: Any) -> int:
    """Bytes of ``obj`` as the crest writer serialises its header (compact, UTF-8)."""
    return len(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8"))


def _entry_bytes(t: TensorStructure, case: _Case, base: int, crc_fill: int, crcs: Mapping[str, int]) -> int:
    sections: dict[str, dict[str, int]] = {}
    offset = base
    for name, length in case.sections:
        crc = crcs.get(name, case.known_crc.get(name, crc_fill))
        sections[name] = {"offset": offset, "length": length, "crc32": crc}
        offset += _align(length)
    entry = {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), **case.fields, "sections": sections}
    return _dumps(entry)


def _bound(
    structures: Sequence[TensorStructure],
    cases: Sequence[list[_Case]],
    metadata: Mapping[str, Any],
    crcs: Mapping[str, Mapping[str, int]],
    *,
    high: bool,
) -> int:
    pick = max if high else min
    crc_fill = _CRC_HIGH if high else _CRC_LOW
    header = _dumps({"format": "crest", "version": crest_format.FORMAT_VERSION, "metadata": dict(metadata),
                     "tensors": []})
    header += max(0, len(structures) - 1)  # commas between the entries
    base = 0
    for t, options in zip(structures, cases, strict=True):
        known = crcs.get(t.name, {})
        header += pick(_entry_bytes(t, c, base, crc_fill, known) for c in options)
        base += pick(c.data_bytes for c in options)
    return _align(_PREFIX_BYTES + header) + base


def size_bounds(
    structures: Sequence[TensorStructure],
    *,
    index_bits: int | str = "auto",
    chunk_entries: int = crest_format.DEFAULT_CHUNK_ENTRIES,
    metadata: Mapping[str, Any] | None = None,
    crcs: Mapping[str, Mapping[str, int]] | None = None,
) -> SizeBounds:
    """Bounds on the length of the file :func:`crest.tasks.encode_state` will write.

    Args:
        structures: every tensor of the final state dict, in its order.
        index_bits, chunk_entries: the encode stage's options.
        metadata: the artifact's header metadata (exactly as it will be written).
        crcs: tensor name -> section name -> CRC-32, for sections whose bytes are known
            (pins those digits; by default only the gap stream and chunk table are).

    Returns:
        ``low <= len(blob) <= high`` in bytes; equal when nothing is left unknown.
    """
    cases = [_Planner(t, index_bits, chunk_entries).cases() for t in structures]
    meta = dict(metadata or {})
    known = dict(crcs or {})
    low = _bound(structures, cases, meta, known, high=False)
    high = _bound(structures, cases, meta, known, high=True)
    return SizeBounds(low, high)
