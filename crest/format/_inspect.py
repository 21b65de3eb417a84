"""A crest file's full report: its validated header with sizes, the transport size included.

It sits above both the codec and the transport form (it reports what
:func:`crest.format.to_transport` would write), so neither of those needs the other's
reader. For the header alone, :func:`crest.format.read_header` is far cheaper.
"""

from __future__ import annotations

import logging
from typing import Any

from crest.format import _codec, _container, _huffman

__all__ = ["inspect"]

logger = logging.getLogger(__name__)


def inspect(blob: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Validate a crest file fully and return its header as a JSON-able dict.

    Args:
        blob: the file bytes.

    Returns:
        The header (``format``, ``version``, ``metadata``, ``tensors``) plus ``sha256``
        (the artifact id), ``file_bytes``, ``dense_bytes`` and ``stored_bytes`` (sums)
        and ``transport_bytes`` (the exact length of ``to_transport(blob)``, the
        Huffman-coded transport form, computed from symbol histograms); each tensor
        entry gets ``n_chunks``, ``dense_bytes`` (decoded size) and ``stored_bytes``
        (sum of its section lengths).

    Raises:
        FormatError: the file is malformed, truncated or fails a checksum.
        TypeError: ``blob`` is not bytes-like.
    """
    data = _container.as_bytes(blob)
    header, tensors = _codec.parse_with_header(data)
    for entry, t in zip(header["tensors"], tensors):
        entry["n_chunks"] = t.n_chunks
        entry["dense_bytes"] = t.nbytes
        entry["stored_bytes"] = sum(s["length"] for s in entry["sections"].values())
    header["sha256"] = _codec.sha256(data)
    header["file_bytes"] = len(data)
    header["dense_bytes"] = sum(t.nbytes for t in tensors)
    header["stored_bytes"] = sum(e["stored_bytes"] for e in header["tensors"])
    header["transport_bytes"] = _huffman.transport_size_parsed(data, tensors)
    return header
