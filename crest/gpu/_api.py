"""Device-aware entry points: :func:`decode` on CPU or GPU, :func:`sparse_matmul`, :func:`to_device`.

CuPy and torch are imported lazily, only when a CUDA device or a torch tensor is asked for.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np

from crest import format as fmt
from crest.exceptions import FormatError, GpuUnavailableError
from crest.format import DEFAULT_MAX_OUTPUT_BYTES, EncodedTensor
from crest.gpu import _cuda, _xp
from crest.gpu._cuda import DeviceTensor
from crest.gpu._probe import probe_cupy

__all__ = ["DEVICES", "decode", "sparse_matmul", "to_device", "gpu_unavailable_reason"]

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "numpy", "cuda", "torch:cuda", "auto")
_FLOATS = frozenset({"float16", "float32", "float64"})


def gpu_unavailable_reason() -> str | None:
    """Why ``device="cuda"`` cannot run here (no CuPy, no device), or None when it can."""
    return probe_cupy().reason


def _split_device(device: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; validates the name."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    kind, index = device, None
    for prefix in ("torch:cuda:", "cuda:"):
        if device.startswith(prefix):
            tail = device[len(prefix) :]
            if not tail.isdigit():
                raise ValueError(f"device {device!r}: the index after {prefix!r} must be a number")
            kind, index = prefix[:-1], int(tail)
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N, torch:cuda:N), got {device!r}")
    return kind, index


def _out_dtype(dtype: Any) -> np.dtype[Any] | None:
    if dtype is None:
        return None
    try:
        dt = np.dtype(str(dtype).removeprefix("torch."))
    except TypeError as exc:
        raise ValueError(f"dtype must be float16, float32 or float64, got {dtype!r}") from exc
    if dt.name not in _FLOATS:
        raise ValueError(f"dtype must be float16, float32 or float64, got {dtype!r}")
    return dt


def _torch(require_cuda: bool) -> Any:
    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise GpuUnavailableError(f"torch is not installed: {exc}") from exc
    if require_cuda and not torch.cuda.is_available():
        raise GpuUnavailableError("torch sees no CUDA device (a CPU-only torch build, or no driver)")
    return torch


def decode(
    blob: bytes | bytearray | memoryview,
    *,
    device: str = "cpu",
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    dtype: Any = None,
) -> dict[str, Any]:
    """Decode a crest file on the CPU (NumPy reference) or a CUDA GPU (CuPy kernels).

    Args:
        blob: the file bytes.
        device: ``"cpu"``/``"numpy"`` (NumPy arrays, the reference decoder), ``"cuda"`` or
            ``"cuda:N"`` (CuPy arrays on that device), ``"torch:cuda"``/``"torch:cuda:N"``
            (torch CUDA tensors, handed over through DLPack without a host round trip), or
            ``"auto"`` (``"cuda"`` when CuPy sees a device, else ``"cpu"``).
        max_output_bytes: refuse files whose declared tensors take more bytes than this
            (default 8 GiB), checked before anything is allocated.
        dtype: None (keep the stored dtypes) or ``"float16"``/``"float32"``/``"float64"``:
            floating tensors are converted (exactly as NumPy's ``astype``; on the GPU a
            sparse tensor decodes straight into the new dtype); other dtypes are kept.

    Returns:
        name -> array (shape and dtype as stored, or ``dtype``), in file order. The GPU
        result is bit-exact to the NumPy one.

    Raises:
        FormatError: the file is malformed (checked fully by :func:`crest.gpu.parse`
            on the host before anything goes to the GPU) or declares too much output.
        GpuUnavailableError: a CUDA device was asked for and CuPy (or torch for
            ``torch:cuda``) is missing or sees no device; the message says which.
        TypeError, ValueError: bad argument types or values.
    """
    kind, index = _split_device(device)
    out_dtype = _out_dtype(dtype)
    if kind == "auto":
        reason = gpu_unavailable_reason()
        kind = "cuda" if reason is None else "cpu"
        if reason is not None:
            logger.debug("device='auto' decodes with NumPy: %s", reason)
    if kind in ("cpu", "numpy"):
        arrays = fmt.decode(blob, max_output_bytes=max_output_bytes)
        if out_dtype is not None:
            arrays = {k: _convert_np(v, out_dtype) for k, v in arrays.items()}
        return arrays
    torch = _torch(require_cuda=True) if kind == "torch:cuda" else None
    cp = _cuda.cupy_module()
    if type(max_output_bytes) is not int:
        raise TypeError(f"max_output_bytes must be an int, got {type(max_output_bytes).__name__}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes}")
    tensors = fmt.parse(blob)
    total = sum(t.nbytes for t in tensors)
    if total > max_output_bytes:
        raise FormatError(
            f"the file declares {total} bytes of tensors, above max_output_bytes={max_output_bytes}"
        )
    if index is None and torch is not None:
        index = int(torch.cuda.current_device())
    with cp.cuda.Device(index if index is not None else cp.cuda.Device().id):
        out: dict[str, Any] = {}
        for t in tensors:
            want = out_dtype if out_dtype is not None and t.dtype.name in _FLOATS else None
            arr = _cuda.decode_device(_cuda.to_device(t), want)
            out[t.name] = torch.from_dlpack(arr) if torch is not None else arr
    return out


def _convert_np(a: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return a.astype(dtype) if a.dtype.name in _FLOATS and a.dtype != dtype else a


def to_device(t: EncodedTensor | DeviceTensor, device: str = "cuda") -> DeviceTensor:
    """Put one parsed tensor's compressed form on a CUDA device (nothing decoded).

    Args:
        t: a tensor from :func:`crest.gpu.parse`.
        device: ``"cuda"`` or ``"cuda:N"``.

    Returns:
        A :class:`DeviceTensor` for :func:`sparse_matmul` and repeated decoding.

    Raises:
        GpuUnavailableError: no CuPy or no device.
    """
    kind, index = _split_device(device)
    if kind != "cuda":
        raise ValueError(f"to_device needs a cuda device, got {device!r}")
    cp = _cuda.cupy_module()
    with cp.cuda.Device(index if index is not None else cp.cuda.Device().id):
        return _cuda.to_device(t)


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def sparse_matmul(encoded: EncodedTensor | DeviceTensor, x: Any) -> Any:
    """``y = W x`` straight from the compressed form; W is never materialised.

    Args:
        encoded: the weight ``[out, in]`` (higher ranks are viewed as
            ``[shape[0], prod(shape[1:])]``): an :class:`EncodedTensor` from
            :func:`crest.gpu.parse`, or its device-resident form from :func:`to_device`.
        x: ``[in]`` or ``[in, batch]``, floating: a NumPy array (computed on the CPU), a
            CuPy array, or a torch tensor (CPU: NumPy path; CUDA: the fused kernel, through
            DLPack). Batches above 16 run in groups of 16 columns.

    Returns:
        ``[out]`` or ``[out, batch]`` of x's array type, dtype and device. The GPU
        accumulates in float32 (atomics: rounding depends on run order); the NumPy path
        in float64.

    Raises:
        TypeError: x is not a floating NumPy/CuPy/torch array, or a DeviceTensor is
            given a host array.
        ValueError: shapes do not match.
        GpuUnavailableError: x is on a GPU but CuPy is missing.
    """
    lib = _library(x)
    if lib == "torch":
        torch = _torch(require_cuda=False)
        if x.device.type == "cuda":
            cp = _cuda.cupy_module()
            with cp.cuda.Device(x.device.index if x.device.index is not None else 0):
                y = sparse_matmul(encoded, cp.from_dlpack(x.detach().contiguous()))
            return torch.from_dlpack(y)
        return torch.from_numpy(np.ascontiguousarray(sparse_matmul(encoded, x.detach().numpy())))
    if lib == "cupy":
        if x.dtype.kind != "f":
            raise TypeError(f"x must be floating, got dtype {x.dtype}")
        _check_shapes(encoded, x)
        return _cuda.matmul_device(_cuda.to_device(encoded), x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy, CuPy or torch array, got {type(x).__name__}")
    if isinstance(encoded, DeviceTensor):
        raise TypeError("a DeviceTensor needs x on the GPU (a CuPy array or a CUDA torch tensor)")
    if x.dtype.kind != "f":
        raise TypeError(f"x must be floating, got dtype {x.dtype}")
    out_f, in_f = _check_shapes(encoded, x)
    if encoded.encoding == "dense":
        if encoded.data is None:
            raise FormatError(f"tensor {encoded.name[:200]!r}: dense data missing")
        w = encoded.data.astype(encoded.dtype).astype(np.float32).astype(np.float64).reshape(out_f, in_f)
        y = w @ x.astype(np.float64)
    else:
        y = _xp.sparse_matmul_xp(encoded, x, np)
    return y.astype(x.dtype)


def _check_shapes(encoded: EncodedTensor | DeviceTensor, x: Any) -> tuple[int, int]:
    if not isinstance(encoded, (EncodedTensor, DeviceTensor)):
        raise TypeError(f"encoded must be an EncodedTensor or DeviceTensor, got {type(encoded).__name__}")
    if len(encoded.shape) < 1:
        raise ValueError(f"tensor {encoded.name[:200]!r} is a scalar, not a weight [out, in]")
    out_f = encoded.shape[0]
    in_f = encoded.numel // out_f if out_f else int(np.prod(encoded.shape[1:], dtype=np.int64))
    if x.ndim not in (1, 2) or x.shape[0] != in_f:
        raise ValueError(
            f"x must be [{in_f}] or [{in_f}, batch] for weight {encoded.name[:200]!r} of shape "
            f"{list(encoded.shape)}, got shape {list(x.shape)}"
        )
    return out_f, in_f
