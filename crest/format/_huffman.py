"""The transport form of a crest file: canonical Huffman codes for the gap and code streams.

Deep Compression's last stage. The GPU-resident form stays the fixed-width crest file;
the transport form re-codes every sparse tensor's ``index`` (gap) and ``code`` streams with
length-limited canonical Huffman codes (one code per stream), keeps codebooks and dense
data as raw bytes, stores the original header JSON deflate-compressed, and drops
everything that is derivable (the prefix, all padding, the chunk tables, the streams'
padding). :func:`from_transport` rebuilds the exact original file (same SHA-256, which the
transport file stores and checks). The byte layout is specified in docs/format.md,
section "Transport form".

Decoding is vectorised: each stream is cut into blocks of ``2**block_log2`` symbols whose
bit lengths are stored, and all blocks of all streams of the file decode in lockstep with
NumPy (one table lookup per block per step), so the number of Python-level steps is the
block size, whatever the model size.

Only NumPy and the standard library are used.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest.exceptions import FormatError
from crest.format import _bits, _codec, _container
from crest.format._codec import EncodedTensor
from crest.format._header import CHUNK_ROW_BYTES, CHUNK_TABLE_COLUMNS, DEFAULT_MAX_OUTPUT_BYTES, check_entries

__all__ = [
    "DEFAULT_BLOCK_LOG2",
    "MAX_CODE_LENGTH",
    "TRANSPORT_ALLOWANCE",
    "TRANSPORT_EXPANSION",
    "TRANSPORT_MAGIC",
    "TRANSPORT_VERSION",
    "canonical_codes",
    "code_lengths",
    "from_transport",
    "length_limit",
    "to_transport",
    "transport_output_cap",
    "transport_size",
    "transport_size_parsed",
]

logger = logging.getLogger(__name__)

TRANSPORT_MAGIC = b"\x89CRESTH\n"
TRANSPORT_VERSION = 1
MAX_CODE_LENGTH = 20
DEFAULT_BLOCK_LOG2 = 10
MIN_BLOCK_LOG2, MAX_BLOCK_LOG2 = 5, 16

# magic, version, CRC-32 of bytes 16.., SHA-256 of the original, original length,
# header length N, deflated header length Z, log2 of the block size
_PREFIX = struct.Struct("<8sII32sQIIB")
PREFIX_BYTES = _PREFIX.size  # 65
_CRC_AT = 12  # offset of the CRC-32 field in the prefix
_CRC_FROM = 16  # the CRC covers the file from here on
_DEFLATE_LEVEL = 9

# What a transport file justifies by default: every stored, Huffman-coded or raw byte
# rebuilds to at most ~20 bytes of crest file (a 1-bit code of a 16-bit symbol, its chunk
# table share, section padding), so 64x with a 16 MiB allowance admits every honest file
# but constant streams (no payload at all) beyond that; their callers pass max_output_bytes.
TRANSPORT_EXPANSION = 64
TRANSPORT_ALLOWANCE = 16 * 2**20

MODE_STORED, MODE_CONSTANT, MODE_HUFFMAN_DENSE, MODE_HUFFMAN_SPARSE = 0, 1, 2, 3
_LENGTH_FIELD_BITS = 5  # a code length in a dense table
_BATCH = 1 << 20  # symbols per vectorised step when packing / rebuilding (multiple of 2**16)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SPARSE_ROW = np.dtype([("symbol", "<u2"), ("length", "u1")])


def length_limit(count: int) -> int:
    """Longest code length allowed in a stream of ``count`` symbols: min(20, bit_length(count)).

    Bounding it by the stream's length keeps every decoding table at most ``2 * count``
    entries, so a lying table cannot make a reader allocate more than the data justifies.
    """
    return min(MAX_CODE_LENGTH, max(int(count).bit_length(), 1))


def code_lengths(freqs: np.ndarray, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Length-limited Huffman code lengths for a symbol histogram.

    Huffman's algorithm (ties broken by symbol, then by creation order), then, when a
    length exceeds ``limit``, the JPEG (ITU T.81 Annex K.3) adjustment of the length
    counts, which keeps the Kraft sum at exactly 1; lengths are then handed out shortest
    first in order of decreasing frequency (ties: smaller symbol first).

    Args:
        freqs: 1-D array of non-negative counts, one per symbol of the alphabet.
        limit: longest allowed length, 1..32.

    Returns:
        uint8 array, same length: 0 for unused symbols. Two or more used symbols give a
        complete prefix code (Kraft sum exactly 1); a single used symbol gets length 1.

    Raises:
        ValueError: more used symbols than ``2**limit``, or a bad argument.
    """
    freqs = np.asarray(freqs)
    if freqs.ndim != 1 or (freqs.size and (freqs.dtype.kind not in "ui" or int(freqs.min()) < 0)):
        raise ValueError("freqs must be a 1-D array of non-negative integers")
    if not 1 <= limit <= 32:
        raise ValueError(f"limit must be in 1..32, got {limit}")
    out = np.zeros(freqs.shape[0], dtype=np.uint8)
    used = np.flatnonzero(freqs)
    u = int(used.shape[0])
    if u == 0:
        return out
    if u == 1:
        out[used] = 1
        return out
    if u > 1 << limit:
        raise ValueError(f"{u} symbols do not fit in codes of at most {limit} bits")
    f = [int(x) for x in freqs[used]]
    heap = [(f[i], i) for i in range(u)]
    heapq.heapify(heap)
    parent = [0] * (2 * u - 1)
    node = u
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (fa + fb, node))
        node += 1
    depth = [0] * (2 * u - 1)
    for i in range(2 * u - 3, -1, -1):  # a parent is created after its children
        depth[i] = depth[parent[i]] + 1
    longest = max(depth[:u])
    counts = [0] * (max(longest, limit) + 1)
    for d in depth[:u]:
        counts[d] += 1
    for i in range(longest, limit, -1):  # T.81 K.3: move pairs of deepest leaves up
        while counts[i] > 0:
            j = i - 2
            while counts[j] == 0:
                j -= 1
            counts[i] -= 2
            counts[i - 1] += 1
            counts[j + 1] += 2
            counts[j] -= 1
    order = np.lexsort((used, -np.asarray(f, dtype=np.int64)))  # frequent first, then by symbol
    lengths = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
    out[used[order]] = lengths
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (as in DEFLATE, RFC 1951 3.2.2) for a table of code lengths.

    Symbols sorted by (length, symbol) get consecutive codes; the first code of each length
    is ``(first code of the previous length + its count) << 1``.

    Args:
        lengths: per symbol its code length (0 = unused), at most 32.

    Returns:
        uint32 array of the codes, most significant bit = first bit of the code (0 for
        unused symbols).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.shape[0], dtype=np.uint32)
    syms = np.flatnonzero(lengths)
    if not syms.shape[0]:
        return codes
    ls = lengths[syms]
    order = np.lexsort((syms, ls))
    syms, ls = syms[order], ls[order]
    top = int(ls[-1])
    counts = np.bincount(ls, minlength=top + 1)
    first = [0] * (top + 1)
    code = 0
    for bits in range(1, top + 1):  # counts[0] is 0: the first code of length 1 is 0
        code = (code + int(counts[bits - 1])) << 1
        first[bits] = code
    starts = np.concatenate(([0], np.cumsum(counts)))  # index of the first symbol of each length
    rank = np.arange(syms.shape[0], dtype=np.int64) - starts[ls]
    codes[syms] = (np.asarray(first, dtype=np.int64)[ls] + rank).astype(np.uint32)
    return codes


def _reverse(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each code's ``length`` low bits in reverse order (the LSB-first stream order)."""
    codes = codes.astype(np.uint64)
    lengths = lengths.astype(np.int64)
    out = np.zeros(codes.shape[0], dtype=np.uint64)
    for b in range(int(lengths.max(initial=0))):
        live = b < lengths
        bit = (codes[live] >> np.uint64(b)) & np.uint64(1)
        out[live] |= bit << (lengths[live] - 1 - b).astype(np.uint64)
    return out


def _kraft_complete(lengths: np.ndarray) -> bool:
    """Whether the used lengths satisfy Kraft's equality: sum 2**-l == 1."""
    ls = lengths[lengths > 0].astype(np.int64)
    if not ls.shape[0]:
        return False
    top = int(ls.max())
    return int(np.sum(np.int64(1) << (top - ls))) == 1 << top


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables indexed by the next ``L`` stream bits (LSB-first): symbol and length.

    ``lengths`` must be Kraft-complete; then every index hits exactly one code.
    """
    syms = np.flatnonzero(lengths)
    ls = lengths[syms].astype(np.int64)
    top = int(ls.max())
    rev = _reverse(canonical_codes(lengths)[syms], ls).astype(np.int64)
    reps = np.int64(1) << (top - ls)
    owner = np.repeat(np.arange(syms.shape[0]), reps)
    k = np.arange(1 << top, dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
    idx = rev[owner] + (k << ls[owner])
    sym_table = np.empty(1 << top, dtype=np.uint16)
    len_table = np.empty(1 << top, dtype=np.uint8)
    sym_table[idx] = syms[owner]
    len_table[idx] = ls[owner]
    return sym_table, len_table, top


def _put_bits(words: np.ndarray, values: np.ndarray, lengths: np.ndarray, start_bit: int) -> int:
    """OR variable-length values LSB-first into ``words`` (uint64) from ``start_bit`` on.

    Values occupy consecutive, non-overlapping bit ranges; each is at most 64 bits.
    Returns the bit position after the last value.
    """
    if not values.shape[0]:
        return start_bit
    ln = lengths.astype(np.int64)
    ends = np.cumsum(ln) + start_bit
    pos = ends - ln
    word = pos >> 6
    shift = (pos & 63).astype(np.uint64)
    v = values.astype(np.uint64)
    lo = v << shift
    starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
    words[word[starts]] |= np.bitwise_or.reduceat(lo, starts)
    spill = np.flatnonzero((pos & 63) + ln > 64)  # at most one value crosses each word boundary
    if spill.shape[0]:
        words[word[spill] + 1] |= v[spill] >> (np.uint64(64) - shift[spill])
    return int(ends[-1])


def _get_fixed(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """``count`` values of ``width`` (1..57) bits, LSB-first, from a uint8 array (int64)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    padded = np.zeros(buf.shape[0] + 8, dtype=np.uint8)
    padded[: buf.shape[0]] = buf
    pos = np.arange(count, dtype=np.int64) * width
    win = np.ndarray((padded.shape[0] - 7,), dtype="<u8", buffer=padded, strides=(1,))
    vals = win[pos >> 3] >> (pos & 7).astype(np.uint64)
    return (vals & np.uint64((1 << width) - 1)).astype(np.int64)


def _fixed_bytes(values: np.ndarray, width: int) -> bytes:
    """Pack int values LSB-first in ``width`` bits each, ceil(count * width / 8) bytes."""
    count = int(values.shape[0])
    nbytes = (count * width + 7) // 8
    if count == 0:
        return b""
    words = np.zeros((count * width + 63) // 64 + 1, dtype="<u8")
    _put_bits(words, values, np.full(count, width, dtype=np.int64), 0)
    return words.view(np.uint8)[:nbytes].tobytes()


@dataclass
class _StreamPlan:
    """How one stream is written and how many bytes its record takes."""

    mode: int
    count: int
    width: int
    head: bytes  # mode byte, symbol or table, payload bit count (Huffman)
    size: int  # whole record in bytes
    lengths: np.ndarray | None = None  # Huffman: per alphabet symbol
    payload_bits: int = 0


def _block_width(block: int, top: int) -> int:
    """Bits per stored block length: enough for ``block`` symbols of ``top`` bits each."""
    return (block * top).bit_length()


def _huffman_head(mode: int, lengths: np.ndarray, payload_bits: int) -> bytes:
    used = np.flatnonzero(lengths)
    if mode == MODE_HUFFMAN_DENSE:
        s = int(used[-1]) + 1
        table = _fixed_bytes(lengths[:s].astype(np.int64), _LENGTH_FIELD_BITS)
        return bytes([mode]) + _U16.pack(s - 1) + table + _U64.pack(payload_bits)
    rows = np.empty(used.shape[0], dtype=_SPARSE_ROW)
    rows["symbol"] = used
    rows["length"] = lengths[used]
    return bytes([mode]) + _U16.pack(used.shape[0] - 1) + rows.tobytes() + _U64.pack(payload_bits)


def _plan_stream(stream: np.ndarray, count: int, width: int, block: int) -> _StreamPlan:
    stored = 1 + (count * width + 7) // 8
    if count == 0:
        return _StreamPlan(MODE_STORED, 0, width, bytes([MODE_STORED]), stored)
    hist = np.zeros(1 << width, dtype=np.int64)
    for start in range(0, count, _BATCH):
        n = min(_BATCH, count - start)
        vals = _bits.unpack(stream[start * width // 8 :], width, n)
        hist += np.bincount(vals, minlength=1 << width)
    used = np.flatnonzero(hist)
    if used.shape[0] == 1:
        head = bytes([MODE_CONSTANT]) + _U16.pack(int(used[0]))
        logger.debug("stream of %d symbols: one symbol, stored as a constant", count)
        return _StreamPlan(MODE_CONSTANT, count, width, head, len(head))
    lengths = code_lengths(hist, length_limit(count))
    payload_bits = int(np.dot(hist, lengths.astype(np.int64)))
    top = int(lengths.max())
    n_blocks = -(-count // block)
    tail = ((n_blocks - 1) * _block_width(block, top) + 7) // 8 + (payload_bits + 7) // 8
    best = _StreamPlan(MODE_STORED, count, width, bytes([MODE_STORED]), stored)
    for mode in (MODE_HUFFMAN_DENSE, MODE_HUFFMAN_SPARSE):
        head = _huffman_head(mode, lengths, payload_bits)
        if len(head) + tail < best.size:
            best = _StreamPlan(mode, count, width, head, len(head) + tail, lengths, payload_bits)
    logger.debug("stream of %d symbols of %d bits: mode %d, %d bytes", count, width, best.mode, best.size)
    return best


def _huffman_record(plan: _StreamPlan, stream: np.ndarray, block: int) -> bytes:
    if plan.lengths is None:
        raise RuntimeError("internal error: a Huffman record needs code lengths")
    count, width = plan.count, plan.width
    lengths = plan.lengths.astype(np.int64)
    rev = _reverse(canonical_codes(plan.lengths), lengths)
    words = np.zeros((plan.payload_bits + 63) // 64 + 1, dtype="<u8")
    block_bits: list[np.ndarray] = []
    pos = 0
    for start in range(0, count, _BATCH):  # _BATCH is a multiple of every block size
        n = min(_BATCH, count - start)
        vals = _bits.unpack(stream[start * width // 8 :], width, n)
        ln = lengths[vals]
        pos = _put_bits(words, rev[vals], ln, pos)
        block_bits.append(np.add.reduceat(ln, np.arange(0, n, block)))
    if pos != plan.payload_bits:  # pragma: no cover - the plan and the data disagree
        raise AssertionError("Huffman payload length differs from the plan")
    sizes = np.concatenate(block_bits)[:-1]
    index = _fixed_bytes(sizes, _block_width(block, int(lengths.max())))
    payload = words.view(np.uint8)[: (pos + 7) // 8].tobytes()
    return plan.head + index + payload


def _plan(blob: bytes, tensors: list[Any], block_log2: int) -> tuple[bytes, list[list[Any]]]:
    """The transport's fixed part (prefix and deflated header) and per tensor its pieces.

    Pieces are raw byte views (dense data, codebooks) and stream plans.
    """
    block = 1 << block_log2
    header = _container.raw_header(blob)
    zheader = zlib.compress(header, _DEFLATE_LEVEL)
    prefix = _PREFIX.pack(
        TRANSPORT_MAGIC,
        TRANSPORT_VERSION,
        0,  # CRC, filled in by to_transport
        hashlib.sha256(blob).digest(),
        len(blob),
        len(header),
        len(zheader),
        block_log2,
    )
    pieces: list[list[Any]] = []
    for t in tensors:
        if t.encoding == "dense":
            pieces.append([t.data.reshape(-1).view(np.uint8)])
            continue
        n = t.n_entries or 0
        pieces.append(
            [
                t.codebook.view(np.uint8),
                (_plan_stream(t.index_stream, n, t.index_bits, block), t.index_stream),
                (_plan_stream(t.code_stream, n, t.code_bits, block), t.code_stream),
            ]
        )
    return prefix + zheader, pieces


def _check_block_log2(block_log2: Any) -> int:
    if type(block_log2) is not int:
        raise TypeError(f"block_log2 must be an int, got {type(block_log2).__name__}")
    if not MIN_BLOCK_LOG2 <= block_log2 <= MAX_BLOCK_LOG2:
        raise ValueError(f"block_log2 must be in {MIN_BLOCK_LOG2}..{MAX_BLOCK_LOG2}, got {block_log2}")
    return block_log2


def _size_of(fixed: bytes, pieces: list[list[Any]]) -> int:
    total = len(fixed)
    for items in pieces:
        for item in items:
            total += item[0].size if isinstance(item, tuple) else int(item.shape[0])
    return total


def transport_size_parsed(blob: bytes, tensors: list[EncodedTensor], *, block_log2: int = DEFAULT_BLOCK_LOG2) -> int:
    """:func:`transport_size` of a file already validated by ``parse`` (its tensors given)."""
    fixed, pieces = _plan(blob, tensors, _check_block_log2(block_log2))
    return _size_of(fixed, pieces)


def transport_size(blob: bytes | bytearray | memoryview, *, block_log2: int = DEFAULT_BLOCK_LOG2) -> int:
    """The exact byte length of ``to_transport(blob)``, without building the bit streams.

    Computed from each stream's symbol histogram (code lengths, table sizes, payload bit
    counts); only the header is actually deflated.

    Raises:
        FormatError: ``blob`` is not a valid crest file.
        TypeError: ``blob`` is not bytes-like.
    """
    data = _container.as_bytes(blob)
    block_log2 = _check_block_log2(block_log2)
    return transport_size_parsed(data, _codec.parse(data), block_log2=block_log2)


def to_transport(blob: bytes | bytearray | memoryview, *, block_log2: int = DEFAULT_BLOCK_LOG2) -> bytes:
    """Write the transport form of a crest file (Huffman-coded streams, deflated header).

    Args:
        blob: a crest file; it is fully validated first.
        block_log2: log2 of the number of symbols per independently decodable block
            (5..16; default 10).

    Returns:
        The transport file; :func:`from_transport` turns it back into ``blob`` exactly.

    Raises:
        FormatError: ``blob`` is not a valid crest file.
        TypeError: ``blob`` is not bytes-like.
        ValueError: ``block_log2`` out of range.
    """
    data = _container.as_bytes(blob)
    block_log2 = _check_block_log2(block_log2)
    tensors = _codec.parse(data)
    fixed, pieces = _plan(data, tensors, block_log2)
    block = 1 << block_log2
    parts: list[bytes] = [fixed]
    for items in pieces:
        for item in items:
            if not isinstance(item, tuple):
                parts.append(item.tobytes())
                continue
            plan, stream = item
            if plan.mode == MODE_STORED:
                parts.append(plan.head + stream[: (plan.count * plan.width + 7) // 8].tobytes())
            elif plan.mode == MODE_CONSTANT:
                parts.append(plan.head)
            else:
                parts.append(_huffman_record(plan, stream, block))
    out = bytearray(b"".join(parts))
    _U32.pack_into(out, _CRC_AT, zlib.crc32(memoryview(out)[_CRC_FROM:]))
    return bytes(out)


class _Cursor:
    """Bounds-checked reading of the transport file."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> int:
        """Advance over ``n`` bytes; return where they start."""
        if n < 0 or n > len(self.data) - self.pos:
            raise FormatError(
                f"truncated transport file: {what} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        start = self.pos
        self.pos += n
        return start

    def u8(self, what: str) -> int:
        return self.data[self.take(1, what)]

    def u16(self, what: str) -> int:
        return int(_U16.unpack_from(self.data, self.take(2, what))[0])

    def u64(self, what: str) -> int:
        return int(_U64.unpack_from(self.data, self.take(8, what))[0])


@dataclass
class _Stream:
    """One parsed stream record."""

    mode: int
    count: int
    width: int
    offset: int = 0  # payload start in the transport (stored, Huffman)
    symbol: int = 0  # constant
    payload_bits: int = 0
    lengths: np.ndarray | None = None
    block_bits: np.ndarray | None = None  # Huffman: bit length of every block
    symbols: np.ndarray | None = None  # Huffman: filled by the lockstep decoder

    def get(self, data: np.ndarray, start: int, n: int) -> np.ndarray:
        """Symbols ``start .. start + n`` (``start`` a multiple of 8)."""
        if self.mode == MODE_CONSTANT:
            return np.full(n, self.symbol, dtype=np.uint16)
        if self.mode == MODE_STORED:
            lo = self.offset + start * self.width // 8
            hi = self.offset + ((start + n) * self.width + 7) // 8
            return _bits.unpack(data[lo:hi], self.width, n)
        if self.symbols is None:
            raise RuntimeError("internal error: Huffman symbols were not decoded")
        return self.symbols[start : start + n]


def _check_tail(cur: _Cursor, start: int, nbits: int, what: str) -> None:
    """The bits past ``nbits`` in the last byte of a field at ``start`` must be zero."""
    if nbits % 8 and cur.data[start + nbits // 8] >> (nbits % 8):
        raise FormatError(f"{what}: non-zero padding bits")


def _read_stream(cur: _Cursor, count: int, width: int, block: int, where: str) -> _Stream:
    mode = cur.u8(f"{where}: mode")
    if count == 0 and mode != MODE_STORED:
        raise FormatError(f"{where}: an empty stream must be stored (mode 0), got mode {mode}")
    if mode == MODE_STORED:
        offset = cur.take((count * width + 7) // 8, f"{where}: stored payload")
        _check_tail(cur, offset, count * width, f"{where}: stored payload")
        return _Stream(mode, count, width, offset=offset)
    if mode == MODE_CONSTANT:
        symbol = cur.u16(f"{where}: symbol")
        if symbol >> width:
            raise FormatError(f"{where}: constant symbol {symbol} does not fit in {width} bits")
        return _Stream(mode, count, width, symbol=symbol)
    if mode not in (MODE_HUFFMAN_DENSE, MODE_HUFFMAN_SPARSE):
        raise FormatError(f"{where}: unknown stream mode {mode}")
    size = cur.u16(f"{where}: table size") + 1
    if size > 1 << width:
        raise FormatError(f"{where}: code table has {size} symbols, more than 2**{width}")
    lengths = np.zeros(1 << width, dtype=np.uint8)
    if mode == MODE_HUFFMAN_DENSE:
        raw = cur.take((size * _LENGTH_FIELD_BITS + 7) // 8, f"{where}: code table")
        table = np.frombuffer(cur.data, np.uint8, (size * _LENGTH_FIELD_BITS + 7) // 8, raw)
        _check_tail(cur, raw, size * _LENGTH_FIELD_BITS, f"{where}: code table")
        lengths[:size] = _get_fixed(table, size, _LENGTH_FIELD_BITS)
        if lengths[size - 1] == 0:
            raise FormatError(f"{where}: the code table's last symbol is unused")
    else:
        raw = cur.take(size * _SPARSE_ROW.itemsize, f"{where}: code table")
        rows = np.frombuffer(cur.data, _SPARSE_ROW, size, raw)
        syms = rows["symbol"].astype(np.int64)
        if size > 1 and not bool(np.all(np.diff(syms) > 0)):
            raise FormatError(f"{where}: code table symbols are not strictly increasing")
        if int(syms[-1]) >> width:
            raise FormatError(f"{where}: code table symbol {int(syms[-1])} does not fit in {width} bits")
        if not bool(np.all(rows["length"] > 0)):
            raise FormatError(f"{where}: code table lists a symbol with length 0")
        lengths[syms] = rows["length"]
    limit = length_limit(count)
    if int(lengths.max()) > limit:
        raise FormatError(
            f"{where}: code length {int(lengths.max())} exceeds the limit {limit} for {count} symbols"
        )
    if int(np.count_nonzero(lengths)) < 2 or not _kraft_complete(lengths):
        raise FormatError(f"{where}: the code lengths do not form a complete prefix code")
    payload_bits = cur.u64(f"{where}: payload bit count")
    top = int(lengths.max())
    if not count <= payload_bits <= count * top:
        raise FormatError(
            f"{where}: payload of {payload_bits} bits cannot hold {count} symbols of 1..{top} bits"
        )
    n_blocks = -(-count // block)
    bw = _block_width(block, top)
    raw = cur.take(((n_blocks - 1) * bw + 7) // 8, f"{where}: block index")
    index = np.frombuffer(cur.data, np.uint8, ((n_blocks - 1) * bw + 7) // 8, raw)
    _check_tail(cur, raw, (n_blocks - 1) * bw, f"{where}: block index")
    block_bits = np.empty(n_blocks, dtype=np.int64)
    block_bits[:-1] = _get_fixed(index, n_blocks - 1, bw)
    block_bits[-1] = payload_bits - int(block_bits[:-1].sum())
    if block_bits[-1] < 0:
        raise FormatError(f"{where}: block lengths add up to more than the payload")
    offset = cur.take((payload_bits + 7) // 8, f"{where}: Huffman payload")
    _check_tail(cur, offset, payload_bits, f"{where}: Huffman payload")
    return _Stream(
        mode, count, width, offset=offset, payload_bits=payload_bits, lengths=lengths, block_bits=block_bits
    )


def _decode_huffman(data: bytes, streams: list[_Stream], block: int) -> None:
    """Decode every Huffman stream, all blocks of all streams in lockstep; fill ``symbols``."""
    if not streams:
        return
    tables = [_decode_table(s.lengths) for s in streams]  # type: ignore[arg-type]
    sym_table = np.concatenate([t[0] for t in tables])
    len_table = np.concatenate([t[1] for t in tables])
    table_base = np.cumsum([0] + [t[0].shape[0] for t in tables])[:-1]
    starts, ends, bases, masks, counts, outs = [], [], [], [], [], []
    out_pos = 0
    for s, (_, _, top), tb in zip(streams, tables, table_base):
        bb = s.block_bits
        if bb is None:
            raise RuntimeError("internal error: a Huffman stream has no block index")
        n_blocks = bb.shape[0]
        first = s.offset * 8 + np.concatenate(([0], np.cumsum(bb)[:-1]))
        starts.append(first)
        ends.append(first + bb)
        bases.append(np.full(n_blocks, tb, dtype=np.int64))
        masks.append(np.full(n_blocks, (1 << top) - 1, dtype=np.int64))
        cnt = np.full(n_blocks, block, dtype=np.int64)
        cnt[-1] = s.count - (n_blocks - 1) * block
        counts.append(cnt)
        outs.append(out_pos + np.arange(n_blocks, dtype=np.int64) * block)
        out_pos += s.count
    count = np.concatenate(counts)
    order = np.argsort(-count, kind="stable")  # lanes still running form a prefix
    count = count[order]
    pos = np.concatenate(starts)[order]
    end = np.concatenate(ends)[order]
    base = np.concatenate(bases)[order]
    mask = np.concatenate(masks)[order]
    out_idx = np.concatenate(outs)[order]
    out = np.empty(out_pos, dtype=np.uint16)
    # a lane reads at most block * 20 bits past its start, which lies within the file
    buf = np.zeros(len(data) + (block * MAX_CODE_LENGTH) // 8 + 16, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    win = np.ndarray((buf.shape[0] - 3,), dtype="<u4", buffer=buf, strides=(1,))
    steps = int(count[0])
    active = np.searchsorted(-count, -np.arange(steps), side="left")
    for t in range(steps):
        a = int(active[t])
        p = pos[:a]
        idx = ((win[p >> 3] >> (p & 7)) & mask[:a]) + base[:a]
        out[out_idx[:a] + t] = sym_table[idx]
        p += len_table[idx]
    bad = np.flatnonzero(pos != end)
    if bad.shape[0]:
        raise FormatError(
            "Huffman payload corrupt: a block's codes do not end where the block index says it does"
        )
    cursor = 0
    for s in streams:
        s.symbols = out[cursor : cursor + s.count]
        cursor += s.count


def _layout(header: dict[str, Any], head_end: int) -> tuple[list[tuple[dict[str, Any], dict[str, int]]], int]:
    """Check every tensor entry and section placement; return fields, offsets, file length."""
    checked = check_entries(header["tensors"])
    pos = 0
    out = []
    for fields, expected in checked:
        secs = fields["sections"]
        where = fields["where"]
        if not isinstance(secs, dict) or set(secs) != {name for name, _ in expected}:
            raise FormatError(f"{where}: sections wrong")
        offsets: dict[str, int] = {}
        for name, length in expected:
            entry = secs[name]
            if not isinstance(entry, dict) or set(entry) != _container.SECTION_KEYS:
                raise FormatError(f"{where}, section {name!r}: must have offset, length, crc32")
            off, ln = entry["offset"], entry["length"]
            if type(off) is not int or type(ln) is not int or ln != length:
                raise FormatError(f"{where}, section {name!r}: bad offset or length")
            if off < pos or off % _container.ALIGN:
                raise FormatError(f"{where}, section {name!r}: offset {off} misplaced")
            offsets[name] = off
            pos = off + length
        out.append((fields, offsets))
    return out, _container.align(head_end) + _container.align(pos)


def transport_output_cap(transport_bytes: int) -> int:
    """The default ``max_output_bytes`` of :func:`from_transport` for a transport file of
    ``transport_bytes`` bytes: ``min(8 GiB, max(16 MiB, 64 x transport_bytes))`` bytes."""
    return min(DEFAULT_MAX_OUTPUT_BYTES, max(TRANSPORT_ALLOWANCE, TRANSPORT_EXPANSION * transport_bytes))


def from_transport(data: bytes | bytearray | memoryview, *, max_output_bytes: int | None = None) -> bytes:
    """Rebuild the exact crest file from its transport form.

    Args:
        data: a transport file from :func:`to_transport`.
        max_output_bytes: refuse transport files whose crest file would be longer than
            this many bytes, checked from the fixed prefix before anything is inflated or
            allocated. None (the default): what the input justifies,
            :func:`transport_output_cap` (64 bytes per transport byte, at least 16 MiB, at
            most 8 GiB); only constant streams expand further, and a caller expecting
            such a file passes its size.

    Returns:
        The original crest file, byte for byte (its SHA-256 is checked against the one
        stored in the transport file, and it is fully validated as by ``parse``).

    Raises:
        FormatError: the input is not a valid transport file (wrong magic or version,
            CRC mismatch, truncated, a lying length or code table, a corrupt payload),
            or the rebuilt file would exceed ``max_output_bytes``.
        TypeError: ``data`` is not bytes-like, or ``max_output_bytes`` not an int.
        ValueError: ``max_output_bytes`` is negative.
    """
    data = _container.as_bytes(data)
    if max_output_bytes is None:
        cap = transport_output_cap(len(data))
    elif type(max_output_bytes) is not int:
        raise TypeError(f"max_output_bytes must be an int, got {type(max_output_bytes).__name__}")
    elif max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes}")
    else:
        cap = max_output_bytes
    size = len(data)
    if size < PREFIX_BYTES:
        if data[: len(TRANSPORT_MAGIC)] != TRANSPORT_MAGIC[:size]:
            raise FormatError("not a crest transport file: wrong magic bytes")
        raise FormatError(f"truncated transport file: {size} bytes, the fixed prefix is {PREFIX_BYTES}")
    magic, version, crc, digest, file_len, header_len, zlen, block_log2 = _PREFIX.unpack_from(data, 0)
    if magic != TRANSPORT_MAGIC:
        raise FormatError("not a crest transport file: wrong magic bytes")
    if version != TRANSPORT_VERSION:
        raise FormatError(f"unsupported transport version {version}; this reader supports {TRANSPORT_VERSION}")
    if zlib.crc32(memoryview(data)[_CRC_FROM:]) != crc:
        raise FormatError("transport file CRC-32 mismatch: the file is corrupt")
    if not MIN_BLOCK_LOG2 <= block_log2 <= MAX_BLOCK_LOG2:
        raise FormatError(f"block size 2**{block_log2} out of range")
    if header_len > _container.MAX_HEADER_BYTES:
        raise FormatError(f"header length {header_len} exceeds {_container.MAX_HEADER_BYTES}")
    if _container.PREFIX_BYTES + header_len > file_len:
        raise FormatError(f"a {header_len}-byte header does not fit the stated {file_len}-byte file")
    if file_len > cap:
        logger.warning("refused a %d-byte transport file that would rebuild to %d bytes", size, file_len)
        hint = (
            f"max_output_bytes={max_output_bytes}" if max_output_bytes is not None
            else f"{cap} bytes, what a {size}-byte transport file justifies; pass max_output_bytes to allow more"
        )
        raise FormatError(f"the crest file would be {file_len} bytes, above {hint}")
    cur = _Cursor(data, PREFIX_BYTES)
    zstart = cur.take(zlen, "deflated header")
    try:
        inflater = zlib.decompressobj()
        header = inflater.decompress(data[zstart : zstart + zlen], header_len + 1)
        complete = inflater.eof and not inflater.unused_data and not inflater.unconsumed_tail
    except zlib.error as exc:
        raise FormatError(f"deflated header is corrupt: {exc}") from exc
    if len(header) != header_len or not complete:
        raise FormatError("deflated header does not inflate to exactly the stated length")
    head_end = _container.PREFIX_BYTES + header_len
    head = _container.head(header)
    parsed, _ = _container.read(head)
    layout, want_len = _layout(parsed, head_end)
    if want_len != file_len:
        raise FormatError(f"the header implies a {want_len}-byte file, the transport says {file_len}")

    block = 1 << block_log2
    records: list[tuple[dict[str, Any], dict[str, int], list[Any]]] = []
    huffman: list[_Stream] = []
    for fields, offsets in layout:
        itemsize = fields["dtype"].itemsize
        where = fields["where"]
        if fields["encoding"] == "dense":
            start = cur.take(fields["numel"] * itemsize, f"{where}: dense data")
            records.append((fields, offsets, [start]))
            continue
        start = cur.take(fields["n_codes"] * itemsize, f"{where}: codebook")
        n = fields["n_entries"]
        ix = _read_stream(cur, n, fields["index_bits"], block, f"{where}, index stream")
        cx = _read_stream(cur, n, fields["code_bits"], block, f"{where}, code stream")
        huffman.extend(s for s in (ix, cx) if s.mode in (MODE_HUFFMAN_DENSE, MODE_HUFFMAN_SPARSE))
        records.append((fields, offsets, [start, ix, cx]))
    if cur.pos != size:
        raise FormatError(f"{size - cur.pos} trailing bytes after the last tensor")
    _decode_huffman(data, huffman, block)

    src = np.frombuffer(data, np.uint8)
    out = np.zeros(file_len, dtype=np.uint8)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    d0 = len(head)
    for fields, offsets, items in records:
        itemsize = fields["dtype"].itemsize
        if fields["encoding"] == "dense":
            n_bytes = fields["numel"] * itemsize
            out[d0 + offsets["data"] : d0 + offsets["data"] + n_bytes] = src[items[0] : items[0] + n_bytes]
            continue
        n_bytes = fields["n_codes"] * itemsize
        out[d0 + offsets["codebook"] : d0 + offsets["codebook"] + n_bytes] = src[items[0] : items[0] + n_bytes]
        _rebuild_sparse(src, out, d0, fields, offsets, items[1], items[2])
    if hashlib.sha256(out.data).digest() != digest:  # before copying it into bytes
        raise FormatError("the rebuilt crest file's SHA-256 differs from the one stored in the transport file")
    blob = out.tobytes()
    del out
    _codec.parse(blob)
    return blob


def _rebuild_sparse(
    src: np.ndarray, out: np.ndarray, d0: int, fields: dict[str, Any], offsets: dict[str, int], ix: _Stream, cx: _Stream
) -> None:
    """Write a sparse tensor's index, code and chunk sections (batch by batch)."""
    n, ib, cb, chunk = fields["n_entries"], fields["index_bits"], fields["code_bits"], fields["chunk_entries"]
    index_at, code_at = d0 + offsets["index"], d0 + offsets["code"]
    chunks_at = d0 + offsets["chunks"]
    carry = 0
    for start in range(0, n, _BATCH):  # _BATCH is a multiple of 8 and of every chunk size
        count = min(_BATCH, n - start)
        gaps = ix.get(src, start, count)
        packed = _bits.pack(gaps, ib)
        lo = index_at + start * ib // 8
        m = (count * ib + 7) // 8
        out[lo : lo + m] = packed[:m]
        packed = _bits.pack(cx.get(src, start, count), cb)
        lo = code_at + start * cb // 8
        m = (count * cb + 7) // 8
        out[lo : lo + m] = packed[:m]
        ends = np.cumsum(gaps.astype(np.int64) + 1)
        n_ch = -(-count // chunk)
        rows = np.empty((n_ch, CHUNK_TABLE_COLUMNS), dtype="<u8")
        rows[0, 0] = carry
        rows[1:, 0] = carry + ends[chunk - 1 : (n_ch - 1) * chunk : chunk]
        first = np.arange(start // chunk, start // chunk + n_ch, dtype=np.uint64) * np.uint64(chunk)
        rows[:, 1] = first * np.uint64(ib)
        rows[:, 2] = first * np.uint64(cb)
        lo = chunks_at + start // chunk * CHUNK_ROW_BYTES
        out[lo : lo + n_ch * CHUNK_ROW_BYTES] = rows.reshape(-1).view(np.uint8)
        carry += int(ends[-1])
