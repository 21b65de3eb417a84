"""A fast reader for the built-in data's CSV files: rows of non-negative integers.

``np.loadtxt`` parses MNIST's 5,000 x 785 values in about 0.57 s (a 2-core AMD EPYC),
which every process that trains on it pays: the driver before the baseline's training,
and every worker at its start. These files hold only digits, commas and newlines, so
:func:`parse_uint_csv` parses them with whole-array NumPy operations instead (0.13 s
in a fresh process there, ``bench/csv_parse.py``) and gives the same float32 array;
anything else (a sign, a decimal point, a blank line, ragged rows) falls back to
``np.loadtxt``.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from crest.exceptions import WorkloadError

__all__ = ["MAX_TEXT_BYTES", "parse_uint_csv", "read_csv"]

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 256 * 2**20  # a built-in file's text (MNIST's: 9.1 MB); more is refused, not allocated
_MAX_DIGITS = 7  # every integer of up to 7 digits is exact in float32 (below 2**24)
_COMMA, _NEWLINE, _ZERO, _NINE = ord(","), ord("\n"), ord("0"), ord("9")


def read_csv(path: Path) -> np.ndarray:
    """The numbers of a comma-separated file (gzip-compressed when its name ends in
    ``.gz``) as a float32 array [rows, columns], on the CPU.

    Raises:
        WorkloadError: the file cannot be read, its text exceeds :data:`MAX_TEXT_BYTES`,
            or it is not a table of numbers.
    """
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:  # a compressed file is smaller than its text
            raise WorkloadError(f"{path} holds more than {MAX_TEXT_BYTES} bytes")
        data = path.read_bytes()
        text = _gunzip(data) if path.name.endswith(".gz") else data
    except (OSError, EOFError, zlib.error) as e:  # (gzip's BadGzipFile is an OSError)
        raise WorkloadError(f"cannot read {path}: {e}") from e
    if len(text) > MAX_TEXT_BYTES:
        raise WorkloadError(f"{path} holds more than {MAX_TEXT_BYTES} bytes of text")
    fast = parse_uint_csv(text)
    if fast is not None:
        return fast
    logger.debug("%s is not a plain table of non-negative integers: parsed with np.loadtxt", path)
    try:
        return np.loadtxt(text.decode("utf-8").splitlines(), delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise WorkloadError(f"{path} is not a comma-separated table of numbers: {e}") from e


def _gunzip(data: bytes) -> bytes:
    """``data`` decompressed (every gzip member), stopping at :data:`MAX_TEXT_BYTES` + 1
    bytes so that a small hostile file cannot make a large allocation."""
    parts: list[bytes] = []
    budget = MAX_TEXT_BYTES + 1
    while data and budget > 0:
        member = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer
        parts.append(member.decompress(data, budget))
        budget -= len(parts[-1])
        if not member.eof:
            if member.unconsumed_tail and budget <= 0:
                break  # over the limit: the caller refuses it
            raise EOFError("the gzip stream ends early")
        data = member.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_uint_csv(text: bytes) -> np.ndarray | None:
    """``text`` (rows of comma-separated integers of 1 to 7 digits, each row ending in a
    newline but for the last, ``\\r\\n`` allowed) as a float32 array [rows, columns],
    equal to ``np.loadtxt(..., delimiter=",", dtype=np.float32)``; None when ``text``
    holds anything else (the caller falls back to ``np.loadtxt``) or nothing."""
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    b = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero((b < _ZERO) | (b > _NINE))  # the byte after each number: ',' or '\n'
    seps = b[ends]
    newline = seps == _NEWLINE
    if len(ends) == 0 or not np.all(newline | (seps == _COMMA)):
        return None
    lengths = np.diff(ends, prepend=-1)
    lengths -= 1
    if lengths.min() < 1 or lengths.max() > _MAX_DIGITS:  # an empty field or blank line; a long number
        return None
    row_ends = np.flatnonzero(newline)
    columns = int(row_ends[0]) + 1
    if len(ends) % columns or np.any(np.diff(row_ends) != columns):  # ragged rows
        return None
    values = b[ends - 1].astype(np.int32) - _ZERO  # every number's last digit
    longer = np.flatnonzero(lengths > 1)  # (most of MNIST's pixels are one digit: 0)
    for k in range(1, int(lengths.max())):  # the k-th digit from the right, where there is one
        longer = longer[lengths[longer] > k]
        values[longer] += (b[ends[longer] - 1 - k].astype(np.int32) - _ZERO) * 10**k
    return values.astype(np.float32).reshape(-1, columns)
