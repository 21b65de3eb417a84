"""The crest file container: magic, fixed prefix, JSON header, 64-byte aligned sections.

Layout (all integers little-endian; see docs/format.md)::

    0   8  magic b"\\x89CREST\\r\\n"
    8   4  uint32 format version (1)
    12  4  uint32 CRC-32 (zlib.crc32) of the header JSON bytes
    16  8  uint64 header length N in bytes
    24  N  UTF-8 JSON header
    ...    zero bytes up to the data area start D = ceil((24 + N) / 64) * 64
    D   .. sections; each at a multiple of 64 relative to D, in header order, gaps zero,
           the file ends at the first multiple of 64 at or after the end of the last one

This module knows the container only: it validates the prefix, parses the header JSON
strictly (no NaN, no duplicate keys, bounded nesting), and checks each section's place,
padding and CRC. What a tensor's fields mean is :mod:`crest.format._header`'s business.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from crest.exceptions import FormatError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "FORMAT_NAME",
    "ALIGN",
    "PREFIX_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TENSORS",
    "SECTION_KEYS",
    "SectionRef",
    "align",
    "as_bytes",
    "as_byte_view",
    "build",
    "check_sections",
    "head",
    "json_depth",
    "raw_header",
    "read",
    "read_header_json",
]

logger = logging.getLogger(__name__)

MAGIC = b"\x89CREST\r\n"
FORMAT_VERSION = 1
FORMAT_NAME = "crest"  # the header's "format" field
ALIGN = 64
# magic, format version, CRC-32 of the header JSON, header length N
_PREFIX = struct.Struct("<8sIIQ")
PREFIX_BYTES = _PREFIX.size  # 24
# Parsing JSON takes up to ~25x its bytes in Python objects (``[{},{},...]``), so the header
# is bounded where that stays cheap (~200 MB); a header of 16,384 tensors of ~400 bytes fits.
MAX_HEADER_BYTES = 8 * 2**20
MAX_JSON_DEPTH = 64
MAX_TENSORS = 16384  # tensors one header may list: bounds the per-entry checks
_CRC_MAX = 2**32 - 1
SECTION_KEYS = frozenset({"offset", "length", "crc32"})
_TOP_KEYS = frozenset({"format", "version", "metadata", "tensors"})


def align(n: int) -> int:
    """Round ``n`` (bytes, >= 0) up to a multiple of :data:`ALIGN` (64)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _not_bytes(blob: object) -> TypeError:
    return TypeError(f"blob must be bytes, bytearray or memoryview, got {type(blob).__name__}")


def as_bytes(blob: object) -> bytes:
    """Return ``blob`` as ``bytes`` (copying a bytearray or memoryview).

    Raises:
        TypeError: ``blob`` is not bytes, bytearray or memoryview.
    """
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    raise _not_bytes(blob)


def as_byte_view(blob: object) -> bytes | memoryview:
    """``blob`` as flat bytes without copying it: bytes as is, else a 1-D byte memoryview.

    Raises:
        TypeError: ``blob`` is not bytes, bytearray or memoryview.
    """
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        view = memoryview(blob)
        return view.cast("B") if view.c_contiguous else bytes(view)
    raise _not_bytes(blob)


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), computed without recursion.

    Only containers are visited (a scalar is as deep as the container holding it): a
    header of 60,000 tensors took 1 CPU-second when every value was visited."""
    if not isinstance(obj, (dict, list)):
        return 0
    depth = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, d = stack.pop()
        depth = max(depth, d)
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, d + 1) for v in values if isinstance(v, (dict, list)))
    return depth


def _buffer_bytes(buf: object) -> memoryview:
    """A flat byte view of a bytes-like object or a C-contiguous NumPy array."""
    if isinstance(buf, np.ndarray):
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return memoryview(buf).cast("B")  # type: ignore[arg-type]


def build(header: dict[str, Any], tensor_sections: Sequence[Sequence[tuple[str, object]]]) -> bytes:
    """Write a crest file.

    Args:
        header: the header dict, with ``header["tensors"][i]`` for every tensor; each gets
            its ``"sections"`` field filled here (offset, length and crc32 per section).
        tensor_sections: per tensor, its sections in file order as ``(name, buffer)``;
            a buffer is bytes-like or a NumPy array (written as its C-order bytes).

    Returns:
        The complete file.

    Raises:
        ValueError: the header is not JSON-serialisable (NaN, non-str keys, bad UTF-8).
    """
    tensors = header["tensors"]
    if len(tensors) != len(tensor_sections):
        raise ValueError("one section list per tensor is required")
    parts: list[object] = []
    pos = 0
    for entry, sections in zip(tensors, tensor_sections):
        table: dict[str, dict[str, int]] = {}
        for name, buf in sections:
            view = _buffer_bytes(buf)
            start = align(pos)
            if start > pos:
                parts.append(bytes(start - pos))
            parts.append(view)
            table[name] = {"offset": start, "length": view.nbytes, "crc32": zlib.crc32(view)}
            pos = start + view.nbytes
        entry["sections"] = table
    end = align(pos)
    if end > pos:
        parts.append(bytes(end - pos))
    try:
        text = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        header_bytes = text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"the header (names or metadata) is not valid JSON: {exc}") from exc
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(f"the header is {len(header_bytes)} bytes; the limit is {MAX_HEADER_BYTES}")
    return b"".join([head(header_bytes), *parts])  # type: ignore[list-item]


def head(header_bytes: bytes) -> bytes:
    """Everything before the data area: the prefix, the header JSON bytes, zero padding to 64."""
    head_end = PREFIX_BYTES + len(header_bytes)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, zlib.crc32(header_bytes), len(header_bytes))
    return prefix + header_bytes + bytes(align(head_end) - head_end)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed in a crest header")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _prefix(blob: bytes | memoryview) -> tuple[int, bytes, int]:
    """Check the fixed prefix and the header's length and CRC-32.

    Returns:
        ``(version, header JSON bytes, header end offset)``.
    """
    size = len(blob)
    if size < PREFIX_BYTES:
        if blob[: len(MAGIC)] != MAGIC[:size]:
            raise FormatError("not a crest file: wrong magic bytes")
        raise FormatError(f"truncated file: {size} bytes, the fixed prefix alone is {PREFIX_BYTES}")
    magic, version, header_crc, header_len = _PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise FormatError("not a crest file: wrong magic bytes")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported format version {version}; this reader supports version {FORMAT_VERSION}"
        )
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    head_end = PREFIX_BYTES + header_len
    if head_end > size:
        raise FormatError(f"truncated file: header length {header_len} runs past the end ({size} bytes)")
    header_bytes = bytes(blob[PREFIX_BYTES:head_end])
    if zlib.crc32(header_bytes) != header_crc:
        raise FormatError("header CRC-32 mismatch: the header is corrupt")
    return version, header_bytes, head_end


def _parse_header(header_bytes: bytes, version: int) -> dict[str, Any]:
    """Parse the header JSON strictly and check its top-level keys against the prefix."""
    try:
        header = json.loads(
            header_bytes.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise FormatError(f"header is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise FormatError("header must be a JSON object")
    keys = set(header)
    if keys != _TOP_KEYS:
        missing, extra = sorted(_TOP_KEYS - keys), sorted(keys - _TOP_KEYS)
        raise FormatError(f"header keys wrong: missing {missing}, unknown {[k[:80] for k in extra]}")
    if header["format"] != FORMAT_NAME:
        raise FormatError(f"header field 'format' must be \"crest\", got {header['format']!r:.80}")
    if type(header["version"]) is not int or header["version"] != version:
        raise FormatError(
            f"header field 'version' ({header['version']!r:.40}) does not match the prefix ({version})"
        )
    if not isinstance(header["metadata"], dict):
        raise FormatError("header field 'metadata' must be an object")
    if not isinstance(header["tensors"], list):
        raise FormatError("header field 'tensors' must be a list")
    if len(header["tensors"]) > MAX_TENSORS:
        raise FormatError(f"header lists {len(header['tensors'])} tensors; the limit is {MAX_TENSORS}")
    # after the top level's checks, so that an oversized header is refused without a walk
    if json_depth(header) > MAX_JSON_DEPTH:
        raise FormatError(f"header JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return header


def read(blob: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Validate a file's prefix and header and return them.

    Args:
        blob: the whole file.

    Returns:
        ``(header, data)``: the parsed header dict (top-level keys checked; ``tensors``
        is a list, ``metadata`` a dict) and the data area as a read-only uint8 array.

    Raises:
        FormatError: wrong magic, unsupported version, truncated prefix or header, header
            CRC mismatch, bad UTF-8 or JSON, nesting deeper than 64, bad top-level keys,
            or non-zero padding before the data area.
    """
    version, header_bytes, head_end = _prefix(blob)
    data_start = align(head_end)
    if data_start > len(blob):
        raise FormatError(f"truncated file: the data area starts at {data_start}, file is {len(blob)} bytes")
    if any(blob[head_end:data_start]):
        raise FormatError("non-zero bytes in the padding after the header")
    header = _parse_header(header_bytes, version)
    data = np.frombuffer(blob, dtype=np.uint8, offset=data_start)
    data.setflags(write=False)
    return header, data


def read_header_json(blob: bytes | memoryview) -> dict[str, Any]:
    """Validate the prefix and the header, and read nothing after the header.

    Args:
        blob: the file, or any prefix of it that holds the whole header.

    Returns:
        The parsed header dict, checked as by :func:`read` (the padding after it and the
        data area are not looked at).

    Raises:
        FormatError: as :func:`read`, except for the padding and the data area.
    """
    version, header_bytes, _ = _prefix(blob)
    return _parse_header(header_bytes, version)


def raw_header(blob: bytes) -> bytes:
    """The header JSON bytes of a file, after checking the prefix and the header CRC-32.

    Raises:
        FormatError: wrong magic or version, a truncated header, or a CRC mismatch.
    """
    return _prefix(blob)[1]


class SectionRef:
    """One validated section: where it lies in the data area (bytes)."""

    __slots__ = ("offset", "length")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length


def _uint_field(value: Any, where: str, field: str, limit: int) -> int:
    if type(value) is not int:
        raise FormatError(f"{where}: field {field!r} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise FormatError(f"{where}: field {field!r} = {value} is out of range 0..{limit}")
    return value


def check_sections(
    layout: Sequence[tuple[str, Any, Sequence[tuple[str, int]]]], data: np.ndarray
) -> list[dict[str, SectionRef]]:
    """Validate every section's entry, place, padding and CRC against the data area.

    Args:
        layout: per tensor ``(label, sections_field, expected)``: a label for messages
            (e.g. ``"tensor 'fc1.weight'"``), the header's ``sections`` value, and the
            section names in file order with the byte length each must have.
        data: the data area (uint8), from :func:`read`.

    Returns:
        Per tensor, its sections by name.

    Raises:
        FormatError: a missing or unknown section or field, a non-integer, a length other
            than expected, an offset not a multiple of 64, before the previous section's
            end (overlap / out of order) or past the end of the file, non-zero padding,
            trailing bytes after the last section, or a CRC mismatch.
    """
    size = int(data.shape[0])
    pos = 0
    out: list[dict[str, SectionRef]] = []
    for label, field, expected in layout:
        if not isinstance(field, dict):
            raise FormatError(f"{label}: field 'sections' must be an object")
        names = [name for name, _ in expected]
        if set(field) != set(names):
            missing = sorted(set(names) - set(field))
            extra = sorted(str(k)[:80] for k in set(field) - set(names))
            raise FormatError(f"{label}: sections wrong: missing {missing}, unknown {extra}")
        refs: dict[str, SectionRef] = {}
        for name, want_len in expected:
            where = f"{label}, section {name!r}"
            entry = field[name]
            if not isinstance(entry, dict) or set(entry) != SECTION_KEYS:
                raise FormatError(f"{where}: must be an object with keys offset, length, crc32")
            offset = _uint_field(entry["offset"], where, "offset", size)
            length = _uint_field(entry["length"], where, "length", size)
            crc = _uint_field(entry["crc32"], where, "crc32", _CRC_MAX)
            if length != want_len:
                raise FormatError(f"{where}: length is {length} bytes, the header's fields imply {want_len}")
            if offset % ALIGN:
                raise FormatError(f"{where}: offset {offset} is not a multiple of {ALIGN}")
            if offset < pos:
                raise FormatError(
                    f"{where}: offset {offset} overlaps the previous section (which ends at {pos}); "
                    "sections must be in header order"
                )
            if offset + length > size:
                raise FormatError(
                    f"{where}: bytes {offset}..{offset + length} run past the end of the data area ({size} bytes)"
                )
            if data[pos:offset].any():
                raise FormatError(f"{where}: non-zero bytes in the padding before it")
            view = data[offset : offset + length]
            if zlib.crc32(view) != crc:
                raise FormatError(f"{where}: CRC-32 mismatch, the section is corrupt")
            refs[name] = SectionRef(offset, length)
            pos = offset + length
        out.append(refs)
    if size != align(pos):
        raise FormatError(
            f"file length wrong: the data area is {size} bytes, the sections end at {pos} "
            f"(padded: {align(pos)})"
        )
    if data[pos:].any():
        raise FormatError("non-zero bytes in the padding after the last section")
    return out
