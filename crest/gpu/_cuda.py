"""CuPy backend: device-resident tensors and launches of the kernels in ``kernels.cu``.

CuPy is imported lazily (:func:`cupy_module`, through :func:`crest.gpu._probe.probe_cupy`),
so this module imports without it. Nothing here validates a file: tensors come from
:func:`crest.format.parse`, which has checked every entry, code and chunk base already.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crest.exceptions import FormatError, GpuUnavailableError
from crest.format import DEFAULT_CHUNK_ENTRIES, EncodedTensor
from crest.gpu import _xp
from crest.gpu._probe import probe_cupy

__all__ = [
    "KERNEL_NAMES",
    "KERNEL_SOURCE",
    "NVRTC_OPTIONS",
    "DeviceTensor",
    "Launch",
    "codebook_bits",
    "cupy_module",
    "decode_device",
    "decode_launches",
    "matmul_device",
    "spmv_launch",
    "stored_form",
    "to_device",
]

logger = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
KERNEL_NAMES = (
    "crest_decode_u8",
    "crest_decode_u16",
    "crest_decode_u32",
    "crest_decode_u64",
    "crest_fill_regions",
    "crest_spmv_f32",
)
NVRTC_OPTIONS = ("--std=c++17",)  # what cupy.RawModule hands NVRTC besides its own options
_SCRATCH = 256  # bytes of block-scan scratch before the staging area (CREST_SCRATCH_BYTES)
_FILL_THREADS = 256
_FILL_MAX_BLOCKS_X = 1024  # blocks per region of the fill launch, at most
_FILL_BYTES_PER_THREAD = 4 * 16  # bytes of the longest region per fill thread before a block is added
_MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y
_DEFAULT_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block gets without opting in


def cupy_module() -> Any:
    """The ``cupy`` module, when it is installed and sees a CUDA device.

    Raises:
        GpuUnavailableError: CuPy is not installed, sees no device, or fails to probe one.
    """
    probe = probe_cupy()
    if probe.reason is not None:
        raise GpuUnavailableError(probe.reason)
    return probe.module


@dataclass
class _Kernels:
    functions: dict[str, Any]
    stage_cap: int


_KERNELS: dict[int, _Kernels] = {}


def _kernels(cp: Any) -> _Kernels:
    """The compiled kernels for the current device (compiled once per device)."""
    dev = cp.cuda.Device()
    cached = _KERNELS.get(dev.id)
    if cached is not None:
        return cached
    module = cp.RawModule(code=KERNEL_SOURCE.read_text(), options=NVRTC_OPTIONS)
    functions = {name: module.get_function(name) for name in KERNEL_NAMES}
    optin = int(dev.attributes.get("MaxSharedMemoryPerBlockOptin", _DEFAULT_SHARED_BYTES))
    stage_cap = max(0, min(_xp.STAGE_CAP_BYTES, optin - _SCRATCH) // 16 * 16)
    if _SCRATCH + stage_cap > _DEFAULT_SHARED_BYTES:
        for name in KERNEL_NAMES[:4]:
            functions[name].max_dynamic_shared_size_bytes = _SCRATCH + stage_cap
    kernels = _Kernels(functions, stage_cap)
    _KERNELS[dev.id] = kernels
    return kernels


@dataclass(eq=False)
class DeviceTensor:
    """One tensor of a crest file held on the GPU in its stored (compressed) form.

    Attributes:
        name: the tensor's name.
        dtype: the stored NumPy dtype.
        shape: the tensor's shape.
        encoding: ``"dense"`` or ``"sparse"``.
        data: dense only: CuPy array, ``shape``, ``dtype``.
        codebook: sparse only: CuPy ``[n_codes]`` of ``dtype`` (values).
        index_words: sparse only: CuPy uint32, the packed gap stream.
        code_words: sparse only: CuPy uint32, the packed code stream.
        bounds: sparse only: CuPy int64 ``[n_chunks + 1]``: chunk bases, then numel.
        bounds_host: sparse only: the same bounds as a NumPy array (for launch planning).
        n_entries, chunk_entries, index_bits, code_bits: sparse only: as in the header.
        codebook_host: sparse only, optional: the codebook values on the host, used for
            exact host-side dtype conversions.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    encoding: str
    data: Any = None
    codebook: Any = None
    index_words: Any = None
    code_words: Any = None
    bounds: Any = None
    bounds_host: np.ndarray | None = None
    n_entries: int = 0
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES
    index_bits: int = 1
    code_bits: int = 1
    codebook_host: np.ndarray | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def numel(self) -> int:
        """Number of elements (Python int)."""
        return math.prod(self.shape)

    @property
    def n_chunks(self) -> int:
        """Chunks of the sparse form (0 for dense)."""
        return 0 if self.bounds_host is None else int(self.bounds_host.shape[0]) - 1


def _native(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(a).astype(np.dtype(dtype).newbyteorder("="), copy=False)


def _words(stream: np.ndarray) -> np.ndarray:
    return _native(np.ascontiguousarray(stream).view("<u4"), np.uint32)


def stored_form(t: EncodedTensor, asarray: Callable[[np.ndarray], Any]) -> DeviceTensor:
    """A parsed tensor's stored form as a :class:`DeviceTensor` of arrays made by ``asarray``.

    Args:
        t: a tensor from :func:`crest.format.parse` (already validated).
        asarray: copies a host array to where the kernels run: ``cupy.asarray`` on a GPU
            (:func:`to_device`); ``numpy.array`` for the CPU emulator in the tests.

    Returns:
        The :class:`DeviceTensor` (compressed; nothing is decoded).
    """
    if t.encoding == "dense":
        if t.data is None:
            raise FormatError(f"tensor {t.name[:200]!r}: dense data missing")
        return DeviceTensor(t.name, t.dtype, t.shape, "dense", data=asarray(_native(t.data, t.dtype)))
    if t.codebook is None or t.index_stream is None or t.code_stream is None:
        raise FormatError(f"tensor {t.name[:200]!r}: sparse sections missing")
    bounds = _xp.chunk_bounds(t)
    host_cb = _native(t.codebook, t.dtype)
    return DeviceTensor(
        t.name,
        t.dtype,
        t.shape,
        "sparse",
        codebook=asarray(host_cb),
        index_words=asarray(_words(t.index_stream)),
        code_words=asarray(_words(t.code_stream)),
        bounds=asarray(bounds),
        bounds_host=bounds,
        n_entries=int(t.n_entries or 0),
        chunk_entries=int(t.chunk_entries or DEFAULT_CHUNK_ENTRIES),
        index_bits=int(t.index_bits or 1),
        code_bits=int(t.code_bits or 1),
        codebook_host=host_cb,
    )


def to_device(t: EncodedTensor | DeviceTensor) -> DeviceTensor:
    """Copy one parsed tensor's stored form to the current CUDA device.

    Args:
        t: a tensor from :func:`crest.format.parse` (already validated), or a DeviceTensor
            (returned as is).

    Returns:
        The device-resident :class:`DeviceTensor` (compressed; nothing is decoded).

    Raises:
        GpuUnavailableError: no CuPy or no device.
    """
    if isinstance(t, DeviceTensor):
        return t
    return stored_form(t, cupy_module().asarray)


def codebook_bits(codebook: np.ndarray, out_dtype: Any) -> np.ndarray:
    """A host codebook converted as NumPy's ``astype(out_dtype)``, as the unsigned bit
    patterns of ``out_dtype``'s itemsize that the decode kernels copy (``[n_codes]``)."""
    out_dtype = np.dtype(out_dtype)
    return np.ascontiguousarray(codebook.astype(out_dtype)).view(np.dtype(f"u{out_dtype.itemsize}"))


def _table(cp: Any, t: DeviceTensor, out_dtype: np.dtype[Any]) -> Any:
    """Codebook as bit patterns of ``out_dtype`` on the device (cached per dtype)."""
    key = ("bits", out_dtype.str)
    table = t._cache.get(key)
    if table is None:
        if out_dtype == t.dtype:
            table = cp.ascontiguousarray(t.codebook).view(np.dtype(f"u{out_dtype.itemsize}"))
        elif t.codebook_host is not None:  # exact host conversion, as NumPy's astype
            table = cp.asarray(codebook_bits(t.codebook_host, out_dtype))
        else:
            bits = np.dtype(f"u{out_dtype.itemsize}")
            table = cp.ascontiguousarray(t.codebook.astype(out_dtype)).view(bits)
        t._cache[key] = table
    return table


def _plan(cp: Any, t: DeviceTensor, itemsize: int, stage_cap: int) -> tuple[_xp.RegionPlan, Any, Any]:
    key = ("plan", itemsize, stage_cap)
    cached = t._cache.get(key)
    if cached is None:
        if t.bounds_host is None:
            raise FormatError(f"tensor {t.name[:200]!r}: chunk bounds missing")
        plan = _xp.plan_regions(t.bounds_host, itemsize, stage_cap)
        cached = (plan, cp.asarray(plan.big_starts), cp.asarray(plan.big_ends))
        t._cache[key] = cached
    return cached  # type: ignore[no-any-return]


def decode_args(t: DeviceTensor, table: Any, out: Any, stage_bytes: int) -> tuple[Any, ...]:
    """Arguments of ``crest_decode_u{8,16,32,64}``, in the kernel's order and C types."""
    _, per_thread = _xp.launch_shape(t.chunk_entries)
    return (
        t.index_words,
        t.code_words,
        t.bounds,
        table,
        out,
        np.int64(t.n_entries),
        np.int32(t.chunk_entries),
        np.int32(t.index_bits),
        np.int32(t.code_bits),
        np.int32(per_thread),
        np.int64(stage_bytes),
    )


def fill_args(out: Any, starts: Any, ends: Any, n_regions: int, itemsize: int) -> tuple[Any, ...]:
    """Arguments of ``crest_fill_regions``, in the kernel's order and C types."""
    return (out, starts, ends, np.int32(n_regions), np.int32(itemsize))


def spmv_args(t: DeviceTensor, values: Any, x: Any, y: Any, in_features: int, batch: int) -> tuple[Any, ...]:
    """Arguments of ``crest_spmv_f32``, in the kernel's order and C types; the kernel writes
    only the ``y.shape[0]`` rows of ``y``."""
    _, per_thread = _xp.launch_shape(t.chunk_entries)
    return (
        t.index_words,
        t.code_words,
        t.bounds,
        values,
        x,
        y,
        np.int64(t.n_entries),
        np.int32(t.chunk_entries),
        np.int32(t.index_bits),
        np.int32(t.code_bits),
        np.int32(per_thread),
        np.int64(y.shape[0]),
        np.int64(in_features),
        np.int32(batch),
    )


@dataclass(frozen=True)
class Launch:
    """One kernel launch, described independently of who runs it.

    ``decode_device`` and ``matmul_device`` hand these to CuPy; the tests hand the same
    launches, with NumPy arrays in place of device arrays, to a CPU emulator of
    ``kernels.cu`` (tests/gpu/emu).

    Attributes:
        kernel: entry point in ``kernels.cu`` (one of ``KERNEL_NAMES``).
        grid: blocks per grid dimension.
        block: threads per block dimension.
        args: the kernel's arguments in order: arrays (passed as pointers) and NumPy
            scalars of the parameter's exact C type.
        shared_mem: bytes of dynamic shared memory.
    """

    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]
    shared_mem: int = 0


def decode_launches(
    t: DeviceTensor, plan: _xp.RegionPlan, table: Any, out: Any, big_starts: Any, big_ends: Any
) -> list[Launch]:
    """The launches that decode sparse ``t`` (``n_entries > 0``) into ``out``, in order.

    Args:
        t: the sparse tensor (its arrays on the device that runs the launches).
        plan: :func:`crest.gpu._xp.plan_regions` for ``t`` at ``out``'s itemsize.
        table: the codebook as unsigned bit patterns of ``out``'s itemsize ``[n_codes]``.
        out: flat unsigned output ``[numel]``, any contents: every element is written.
        big_starts, big_ends: ``plan.big_starts`` / ``plan.big_ends`` on that device.

    Returns:
        The fill of the regions too big to stage (when there are any), then the decode.
    """
    isz = int(out.dtype.itemsize)
    launches = []
    n_big = int(plan.big.shape[0])
    if n_big:
        longest = int((plan.big_ends - plan.big_starts).max()) * isz
        gx = min(_FILL_MAX_BLOCKS_X, longest // (_FILL_THREADS * _FILL_BYTES_PER_THREAD) + 1)
        launches.append(
            Launch("crest_fill_regions", (gx, min(n_big, _MAX_GRID_Y)), (_FILL_THREADS,),
                   fill_args(out, big_starts, big_ends, n_big, isz))
        )
    threads, _ = _xp.launch_shape(t.chunk_entries)
    launches.append(
        Launch(f"crest_decode_u{isz * 8}", (t.n_chunks,), (threads,),
               decode_args(t, table, out, plan.stage_bytes), _SCRATCH + plan.stage_bytes)
    )
    return launches


def spmv_launch(t: DeviceTensor, values: Any, x: Any, y: Any, in_features: int, batch: int) -> Launch:
    """The launch of ``y += W x`` for sparse ``t`` and float32 ``x [in, batch <= 16]``."""
    if not 1 <= batch <= _xp.MAX_BATCH:
        raise ValueError(f"batch must be 1..{_xp.MAX_BATCH} per launch, got {batch}")
    threads, _ = _xp.launch_shape(t.chunk_entries)
    return Launch("crest_spmv_f32", (t.n_chunks,), (threads,), spmv_args(t, values, x, y, in_features, batch))


def _run(kernels: _Kernels, launch: Launch) -> None:
    kernels.functions[launch.kernel](launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def decode_device(t: DeviceTensor, dtype: Any = None) -> Any:
    """Decode one device-resident tensor to a dense CuPy array.

    Args:
        t: the tensor (dense or sparse).
        dtype: output dtype (None: the stored dtype). A sparse tensor converts its
            codebook (on the host, as NumPy's ``astype``) and decodes straight into it.

    Returns:
        CuPy array of shape ``t.shape`` and the output dtype, on the current device:
        bit-exact to :func:`crest.gpu.decode` (then ``astype(dtype)``).
    """
    cp = cupy_module()
    out_dtype = np.dtype(t.dtype if dtype is None else dtype)
    if t.encoding == "dense":
        return t.data.astype(out_dtype, copy=True).reshape(t.shape)
    isz = out_dtype.itemsize
    out = cp.empty(t.numel, dtype=np.dtype(f"u{isz}"))
    if t.numel == 0:
        return out.view(out_dtype).reshape(t.shape)
    stream = cp.cuda.get_current_stream()
    if t.n_entries == 0:
        cp.cuda.runtime.memsetAsync(out.data.ptr, 0, out.nbytes, stream.ptr)
        return out.view(out_dtype).reshape(t.shape)
    kernels = _kernels(cp)
    plan, big_starts, big_ends = _plan(cp, t, isz, kernels.stage_cap)
    for launch in decode_launches(t, plan, _table(cp, t, out_dtype), out, big_starts, big_ends):
        _run(kernels, launch)
    return out.view(out_dtype).reshape(t.shape)


def matmul_device(t: DeviceTensor, x: Any) -> Any:
    """``y = W x`` on the GPU straight from the compressed form (W never materialised).

    Args:
        t: weight ``[out, in]`` (higher ranks are viewed as ``[shape[0], rest]``).
        x: CuPy ``[in]`` or ``[in, batch]``, floating.

    Returns:
        CuPy ``[out]`` or ``[out, batch]`` in x's dtype; accumulated in float32 with
        float32 weight values (run-order dependent rounding: atomics).
    """
    cp = cupy_module()
    out_f = t.shape[0] if t.shape else 1
    in_f = int(np.prod(t.shape[1:], dtype=np.int64))
    if x.ndim not in (1, 2) or x.shape[0] != in_f:
        raise ValueError(f"x must be [{in_f}] or [{in_f}, batch], got shape {tuple(x.shape)}")
    x2 = x.reshape(x.shape[0], 1) if x.ndim == 1 else x
    batch = int(x2.shape[1])
    if t.encoding == "dense":
        w = t.data.reshape(out_f, in_f).astype(cp.float32)
        y = w @ x2.astype(cp.float32)
    else:
        y = cp.zeros((out_f, batch), dtype=cp.float32)
        if t.n_entries and in_f and batch:
            kernels = _kernels(cp)
            key = ("values", "f32")
            values = t._cache.get(key)
            if values is None:
                src = t.codebook_host if t.codebook_host is not None else t.codebook
                values = cp.asarray(src.astype(np.float32) if isinstance(src, np.ndarray) else src.astype(cp.float32))
                t._cache[key] = values
            for s in range(0, batch, _xp.MAX_BATCH):
                xs = cp.ascontiguousarray(x2[:, s : s + _xp.MAX_BATCH], dtype=cp.float32)
                nb = int(xs.shape[1])
                ys = y if nb == batch else cp.zeros((out_f, nb), dtype=cp.float32)
                _run(kernels, spmv_launch(t, values, xs, ys, in_f, nb))
                if ys is not y:
                    y[:, s : s + nb] = ys
    y = y.astype(x.dtype, copy=False)
    return y.reshape(out_f) if x.ndim == 1 else y
