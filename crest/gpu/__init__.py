"""crest on the GPU: the CUDA decoder, the fused product and torch modules, plus the format.

The artifact format itself (encoder, NumPy reference decoder, validated views, the cheap
header read, the Huffman transport form) lives in :mod:`crest.format`; this package
re-exports all of it, so ``crest.gpu.encode``, ``crest.gpu.inspect``,
``crest.gpu.read_header`` and the rest keep working, and adds the device side:
``decode(blob, device="cuda")`` (CuPy arrays), ``device="torch:cuda"`` (torch tensors via
DLPack) and ``device="auto"`` run the CUDA kernels of ``kernels.cu``; :func:`decode` with
``device="cpu"`` is :func:`crest.format.decode`. :func:`sparse_matmul` computes ``y = W x``
straight from the compressed form; the torch modules :class:`CompressedLinear` and
:class:`CompressedConv2d` and :func:`load_model` are imported on first use (they need
torch).

This package imports with NumPy and the standard library only (no Ray, database, torch
or CuPy): CuPy is probed once, lazily (:func:`probe_cupy`), and a CUDA device asked for
without it raises :class:`GpuUnavailableError` saying why.

Example:
    >>> import numpy as np
    >>> from crest.gpu import encode, decode
    >>> blob = encode({"w": np.array([0.0, 1.5, 0.0, 1.5], dtype=np.float32)})
    >>> decode(blob)["w"].tolist()
    [0.0, 1.5, 0.0, 1.5]
"""

from __future__ import annotations

import logging
from typing import Any

from crest.exceptions import FormatError, GpuUnavailableError
from crest.format import (
    CHUNK_TABLE_COLUMNS,
    DEFAULT_CHUNK_ENTRIES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DTYPES,
    FORMAT_VERSION,
    MAGIC,
    TRANSPORT_MAGIC,
    EncodedTensor,
    Header,
    TensorInfo,
    check_tensor,
    decode_tensor,
    encode,
    from_transport,
    inspect,
    parse,
    read_header,
    sha256,
    to_transport,
    transport_size,
)
from crest.gpu._api import DEVICES, decode, gpu_unavailable_reason, sparse_matmul, to_device
from crest.gpu._cuda import DeviceTensor
from crest.gpu._probe import CupyProbe, probe_cupy

__all__ = [
    "CHUNK_TABLE_COLUMNS",
    "DEFAULT_CHUNK_ENTRIES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEVICES",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "TRANSPORT_MAGIC",
    "CompressedConv2d",
    "CompressedLinear",
    "CupyProbe",
    "DeviceTensor",
    "EncodedTensor",
    "FormatError",
    "GpuUnavailableError",
    "Header",
    "TensorInfo",
    "check_tensor",
    "decode",
    "decode_tensor",
    "encode",
    "from_transport",
    "gpu_unavailable_reason",
    "inspect",
    "load_model",
    "parse",
    "probe_cupy",
    "read_header",
    "sha256",
    "sparse_matmul",
    "to_device",
    "to_transport",
    "transport_size",
]

logger = logging.getLogger(__name__)

_TORCH_NAMES = frozenset({"CompressedLinear", "CompressedConv2d", "load_model"})


def __getattr__(name: str) -> Any:
    """Load the torch-based names on first use, so that this package never needs torch."""
    if name in _TORCH_NAMES:
        from crest.gpu import _torch

        return getattr(_torch, name)
    raise AttributeError(f"module 'crest.gpu' has no attribute {name!r}")
