"""What a crest header says about its tensors: dtypes, fields, limits, and the cheap header read.

Each entry of the header's ``tensors`` list names one tensor (``name``, ``dtype``,
``shape``, ``encoding`` and, for ``sparse``, the widths, counts and chunk size) and the
byte ranges of its sections. :func:`check_entry` validates one entry from the JSON alone;
:func:`read_header` validates the prefix and the whole header and stops there: it never
reads a section, so its cost does not grow with the tensors' sizes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest.exceptions import FormatError
from crest.format import _bits, _container

__all__ = [
    "CHUNK_ROW_BYTES",
    "CHUNK_TABLE_COLUMNS",
    "DEFAULT_CHUNK_ENTRIES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DTYPES",
    "DTYPE_SET",
    "ENCODINGS",
    "MAX_CHUNK_ENTRIES",
    "MIN_CHUNK_ENTRIES",
    "Header",
    "TensorInfo",
    "check_entries",
    "check_entry",
    "read_header",
    "tensor_info",
]

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
)
DTYPE_SET = frozenset(DTYPES)
ENCODINGS = ("dense", "sparse")
DEFAULT_CHUNK_ENTRIES = 1024  # entries per chunk-table row unless the caller asks otherwise
MIN_CHUNK_ENTRIES, MAX_CHUNK_ENTRIES = 32, 65536
CHUNK_TABLE_COLUMNS = 3  # prev position, index-stream bit offset, code-stream bit offset
CHUNK_ROW_BYTES = 8 * CHUNK_TABLE_COLUMNS  # each column a uint64
DEFAULT_MAX_OUTPUT_BYTES = 8 * 2**30  # what a reader allocates at most unless told otherwise
_MAX_NDIM = 64
_MAX_SPAN = 2**62  # bytes: product of the non-zero dimensions times the itemsize
_DENSE_KEYS = frozenset({"name", "dtype", "shape", "encoding", "sections"})
_SPARSE_FIELDS = ("index_bits", "code_bits", "n_entries", "n_codes", "chunk_entries")
_SPARSE_KEYS = _DENSE_KEYS | set(_SPARSE_FIELDS)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its header entry declares it (nothing of its sections is read).

    Attributes:
        name: the tensor's name.
        dtype: its NumPy dtype (native byte order).
        shape: its shape.
        encoding: ``"dense"`` or ``"sparse"``.
        index_bits: sparse only: gap width in bits (1..16).
        code_bits: sparse only: code width in bits (1..16).
        n_entries: sparse only: number of entries, fillers included.
        n_codes: sparse only: codebook length (1 + distinct nonzero values).
        chunk_entries: sparse only: entries per chunk (power of two, 32..65536).
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    encoding: str
    index_bits: int | None = None
    code_bits: int | None = None
    n_entries: int | None = None
    n_codes: int | None = None
    chunk_entries: int | None = None

    @property
    def numel(self) -> int:
        """Number of elements (Python int)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded tensor."""
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class Header:
    """A crest file's validated header, read without touching its sections.

    Attributes:
        version: the format version (the prefix's and the header's, which must agree).
        metadata: the header's ``metadata`` object (JSON values).
        tensors: one :class:`TensorInfo` per tensor, in file order.
    """

    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def dense_bytes(self) -> int:
        """Bytes of all tensors decoded."""
        return sum(t.nbytes for t in self.tensors)


def _int_field(entry: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = entry[key]
    if type(value) is not int:
        raise FormatError(f"{where}: field {key!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise FormatError(f"{where}: field {key!r} = {value} is out of range {lo}..{hi}")
    return value


def check_entry(i: int, entry: Any) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Validate one header tensor entry from the JSON alone.

    Args:
        i: the entry's index in the header's ``tensors`` list (for messages).
        entry: the parsed JSON value of the entry.

    Returns:
        ``(fields, expected)``: the checked fields (``name``, ``where`` (a label for
        messages), ``dtype`` (NumPy), ``shape`` (tuple), ``numel``, ``encoding``, the raw
        ``sections`` value and, for sparse, the widths, counts and chunk size), and the
        section names in file order with the byte length each must have.

    Raises:
        FormatError: a missing, unknown or ill-typed field, or a value out of range.
    """
    where = f"tensor #{i}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: field 'name' must be a non-empty string")
    where = f"tensor {name[:200]!r}"
    encoding = entry.get("encoding")
    if encoding not in ENCODINGS:
        raise FormatError(f"{where}: field 'encoding' must be \"dense\" or \"sparse\"")
    want = _DENSE_KEYS if encoding == "dense" else _SPARSE_KEYS
    if set(entry) != want:
        missing = sorted(want - set(entry))
        extra = sorted(str(k)[:80] for k in set(entry) - want)
        raise FormatError(f"{where}: fields wrong for {encoding}: missing {missing}, unknown {extra}")
    dtype_name = entry["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPE_SET:
        raise FormatError(f"{where}: field 'dtype' is not one of {', '.join(DTYPES)}")
    dtype = np.dtype(dtype_name)
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
        raise FormatError(f"{where}: field 'shape' must be a list of at most {_MAX_NDIM} integers")
    numel = 1
    span = dtype.itemsize  # product of the non-zero dimensions x itemsize (NumPy's size limit)
    for d in shape:
        if type(d) is not int or d < 0:
            raise FormatError(f"{where}: field 'shape' holds {d!r:.40}, not a non-negative integer")
        numel *= d
        span *= max(d, 1)
        if span > _MAX_SPAN:
            raise FormatError(
                f"{where}: field 'shape' is too large (the product of its non-zero "
                "dimensions times the itemsize exceeds 2**62)"
            )
    fields: dict[str, Any] = {
        "name": name,
        "where": where,
        "dtype": dtype,
        "shape": tuple(shape),
        "numel": numel,
        "encoding": encoding,
        "sections": entry["sections"],
    }
    if encoding == "dense":
        return fields, [("data", numel * dtype.itemsize)]
    ib = _int_field(entry, "index_bits", where, 1, _bits.MAX_WIDTH)
    cb = _int_field(entry, "code_bits", where, 1, _bits.MAX_WIDTH)
    chunk = _int_field(entry, "chunk_entries", where, MIN_CHUNK_ENTRIES, MAX_CHUNK_ENTRIES)
    if chunk & (chunk - 1):
        raise FormatError(f"{where}: field 'chunk_entries' = {chunk} is not a power of two")
    n = _int_field(entry, "n_entries", where, 0, numel)
    n_codes = _int_field(entry, "n_codes", where, 1, 1 << cb)
    fields.update(index_bits=ib, code_bits=cb, chunk_entries=chunk, n_entries=n, n_codes=n_codes)
    return fields, [
        ("codebook", n_codes * dtype.itemsize),
        ("index", _bits.packed_nbytes(n, ib)),
        ("code", _bits.packed_nbytes(n, cb)),
        ("chunks", -(-n // chunk) * CHUNK_ROW_BYTES),
    ]


def check_entries(entries: Sequence[Any]) -> list[tuple[dict[str, Any], list[tuple[str, int]]]]:
    """:func:`check_entry` for every entry of a header's ``tensors``, and unique names.

    Raises:
        FormatError: an entry is invalid, or two tensors share a name.
    """
    checked = [check_entry(i, e) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for fields, _ in checked:
        if fields["name"] in seen:
            raise FormatError(f"duplicate tensor name {fields['name'][:200]!r}")
        seen.add(fields["name"])
    return checked


def tensor_info(fields: dict[str, Any]) -> TensorInfo:
    """The :class:`TensorInfo` of fields checked by :func:`check_entry`."""
    sparse = {k: fields[k] for k in _SPARSE_FIELDS if k in fields}
    return TensorInfo(fields["name"], fields["dtype"], fields["shape"], fields["encoding"], **sparse)


def read_header(blob: bytes | bytearray | memoryview) -> Header:
    """Read and validate a crest file's header only: cheap whatever the tensors' sizes.

    Checks the magic, the version, the header length and CRC-32, the JSON and every
    tensor entry's fields; never reads the padding after the header, a section, a
    checksum of one, or a stream entry (:func:`crest.format.parse` does all that).

    Args:
        blob: the file bytes, or any prefix of them that holds the whole header (not
            copied).

    Returns:
        The :class:`Header`.

    Raises:
        FormatError: wrong magic, unsupported version, truncated or corrupt header, bad
            JSON, or an invalid tensor entry.
        TypeError: ``blob`` is not bytes-like.
    """
    header = _container.read_header_json(_container.as_byte_view(blob))
    checked = check_entries(header["tensors"])
    return Header(
        version=header["version"],
        metadata=header["metadata"],
        tensors=tuple(tensor_info(fields) for fields, _ in checked),
    )
