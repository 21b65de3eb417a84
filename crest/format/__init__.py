"""The crest artifact format: encoder, NumPy reference decoder, validated views, transport form.

A crest file holds named tensors, each stored ``dense`` (raw little-endian bytes) or
``sparse`` (Deep Compression's relative-index entries: bit-packed gaps and codes into a
per-tensor codebook, with a chunk table for parallel decoding), behind a magic number, a
CRC-checked JSON header and CRC-checked 64-byte-aligned sections; ``docs/format.md``
specifies the bytes. Encoding is bit-exact; :func:`decode` is the definition of correct;
any malformed input makes the readers raise :class:`FormatError`.

- :func:`encode`, :func:`decode`, :func:`parse` (validated, undecoded
  :class:`EncodedTensor` views), :func:`decode_tensor`, :func:`sha256` (the artifact id);
- :func:`check_tensor`: parse's checks of one sparse tensor built from other arrays;
- :func:`read_header`: the header alone (a :class:`Header`), without reading a section;
- :func:`inspect`: the full validation and a size report;
- :func:`to_transport` / :func:`from_transport` / :func:`transport_size`: the
  Huffman-coded transport form, rebuilt to the exact file.

Only NumPy and the standard library are used: no torch, CuPy, Ray or database.
:mod:`crest.gpu` re-exports all of this and adds the CUDA decoder.

Example:
    >>> import numpy as np
    >>> from crest.format import encode, decode, read_header
    >>> blob = encode({"w": np.array([0.0, 1.5, 0.0, 1.5], dtype=np.float32)})
    >>> decode(blob)["w"].tolist()
    [0.0, 1.5, 0.0, 1.5]
    >>> read_header(blob).tensors[0].encoding
    'sparse'
"""

from __future__ import annotations

import logging

from crest.exceptions import FormatError
from crest.format._codec import (
    FORMAT_VERSION,
    EncodedTensor,
    check_tensor,
    decode,
    decode_tensor,
    encode,
    parse,
    sha256,
)
from crest.format._container import MAGIC
from crest.format._header import (
    CHUNK_TABLE_COLUMNS,
    DEFAULT_CHUNK_ENTRIES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DTYPES,
    Header,
    TensorInfo,
    read_header,
)
from crest.format._huffman import TRANSPORT_MAGIC, from_transport, to_transport, transport_size
from crest.format._inspect import inspect

__all__ = [
    "CHUNK_TABLE_COLUMNS",
    "DEFAULT_CHUNK_ENTRIES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "TRANSPORT_MAGIC",
    "EncodedTensor",
    "FormatError",
    "Header",
    "TensorInfo",
    "check_tensor",
    "decode",
    "decode_tensor",
    "encode",
    "from_transport",
    "inspect",
    "parse",
    "read_header",
    "sha256",
    "to_transport",
    "transport_size",
]

logger = logging.getLogger(__name__)
