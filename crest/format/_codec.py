"""Per-tensor encodings of the crest format: ``dense`` and ``sparse``.

Everything works on raw bit patterns: a tensor is flattened in C order and viewed as the
unsigned integer of its itemsize, so encoding and decoding are bit-exact for every value
(NaN payloads, -0.0, infinities, subnormals). "Zero" is bit pattern 0 only.

``sparse`` is Deep Compression's relative-index storage with a chunk table: entries
``(gap, code)`` in increasing position order, decoded as ``pos = prev + gap;
out[pos] = codebook[code]; prev = pos + 1``; gaps longer than ``2**index_bits - 1`` are
bridged by filler entries (gap ``2**index_bits - 1``, code 0). Every ``chunk_entries``
entries the chunk table stores the absolute ``prev`` and the bit offsets of the entry in
both streams, so chunks decode independently. The NumPy decoder here is the definition of
correct; see docs/format.md for the byte layout.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest.exceptions import FormatError
from crest.format import _bits, _container
from crest.format._header import (
    CHUNK_TABLE_COLUMNS,
    DEFAULT_CHUNK_ENTRIES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DTYPE_SET,
    DTYPES,
    MAX_CHUNK_ENTRIES,
    MIN_CHUNK_ENTRIES,
    TensorInfo,
    check_entries,
)

__all__ = [
    "FORMAT_VERSION",
    "EncodedTensor",
    "encode",
    "decode",
    "decode_tensor",
    "parse",
    "parse_with_header",
    "check_tensor",
    "sha256",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = _container.FORMAT_VERSION

_AUTO = "auto"
_ENCODING_CHOICES = (_AUTO, "dense", "sparse")
_OVERRIDE_KEYS = frozenset({"index_bits", "code_bits", "encoding"})
_DECODE_BATCH = 1 << 20  # entries per vectorized decode step; a multiple of every chunk size
_PREFIX_PROBE = 1 << 18  # nonzeros looked at first to reject a dense tensor early


def _bits_dtype(itemsize: int) -> np.dtype[Any]:
    """Native unsigned integer dtype of ``itemsize`` bytes."""
    return np.dtype(f"u{itemsize}")


def _le(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Little-endian variant of ``dtype`` (the byte order of every section)."""
    return dtype.newbyteorder("<")


@dataclass(frozen=True, eq=False)
class EncodedTensor(TensorInfo):
    """A validated view of one stored tensor, without decoding it.

    Arrays are read-only views into the file (little-endian dtypes).

    Attributes:
        name, dtype, shape, encoding, index_bits, code_bits, n_entries, n_codes,
            chunk_entries: as in :class:`~crest.format.TensorInfo`.
        data: dense only: the values, shape ``shape``, dtype ``dtype`` (little-endian).
        codebook: sparse only: the codebook, shape ``[n_codes]``, ``codebook[0] == 0``.
        index_stream: sparse only: packed gaps, uint8, ``packed_nbytes(n_entries, index_bits)``.
        code_stream: sparse only: packed codes, uint8, ``packed_nbytes(n_entries, code_bits)``.
        chunk_table: sparse only: uint64 ``[n_chunks, 3]``: (prev position, index-stream
            bit offset, code-stream bit offset) of each chunk's first entry.
    """

    data: np.ndarray | None = None
    codebook: np.ndarray | None = None
    index_stream: np.ndarray | None = None
    code_stream: np.ndarray | None = None
    chunk_table: np.ndarray | None = None

    # views of a file's bytes are not values: compare and hash by identity
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def n_chunks(self) -> int:
        """Rows of the chunk table (0 for dense)."""
        return 0 if self.chunk_table is None else int(self.chunk_table.shape[0])


def _check_width(value: Any, argument: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{argument} must be an int in 1..16, got {type(value).__name__}")
    if not 1 <= value <= _bits.MAX_WIDTH:
        raise ValueError(f"{argument} must be in 1..16, got {value}")
    return value


def _as_array(name: str, value: Any) -> np.ndarray:
    if not (isinstance(value, np.ndarray) or hasattr(value, "__array__")):
        raise TypeError(
            f"tensors[{name!r}] must be an array (anything with __array__), got {type(value).__name__}"
        )
    try:
        arr = np.asarray(value)
    except Exception as exc:  # torch raises RuntimeError for grad tensors, TypeError for bf16
        raise TypeError(f"tensors[{name!r}] cannot be converted to a NumPy array: {exc}") from exc
    if arr.dtype.fields is not None or arr.dtype.subdtype is not None or arr.dtype.name not in DTYPE_SET:
        raise TypeError(
            f"tensors[{name!r}] has dtype {arr.dtype}; supported: {', '.join(DTYPES)}"
        )
    return arr


def _bit_patterns(arr: np.ndarray) -> np.ndarray:
    """Flattened C-order bit patterns as the native unsigned int of the same itemsize."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    order = flat.dtype.byteorder
    raw = flat.view(np.dtype(f"u{flat.dtype.itemsize}").newbyteorder(order if order != "|" else "="))
    return raw.astype(_bits_dtype(flat.dtype.itemsize), copy=False)


def _count_fits(values: np.ndarray, limit: int) -> np.ndarray | None:
    """Sorted distinct values, or None when there are more than ``limit`` of them."""
    if values.shape[0] > _PREFIX_PROBE and np.unique(values[:_PREFIX_PROBE]).shape[0] > limit:
        return None
    distinct = np.unique(values)
    return distinct if distinct.shape[0] <= limit else None


def _sparse_sections(
    bits: np.ndarray, nz: np.ndarray, distinct: np.ndarray, index_bits: int, code_bits: int, chunk: int
) -> tuple[dict[str, int], list[tuple[str, object]]]:
    """Build the sparse entries, streams and chunk table (vectorized)."""
    itemsize = bits.dtype.itemsize
    codes = (np.searchsorted(distinct, bits[nz]) + 1).astype(np.uint16)
    gaps = np.diff(nz, prepend=-1) - 1  # zeros before each nonzero, int64
    span = 1 << index_bits  # positions consumed by one filler entry: M zeros + its own zero
    fill = gaps >> index_bits  # filler entries before each nonzero
    last = np.cumsum(fill + 1) - 1  # entry index of each nonzero
    n = int(last[-1]) + 1 if last.shape[0] else 0
    gap_stream = np.full(n, span - 1, dtype=np.uint16)
    code_stream = np.zeros(n, dtype=np.uint16)
    gap_stream[last] = gaps & (span - 1)
    code_stream[last] = codes
    n_chunks = -(-n // chunk)
    table = np.zeros((n_chunks, CHUNK_TABLE_COLUMNS), dtype="<u8")
    if n_chunks > 1:
        ends = np.cumsum(gap_stream.astype(np.int64) + 1)  # prev after each entry
        table[1:, 0] = ends[np.arange(1, n_chunks) * chunk - 1]
    rows = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk)
    table[:, 1] = rows * np.uint64(index_bits)
    table[:, 2] = rows * np.uint64(code_bits)
    codebook = np.zeros(distinct.shape[0] + 1, dtype=_le(_bits_dtype(itemsize)))
    codebook[1:] = distinct
    fields = {
        "index_bits": index_bits,
        "code_bits": code_bits,
        "n_entries": n,
        "n_codes": int(codebook.shape[0]),
        "chunk_entries": chunk,
    }
    sections: list[tuple[str, object]] = [
        ("codebook", codebook),
        ("index", _bits.pack(gap_stream, index_bits)),
        ("code", _bits.pack(code_stream, code_bits)),
        ("chunks", table),
    ]
    return fields, sections


def _encode_one(
    name: str, value: Any, index_bits: int, code_bits: int, encoding: str, chunk: int
) -> tuple[dict[str, Any], list[tuple[str, object]]]:
    arr = _as_array(name, value)
    bits = _bit_patterns(arr)
    if arr.dtype == np.bool_ and bits.shape[0] and int(bits.max()) > 1:
        raise ValueError(f"tensors[{name!r}] is a bool array holding bytes other than 0 and 1")
    entry: dict[str, Any] = {
        "name": name,
        "dtype": arr.dtype.name,
        "shape": [int(d) for d in arr.shape],
    }
    distinct = None
    nz = None
    if encoding != "dense":
        nz = np.flatnonzero(bits)
        distinct = _count_fits(bits[nz], (1 << code_bits) - 1)
        if distinct is None and encoding == "sparse":
            raise ValueError(
                f"overrides[{name!r}]: encoding 'sparse' needs at most {(1 << code_bits) - 1} "
                f"distinct nonzero values for code_bits={code_bits}; the tensor has more"
            )
        if distinct is None:
            logger.debug(
                "tensor %r: more than %d distinct nonzero values for code_bits=%d; stored dense",
                name, (1 << code_bits) - 1, code_bits,
            )
    if distinct is None or nz is None:
        entry["encoding"] = "dense"
        return entry, [("data", bits.astype(_le(bits.dtype), copy=False))]
    entry["encoding"] = "sparse"
    fields, sections = _sparse_sections(bits, nz, distinct, index_bits, code_bits, chunk)
    entry.update(fields)
    return entry, sections


def encode(
    tensors: Mapping[str, Any],
    *,
    index_bits: int = 5,
    code_bits: int = 5,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
) -> bytes:
    """Encode named tensors into a crest file, bit-exactly.

    A tensor is stored ``sparse`` when it has at most ``2**code_bits - 1`` distinct
    nonzero bit patterns (unless forced dense), else ``dense``. Values never change.

    Args:
        tensors: name (non-empty str) -> array (anything with ``__array__``) of dtype
            bool, int8/16/32/64, uint8/16/32/64, float16/32/64; any shape, including
            0-d and empty. Order is kept.
        index_bits: default gap width in bits, 1..16.
        code_bits: default code width in bits, 1..16.
        overrides: per tensor name, any of ``index_bits``, ``code_bits`` and
            ``encoding`` (``"auto"``, ``"dense"`` or ``"sparse"``).
        metadata: a JSON-serialisable dict stored in the header.
        chunk_entries: entries per chunk-table row, a power of two in 32..65536.

    Returns:
        The file bytes; ``sha256(blob)`` is its id.

    Raises:
        TypeError: a non-mapping argument, a non-str name, a non-array value, an
            unsupported dtype, or a non-int width.
        ValueError: an empty name, a width or chunk size out of range, an unknown
            override name or key, a bad encoding, non-JSON metadata, or
            ``encoding="sparse"`` for a tensor with too many distinct values.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    if len(tensors) > _container.MAX_TENSORS:
        raise ValueError(f"{len(tensors)} tensors; a crest file holds at most {_container.MAX_TENSORS}")
    index_bits = _check_width(index_bits, "index_bits")
    code_bits = _check_width(code_bits, "code_bits")
    if type(chunk_entries) is not int:
        raise TypeError(f"chunk_entries must be an int, got {type(chunk_entries).__name__}")
    if not (MIN_CHUNK_ENTRIES <= chunk_entries <= MAX_CHUNK_ENTRIES and chunk_entries & (chunk_entries - 1) == 0):
        raise ValueError(
            f"chunk_entries must be a power of two in {MIN_CHUNK_ENTRIES}..{MAX_CHUNK_ENTRIES}, got {chunk_entries}"
        )
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping, got {type(overrides).__name__}")
    for key in overrides:
        if key not in tensors:
            raise ValueError(f"overrides names {key!r}, which is not in tensors")
    for name in tensors:
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if not name:
            raise ValueError("tensor names must be non-empty")
    meta: Any = {} if metadata is None else metadata
    if not isinstance(meta, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(meta).__name__}")
    meta = dict(meta)

    entries: list[dict[str, Any]] = []
    sections: list[list[tuple[str, object]]] = []
    for name, value in tensors.items():
        opts = overrides.get(name, {})
        if not isinstance(opts, Mapping):
            raise TypeError(f"overrides[{name!r}] must be a mapping, got {type(opts).__name__}")
        unknown = set(opts) - _OVERRIDE_KEYS
        if unknown:
            raise ValueError(
                f"overrides[{name!r}] has unknown keys {sorted(map(str, unknown))}; "
                f"allowed: {sorted(_OVERRIDE_KEYS)}"
            )
        ib = _check_width(opts.get("index_bits", index_bits), f"overrides[{name!r}]['index_bits']")
        cb = _check_width(opts.get("code_bits", code_bits), f"overrides[{name!r}]['code_bits']")
        enc = opts.get("encoding", _AUTO)
        if enc not in _ENCODING_CHOICES:
            raise ValueError(f"overrides[{name!r}]['encoding'] must be one of {_ENCODING_CHOICES}, got {enc!r}")
        entry, secs = _encode_one(name, value, ib, cb, enc, chunk_entries)
        entries.append(entry)
        sections.append(secs)
    header = {"format": _container.FORMAT_NAME, "version": FORMAT_VERSION, "metadata": meta, "tensors": entries}
    try:
        blob = _container.build(header, sections)
    except ValueError as exc:
        raise ValueError(f"metadata or tensor names: {exc}") from exc
    # the stored header must read back (nesting depth within the reader's limit)
    try:
        _container.read(blob)
    except FormatError as exc:
        raise ValueError(f"metadata cannot be stored: {exc}") from exc
    return blob


def _view(data: np.ndarray, ref: _container.SectionRef, dtype: Any) -> np.ndarray:
    return data[ref.offset : ref.offset + ref.length].view(dtype)


def _check_content(t: EncodedTensor, where: str) -> None:
    """Cheap checks that need no stream unpacking."""
    if t.encoding == "dense":
        if t.dtype == np.bool_ and t.data is not None and t.data.size and int(t.data.view(np.uint8).max()) > 1:
            raise FormatError(f"{where}: dense bool data holds a byte other than 0 and 1")
        return
    if t.codebook is None or t.index_stream is None or t.code_stream is None or t.chunk_table is None:
        raise FormatError(f"{where}: sparse sections missing")
    cb_bits = t.codebook.view(_le(_bits_dtype(t.dtype.itemsize)))
    if int(cb_bits[0]) != 0:
        raise FormatError(f"{where}: codebook[0] must be the zero bit pattern")
    if t.dtype == np.bool_ and int(cb_bits.max()) > 1:
        raise FormatError(f"{where}: bool codebook holds a byte other than 0 and 1")
    n, ib, cb, chunk = t.n_entries or 0, t.index_bits or 1, t.code_bits or 1, t.chunk_entries or 1
    if not _bits.padding_is_zero(t.index_stream, n * ib):
        raise FormatError(f"{where}: index stream padding bits are not zero")
    if not _bits.padding_is_zero(t.code_stream, n * cb):
        raise FormatError(f"{where}: code stream padding bits are not zero")
    table = t.chunk_table
    if table.shape[0]:
        rows = np.arange(table.shape[0], dtype=np.uint64) * np.uint64(chunk)
        bad = np.flatnonzero(table[:, 1] != rows * np.uint64(ib))
        if bad.shape[0]:
            raise FormatError(f"{where}: chunk table row {int(bad[0])} has a wrong index-stream bit offset")
        bad = np.flatnonzero(table[:, 2] != rows * np.uint64(cb))
        if bad.shape[0]:
            raise FormatError(f"{where}: chunk table row {int(bad[0])} has a wrong code-stream bit offset")
        if int(table[0, 0]) != 0:
            raise FormatError(f"{where}: chunk table base of chunk 0 must be 0")
        bad = np.flatnonzero(table[:, 0] > np.uint64(t.numel))
        if bad.shape[0]:
            raise FormatError(f"{where}: chunk table base of chunk {int(bad[0])} is past the tensor's end")
        bases = table[:, 0].astype(np.int64)
        bad = np.flatnonzero(np.diff(bases) < chunk)
        if bad.shape[0]:
            c = int(bad[0]) + 1
            raise FormatError(
                f"{where}: chunk table base of chunk {c} ({int(bases[c])}) must exceed the previous "
                f"base ({int(bases[c - 1])}) by at least chunk_entries ({chunk})"
            )


def _iter_entries(t: EncodedTensor, where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions int64, codes uint16)`` in batches, validating every entry.

    Requires :func:`_check_content` to have passed (bases <= numel, offsets exact).
    """
    if t.index_stream is None or t.code_stream is None or t.chunk_table is None:
        raise FormatError(f"{where}: sparse sections missing")
    n, ib, cb = t.n_entries or 0, t.index_bits or 1, t.code_bits or 1
    chunk, n_codes, numel = t.chunk_entries or 1, t.n_codes or 1, t.numel
    bases = t.chunk_table[:, 0].astype(np.int64)
    prev_end = 0
    for start in range(0, n, _DECODE_BATCH):
        count = min(_DECODE_BATCH, n - start)
        gaps = _bits.unpack(t.index_stream[start * ib // 8 :], ib, count)
        codes = _bits.unpack(t.code_stream[start * cb // 8 :], cb, count)
        bad = np.flatnonzero(codes >= n_codes)
        if bad.shape[0]:
            raise FormatError(
                f"{where}: entry {start + int(bad[0])} has code {int(codes[bad[0]])}, "
                f"but the codebook has {n_codes} entries"
            )
        c0 = start // chunk
        n_ch = -(-count // chunk)
        local = np.arange(n_ch, dtype=np.int64) * chunk
        ends = np.cumsum(gaps.astype(np.int64) + 1)  # in-batch prev after each entry
        before = np.zeros(n_ch, dtype=np.int64)
        before[1:] = ends[local[1:] - 1]
        if int(bases[c0]) != prev_end:
            raise FormatError(
                f"{where}: chunk table base of chunk {c0} is {int(bases[c0])}, "
                f"but the entries before it end at {prev_end}"
            )
        expect = prev_end + ends[local[1:] - 1]  # bases implied by the entries
        got = bases[c0 + 1 : c0 + n_ch]
        bad = np.flatnonzero(got != expect)
        if bad.shape[0]:
            j = int(bad[0]) + 1
            raise FormatError(
                f"{where}: chunk table base of chunk {c0 + j} is {int(got[j - 1])}, "
                f"but the entries before it end at {int(expect[j - 1])}"
            )
        # chunk bases equal the running position, so this equals prev_end + ends - 1; the
        # per-chunk form is the decoding rule (no scan crosses a chunk)
        counts = np.full(n_ch, chunk, dtype=np.int64)
        counts[-1] = count - (n_ch - 1) * chunk
        pos = ends - 1 + np.repeat(bases[c0 : c0 + n_ch] - before, counts)
        if int(pos[-1]) >= numel:
            raise FormatError(
                f"{where}: entry {start + count - 1} writes position {int(pos[-1])}, "
                f"past the tensor's {numel} elements"
            )
        prev_end = int(pos[-1]) + 1
        if start + count == n and int(codes[-1]) == 0:
            raise FormatError(f"{where}: the last entry has code 0 (a trailing filler entry)")
        yield pos, codes


def check_tensor(t: EncodedTensor) -> None:
    """Run every check :func:`parse` runs on one sparse tensor's content: the codebook's
    zero, stream padding, the chunk table, and every entry's code and position.

    For arrays that did not come from :func:`parse` (e.g. a torch module's state dict)
    before a GPU launch is planned from them.

    Raises:
        FormatError: the tensor is not sparse, or any check fails.
    """
    where = f"tensor {t.name[:200]!r}"
    if t.encoding != "sparse":
        raise FormatError(f"{where}: not sparse")
    _check_content(t, where)
    for _ in _iter_entries(t, where):
        pass


def parse_with_header(blob: bytes, *, walk_entries: bool = True) -> tuple[dict[str, Any], list[EncodedTensor]]:
    """Validate a file and return its header dict and its tensors undecoded.

    Args:
        blob: the file bytes.
        walk_entries: also check every sparse entry (its code, its position and the chunk
            bases), as :func:`parse` does; :func:`decode` checks them while decoding.

    Returns:
        ``(header, tensors)``: the parsed header JSON and one :class:`EncodedTensor` per
        tensor, in file order.

    Raises:
        FormatError: the file is malformed, truncated or fails a checksum.
    """
    header, data = _container.read(blob)
    checked = check_entries(header["tensors"])
    refs = _container.check_sections(
        [(f["where"], f["sections"], expected) for f, expected in checked], data
    )
    out: list[EncodedTensor] = []
    for (f, _), sec in zip(checked, refs):
        dtype: np.dtype[Any] = f["dtype"]
        if f["encoding"] == "dense":
            t = EncodedTensor(
                name=f["name"],
                dtype=dtype,
                shape=f["shape"],
                encoding="dense",
                data=_view(data, sec["data"], _le(dtype)).reshape(f["shape"]),
            )
        else:
            t = EncodedTensor(
                name=f["name"],
                dtype=dtype,
                shape=f["shape"],
                encoding="sparse",
                index_bits=f["index_bits"],
                code_bits=f["code_bits"],
                n_entries=f["n_entries"],
                n_codes=f["n_codes"],
                chunk_entries=f["chunk_entries"],
                codebook=_view(data, sec["codebook"], _le(dtype)),
                index_stream=_view(data, sec["index"], np.uint8),
                code_stream=_view(data, sec["code"], np.uint8),
                chunk_table=_view(data, sec["chunks"], np.dtype("<u8")).reshape(-1, CHUNK_TABLE_COLUMNS),
            )
        _check_content(t, f["where"])
        if walk_entries and t.encoding == "sparse":
            for _ in _iter_entries(t, f["where"]):
                pass
        out.append(t)
    return header, out


def decode_tensor(t: EncodedTensor) -> np.ndarray:
    """Decode one tensor of :func:`parse` with the NumPy reference decoder.

    Args:
        t: the tensor (its entries are checked again while decoding).

    Returns:
        A writable array of ``t.shape`` and ``t.dtype`` (native byte order).

    Raises:
        FormatError: a missing section or an invalid entry.
    """
    where = f"tensor {t.name[:200]!r}"
    bits_dtype = _bits_dtype(t.dtype.itemsize)
    if t.encoding == "dense":
        if t.data is None:
            raise FormatError(f"{where}: dense data missing")
        return t.data.astype(t.dtype, copy=True)
    if t.codebook is None:
        raise FormatError(f"{where}: codebook missing")
    table = t.codebook.view(_le(bits_dtype)).astype(bits_dtype)
    out = np.zeros(t.numel, dtype=bits_dtype)
    for pos, codes in _iter_entries(t, where):
        out[pos] = table[codes]
    return out.view(t.dtype).reshape(t.shape)


def _check_blob(blob: object) -> bytes:
    return _container.as_bytes(blob)


def decode(
    blob: bytes | bytearray | memoryview, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> dict[str, np.ndarray]:
    """Decode a crest file with the NumPy reference decoder (the definition of correct).

    Args:
        blob: the file bytes.
        max_output_bytes: refuse files whose tensors would take more bytes than this
            (default 8 GiB), checked before anything is allocated.

    Returns:
        name -> writable array (native byte order, the stored dtype and shape), in file order.

    Raises:
        FormatError: the file is malformed, truncated, fails a checksum, or declares more
            than ``max_output_bytes`` of output.
        TypeError: ``blob`` is not bytes-like, or ``max_output_bytes`` is not an int.
        ValueError: ``max_output_bytes`` is negative.
    """
    data = _check_blob(blob)
    if type(max_output_bytes) is not int:
        raise TypeError(f"max_output_bytes must be an int, got {type(max_output_bytes).__name__}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes}")
    _, tensors = parse_with_header(data, walk_entries=False)
    total = sum(t.nbytes for t in tensors)
    if total > max_output_bytes:
        raise FormatError(
            f"the file declares {total} bytes of tensors, above max_output_bytes={max_output_bytes}"
        )
    return {t.name: decode_tensor(t) for t in tensors}


def parse(blob: bytes | bytearray | memoryview) -> list[EncodedTensor]:
    """Validate a crest file fully and return its tensors undecoded.

    Every check of :func:`decode` runs (including every entry's code, position and the
    chunk table's consistency), so a consumer such as a GPU decoder may trust the result.

    Args:
        blob: the file bytes.

    Returns:
        One :class:`EncodedTensor` per tensor, in file order; arrays are read-only views.

    Raises:
        FormatError: the file is malformed, truncated or fails a checksum.
        TypeError: ``blob`` is not bytes-like.
    """
    return parse_with_header(_check_blob(blob))[1]


def sha256(blob: bytes | bytearray | memoryview) -> str:
    """The artifact id: SHA-256 of the whole file, lowercase hex (64 characters)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, bytearray or memoryview, got {type(blob).__name__}")
    return hashlib.sha256(blob).hexdigest()
