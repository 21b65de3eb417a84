"""The crest compressed format: encoder, NumPy reference decoder, validated views.

A crest file holds named tensors, each stored ``dense`` (raw little-endian bytes) or
``sparse`` (Deep Compression's relative-index entries: bit-packed gaps and codes into a
per-tensor codebook, with a chunk table for parallel decoding), behind a magic number, a
CRC-checked JSON header and CRC-checked 64-byte-aligned sections. Encoding is bit-exact
(it works on raw bit patterns); :func:`decode` is the definition of correct; any malformed
input makes :func:`decode`, :func:`inspect` and :func:`parse` raise :class:`FormatError`.
The byte layout is specified in ``docs/format.md``.

This package imports with NumPy and the standard library only (no Ray, database, torch
or CuPy), so a deployment target can load artifacts.

Example:
    >>> import numpy as np
    >>> from crest.gpu import encode, decode
    >>> blob = encode({"w": np.array([0.0, 1.5, 0.0, 1.5], dtype=np.float32)})
    >>> decode(blob)["w"].tolist()
    [0.0, 1.5, 0.0, 1.5]
"""

from __future__ import annotations

from crest.exceptions import FormatError
from crest.gpu._codec import (
    DTYPES,
    FORMAT_VERSION,
    EncodedTensor,
    decode,
    encode,
    inspect,
    parse,
    sha256,
)
from crest.gpu._container import MAGIC

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "EncodedTensor",
    "FormatError",
    "decode",
    "encode",
    "inspect",
    "parse",
    "sha256",
]
