"""The crest compressed format: encoder, NumPy reference decoder, validated views.

A crest file holds named tensors, each stored ``dense`` (raw little-endian bytes) or
``sparse`` (Deep Compression's relative-index entries: bit-packed gaps and codes into a
per-tensor codebook, with a chunk table for parallel decoding), behind a magic number, a
CRC-checked JSON header and CRC-checked 64-byte-aligned sections. Encoding is bit-exact
(it works on raw bit patterns); :func:`decode` is the definition of correct; any malformed
input makes :func:`decode`, :func:`inspect` and :func:`parse` raise :class:`FormatError`.
The byte layout is specified in ``docs/format.md``.

This package imports with NumPy and the standard library only (no Ray, database, torch
or CuPy), so a deployment target can load artifacts. The GPU side loads lazily:
``decode(blob, device="cuda")`` (CuPy arrays), ``device="torch:cuda"`` (torch tensors via
DLPack) and ``device="auto"`` run the CUDA kernels of ``kernels.cu``;
:func:`sparse_matmul` computes ``y = W x`` straight from the compressed form; the torch
modules :class:`CompressedLinear` and :class:`CompressedConv2d` and :func:`load_model`
are imported on first use (they need torch).

For transport (Deep Compression's Huffman stage), :func:`to_transport` re-codes the gap
and code streams with canonical Huffman codes and deflates the header;
:func:`from_transport` rebuilds the exact file (same SHA-256); :func:`transport_size`
(also ``inspect(blob)["transport_bytes"]``) is its length.

Example:
    >>> import numpy as np
    >>> from crest.gpu import encode, decode
    >>> blob = encode({"w": np.array([0.0, 1.5, 0.0, 1.5], dtype=np.float32)})
    >>> decode(blob)["w"].tolist()
    [0.0, 1.5, 0.0, 1.5]
"""

from __future__ import annotations

from typing import Any

from crest.exceptions import FormatError, GpuUnavailableError
from crest.gpu._api import DEVICES, decode, gpu_unavailable_reason, sparse_matmul, to_device
from crest.gpu._codec import (
    DTYPES,
    FORMAT_VERSION,
    EncodedTensor,
    encode,
    inspect,
    parse,
    sha256,
)
from crest.gpu._container import MAGIC
from crest.gpu._cuda import DeviceTensor
from crest.gpu._huffman import (
    TRANSPORT_MAGIC,
    from_transport,
    to_transport,
    transport_size,
)

__all__ = [
    "DEVICES",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "TRANSPORT_MAGIC",
    "CompressedConv2d",
    "CompressedLinear",
    "DeviceTensor",
    "EncodedTensor",
    "FormatError",
    "GpuUnavailableError",
    "decode",
    "encode",
    "from_transport",
    "gpu_unavailable_reason",
    "inspect",
    "load_model",
    "parse",
    "sha256",
    "sparse_matmul",
    "to_device",
    "to_transport",
    "transport_size",
]

_TORCH_NAMES = frozenset({"CompressedLinear", "CompressedConv2d", "load_model"})


def __getattr__(name: str) -> Any:
    """Load the torch-based names on first use, so that this package never needs torch."""
    if name in _TORCH_NAMES:
        from crest.gpu import _torch

        return getattr(_torch, name)
    raise AttributeError(f"module 'crest.gpu' has no attribute {name!r}")
