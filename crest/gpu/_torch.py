"""torch modules that keep a layer's weight compressed and decode it in ``forward``.

Imported lazily by ``crest.gpu`` (module ``__getattr__``): the package itself never needs
torch. On a CUDA device the modules run the CuPy kernels on their own buffers (shared
through DLPack, on torch's current stream); on the CPU they decode with the NumPy
reference decoder. Inference modules: the compressed weight has no gradient.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from crest.exceptions import FormatError
from crest.format import (
    CHUNK_TABLE_COLUMNS,
    DEFAULT_CHUNK_ENTRIES,
    EncodedTensor,
    check_tensor,
    decode_tensor,
    parse,
)
from crest.gpu import _cuda, _xp
from crest.gpu._cuda import DeviceTensor

torch: Any = importlib.import_module("torch")
_F: Any = importlib.import_module("torch.nn.functional")

__all__ = ["CompressedLinear", "CompressedConv2d", "load_model"]

logger = logging.getLogger(__name__)

_FLOATS = frozenset({"float16", "float32", "float64"})
_SPARSE_BUFFERS = ("codebook", "index_stream", "code_stream", "chunk_bounds")
_FUSED_MAX_BATCH = _xp.MAX_BATCH


@contextlib.contextmanager
def _on_torch_stream(device: Any) -> Iterator[Any]:
    """CuPy on the tensor's device and on torch's current stream; yields the cupy module."""
    cp = _cuda.cupy_module()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cp.cuda.Device(index):
        current = torch.cuda.current_stream(index)
        if int(current.cuda_stream) == 0:  # torch on the legacy default stream, as CuPy is
            yield cp
            return
        with _cupy_stream(cp, current):
            yield cp


def _cupy_stream(cp: Any, current: Any) -> Any:
    """A CuPy stream object for torch's current (non-default) stream."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        try:
            return from_external(current)
        except Exception as exc:  # this torch does not speak the CUDA stream protocol
            logger.debug("cupy.cuda.Stream.from_external failed (%s: %s); using ExternalStream", type(exc).__name__, exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cp.cuda.ExternalStream(int(current.cuda_stream), int(current.device.index))


class _CompressedBase(torch.nn.Module):  # type: ignore[misc]
    """Holds one weight in its crest form as buffers (or dense, if stored dense)."""

    def __init__(self, weight: EncodedTensor, bias: Any, ndim: int) -> None:
        super().__init__()
        if not isinstance(weight, EncodedTensor):
            raise TypeError(f"weight must be an EncodedTensor from crest.gpu.parse, got {type(weight).__name__}")
        if weight.dtype.name not in _FLOATS:
            raise TypeError(f"weight {weight.name[:200]!r} has dtype {weight.dtype}; a float dtype is needed")
        if len(weight.shape) != ndim:
            raise ValueError(f"weight {weight.name[:200]!r} has shape {list(weight.shape)}; {ndim} dimensions needed")
        self.weight_name = weight.name
        self.weight_shape = tuple(int(d) for d in weight.shape)
        self.weight_encoding = weight.encoding
        self._cache: tuple[tuple[Any, ...], DeviceTensor] | None = None
        if weight.encoding == "dense":
            self.register_buffer("weight_dense", torch.from_numpy(decode_tensor(weight)))
        else:
            if weight.codebook is None or weight.index_stream is None or weight.code_stream is None:
                raise FormatError(f"tensor {weight.name[:200]!r}: sparse sections missing")
            self.n_entries = int(weight.n_entries or 0)
            self.chunk_entries = int(weight.chunk_entries or DEFAULT_CHUNK_ENTRIES)
            self.index_bits = int(weight.index_bits or 1)
            self.code_bits = int(weight.code_bits or 1)
            self._bounds_host = _xp.chunk_bounds(weight)
            native = np.dtype(weight.dtype.name)
            self.register_buffer("codebook", torch.from_numpy(np.ascontiguousarray(weight.codebook).astype(native)))
            self.register_buffer("index_stream", torch.from_numpy(np.array(weight.index_stream, dtype=np.uint8)))
            self.register_buffer("code_stream", torch.from_numpy(np.array(weight.code_stream, dtype=np.uint8)))
            self.register_buffer("chunk_bounds", torch.from_numpy(self._bounds_host.copy()))
        if bias is None:
            self.register_parameter("bias", None)
        else:
            b = torch.as_tensor(np.asarray(bias) if not isinstance(bias, torch.Tensor) else bias)
            if tuple(b.shape) != (self.weight_shape[0],):
                raise ValueError(f"bias must have shape [{self.weight_shape[0]}], got {list(b.shape)}")
            self.bias = torch.nn.Parameter(b.detach().clone(), requires_grad=False)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Validate an incoming compressed weight as a file's is, then load it and re-plan.

        The GPU launches are planned on the host from the chunk bounds; a state dict is
        data like a file, so its streams, codebook and bounds must pass the checks of
        :func:`crest.format.parse` before they replace the module's, or a tampered one
        would drive the kernels past their buffers.

        Raises:
            FormatError: the incoming buffers are of another shape or dtype, or fail a check.
        """
        bounds = self._checked_bounds(state_dict, prefix) if self.weight_encoding == "sparse" else None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if bounds is not None:
            self._bounds_host = bounds
            self._cache = None  # plans and codebook tables of the old buffers

    def _checked_bounds(self, state_dict: dict[str, Any], prefix: str) -> np.ndarray:
        """The chunk bounds (int64 ``[n_chunks + 1]``) the buffers would hold after loading
        ``state_dict``, once the sparse form they make together is checked in full."""
        label = f"state dict of '{prefix[:-1][:200]}'" if prefix else f"state dict of '{self.weight_name[:200]}'"
        host: dict[str, np.ndarray] = {}
        for name in _SPARSE_BUFFERS:
            current = getattr(self, name)
            value = state_dict.get(prefix + name, current)
            if not isinstance(value, torch.Tensor):
                raise FormatError(f"{label}: {name} is a {type(value).__name__}, not a tensor")
            if tuple(value.shape) != tuple(current.shape):
                raise FormatError(
                    f"{label}: {name} has shape {list(value.shape)[:4]}; the stored weight needs {list(current.shape)}"
                )
            if name == "codebook":
                if not value.dtype.is_floating_point:
                    raise FormatError(f"{label}: codebook has dtype {value.dtype}, not a float dtype")
                cast = value.detach().to("cpu", current.dtype)  # as load_state_dict's copy will
                bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[cast.element_size()]
                host[name] = cast.view(bits).numpy().view(f"u{cast.element_size()}")
            else:
                if value.dtype != current.dtype:
                    raise FormatError(f"{label}: {name} has dtype {value.dtype}, not {current.dtype}")
                host[name] = value.detach().cpu().numpy()
        bounds = host["chunk_bounds"].astype(np.int64, copy=True)
        numel = math.prod(self.weight_shape)
        if int(bounds[-1]) != numel or bool((bounds[:-1] < 0).any()):
            logger.warning("refused a %s: chunk bounds outside 0..%d", label, numel)
            raise FormatError(f"{label}: chunk bounds must lie in 0..{numel} and end at {numel}")
        rows = np.arange(bounds.shape[0] - 1, dtype=np.uint64) * np.uint64(self.chunk_entries)
        table = np.zeros((bounds.shape[0] - 1, CHUNK_TABLE_COLUMNS), dtype=np.uint64)
        table[:, 0] = bounds[:-1]
        table[:, 1] = rows * np.uint64(self.index_bits)
        table[:, 2] = rows * np.uint64(self.code_bits)
        codebook = host["codebook"]
        encoded = EncodedTensor(  # bit patterns: the checks look at nothing else of the values
            name=label, dtype=codebook.dtype, shape=self.weight_shape, encoding="sparse",
            index_bits=self.index_bits, code_bits=self.code_bits, n_entries=self.n_entries,
            n_codes=int(codebook.shape[0]), chunk_entries=self.chunk_entries, codebook=codebook,
            index_stream=host["index_stream"], code_stream=host["code_stream"], chunk_table=table,
        )
        try:
            check_tensor(encoded)
        except FormatError as e:
            logger.warning("refused a %s: %s", label, e)
            raise
        return bounds

    @property
    def compressed_bytes(self) -> int:
        """Bytes of the stored form held by this module (streams, codebook, bounds)."""
        if self.weight_encoding == "dense":
            return int(self.weight_dense.numel() * self.weight_dense.element_size())
        return int(
            sum(b.numel() * b.element_size() for b in (self.codebook, self.index_stream, self.code_stream, self.chunk_bounds))
        )

    def _device_tensor(self) -> DeviceTensor:
        """The CuPy view of the buffers (zero-copy through DLPack; cached per storage)."""
        bufs = (self.codebook, self.index_stream, self.code_stream, self.chunk_bounds)
        key = tuple((b.data_ptr(), b.dtype, b.device) for b in bufs)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        cp = _cuda.cupy_module()
        dt = DeviceTensor(
            self.weight_name,
            np.dtype(str(self.codebook.dtype).removeprefix("torch.")),
            self.weight_shape,
            "sparse",
            codebook=cp.from_dlpack(self.codebook.detach()),
            index_words=cp.from_dlpack(self.index_stream).view(cp.uint32),
            code_words=cp.from_dlpack(self.code_stream).view(cp.uint32),
            bounds=cp.from_dlpack(self.chunk_bounds),
            bounds_host=self._bounds_host,
            n_entries=self.n_entries,
            chunk_entries=self.chunk_entries,
            index_bits=self.index_bits,
            code_bits=self.code_bits,
        )
        self._cache = (key, dt)
        return dt

    def _host_encoded(self) -> EncodedTensor:
        cb = self.codebook.detach().cpu().numpy()
        table = np.zeros((self._bounds_host.shape[0] - 1, CHUNK_TABLE_COLUMNS), dtype=np.uint64)
        table[:, 0] = self._bounds_host[:-1]
        return EncodedTensor(
            name=self.weight_name,
            dtype=cb.dtype,
            shape=self.weight_shape,
            encoding="sparse",
            index_bits=self.index_bits,
            code_bits=self.code_bits,
            n_entries=self.n_entries,
            n_codes=int(cb.shape[0]),
            chunk_entries=self.chunk_entries,
            codebook=cb,
            index_stream=self.index_stream.cpu().numpy(),
            code_stream=self.code_stream.cpu().numpy(),
            chunk_table=table,
        )

    def decoded_weight(self) -> Any:
        """The dense weight, decoded now: a torch tensor on the module's device.

        Returns:
            ``weight_shape``, the codebook's dtype (float32 unless the module was cast),
            on the buffers' device (CUDA kernels there, NumPy on the CPU).
        """
        if self.weight_encoding == "dense":
            return self.weight_dense
        device = self.index_stream.device
        if device.type == "cuda":
            with _on_torch_stream(device):
                return torch.from_dlpack(_cuda.decode_device(self._device_tensor()))
        return torch.from_numpy(decode_tensor(self._host_encoded()))

    def _bias(self, x: Any) -> Any:
        return None if self.bias is None else self.bias.to(x.dtype)


class CompressedLinear(_CompressedBase):
    """``nn.Linear`` whose weight stays in crest's compressed form.

    Args:
        weight: the ``[out_features, in_features]`` float weight from :func:`crest.gpu.parse`.
        bias: optional dense bias ``[out_features]`` (array or tensor).

    ``forward(x)``: x ``[..., in_features]`` -> ``[..., out_features]``, x's dtype and
    device. On CUDA with at most 16 rows and no gradient needed for x, the fused kernel
    computes ``W x`` straight from the streams; otherwise W is decoded and ``F.linear`` runs.
    """

    def __init__(self, weight: EncodedTensor, bias: Any = None) -> None:
        super().__init__(weight, bias, 2)
        self.out_features, self.in_features = self.weight_shape

    def forward(self, x: Any) -> Any:
        rows = x.numel() // self.in_features if self.in_features else 0
        fused = (
            self.weight_encoding == "sparse"
            and x.is_cuda
            and 0 < rows <= _FUSED_MAX_BATCH
            and not (torch.is_grad_enabled() and x.requires_grad)
        )
        if fused:
            xt = x.reshape(rows, self.in_features).t().contiguous()
            with _on_torch_stream(x.device) as cp:
                y = torch.from_dlpack(_cuda.matmul_device(self._device_tensor(), cp.from_dlpack(xt)))
            out = y.t().reshape(*x.shape[:-1], self.out_features)
            bias = self._bias(x)
            return out if bias is None else out + bias
        w = self.decoded_weight().to(x.dtype)
        return _F.linear(x, w, self._bias(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, encoding={self.weight_encoding}"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class CompressedConv2d(_CompressedBase):
    """``nn.Conv2d`` whose weight stays in crest's compressed form; decoded in ``forward``.

    Args:
        weight: ``[out_channels, in_channels / groups, kh, kw]`` float weight from
            :func:`crest.gpu.parse`.
        bias: optional dense bias ``[out_channels]``.
        stride, padding, dilation, groups: as ``nn.Conv2d`` (zero padding; ``padding``
            may be an int, a pair, or ``"same"``/``"valid"``).
    """

    def __init__(
        self,
        weight: EncodedTensor,
        bias: Any = None,
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(weight, bias, 4)
        self.out_channels = self.weight_shape[0]
        self.in_channels = self.weight_shape[1] * groups
        self.kernel_size = self.weight_shape[2:]
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = int(groups)

    @classmethod
    def from_conv(cls, conv: Any, weight: EncodedTensor, bias: Any = None) -> CompressedConv2d:
        """Same hyperparameters as ``conv`` (an ``nn.Conv2d`` with zero padding)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        return cls(weight, bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)

    def forward(self, x: Any) -> Any:
        w = self.decoded_weight().to(x.dtype)
        return _F.conv2d(x, w, self._bias(x), self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, encoding={self.weight_encoding}"
        )


def load_model(blob: bytes | bytearray | memoryview, model: Any, *, strict: bool = True) -> Any:
    """Load a crest file into a torch model, keeping sparse Linear/Conv2d weights compressed.

    Every ``nn.Linear`` / ``nn.Conv2d`` (exact types) whose ``<name>.weight`` is stored
    sparse is replaced by :class:`CompressedLinear` / :class:`CompressedConv2d` on the
    same device, with ``<name>.bias`` kept dense; every other tensor of the file is
    decoded with NumPy and copied into the model's parameter or buffer of that name.

    Args:
        blob: the file bytes (validated fully first).
        model: a ``torch.nn.Module``; changed in place.
        strict: require that the file's names and the model's parameters/buffers match
            one to one.

    Returns:
        ``model``.

    Raises:
        FormatError: the file is malformed, or does not fit the model (a name the model
            lacks, a shape mismatch, or with ``strict`` a model tensor the file lacks).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = {t.name: t for t in parse(blob)}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for tname, t in tensors.items():  # every name and shape, before anything is decoded
        if tname not in shapes:
            if strict:
                raise FormatError(f"the file holds tensor {tname[:200]!r}, which the model does not have")
        elif tuple(t.shape) != shapes[tname]:
            raise FormatError(
                f"{tname[:200]} has shape {list(t.shape)[:8]} in the file but {list(shapes[tname])} in the model"
            )
    expected = set(shapes)
    consumed: set[str] = set()
    for name, module in list(model.named_modules()):
        if not name or type(module) not in (torch.nn.Linear, torch.nn.Conv2d):
            continue
        t = tensors.get(f"{name}.weight")
        if t is None or t.encoding != "sparse" or t.dtype.name not in _FLOATS:
            continue
        if tuple(t.shape) != tuple(module.weight.shape):
            raise FormatError(
                f"{name}.weight has shape {list(t.shape)} in the file but {list(module.weight.shape)} in the model"
            )
        bias: Any = None
        if module.bias is not None:
            stored = tensors.get(f"{name}.bias")
            bias = module.bias.detach().cpu() if stored is None else decode_tensor(stored)
            consumed.add(f"{name}.bias")
        if isinstance(module, torch.nn.Linear):
            new: Any = CompressedLinear(t, bias)
        else:
            new = CompressedConv2d.from_conv(module, t, bias)
        new.to(module.weight.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        consumed.add(f"{name}.weight")
    state = model.state_dict(keep_vars=True)
    for tname, t in tensors.items():
        if tname in consumed:
            continue
        if tname not in state:
            if strict:
                raise FormatError(f"the file holds tensor {tname[:200]!r}, which the model does not have")
            continue
        target = state[tname]
        arr = decode_tensor(t)
        if tuple(arr.shape) != tuple(target.shape):
            raise FormatError(
                f"{tname[:200]} has shape {list(arr.shape)} in the file but {list(target.shape)} in the model"
            )
        with torch.no_grad():
            target.copy_(torch.from_numpy(arr))
        consumed.add(tname)
    missing = sorted(expected - consumed)
    if strict and missing:
        raise FormatError(f"the file lacks {len(missing)} of the model's tensors: {', '.join(missing[:10])}")
    return model
