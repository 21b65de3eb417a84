"""NVRTC, the compiler CuPy's ``RawModule`` uses at run time, called through ctypes.

Shared by the kernel tests (``test_nvcc.py``) and the benchmark's tests
(tests/bench/test_gpu_decode.py); it needs no GPU, only libnvrtc (the ``nvidia-cuda-nvrtc``
wheel of the test extra, or a system CUDA).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from pathlib import Path

import pytest

__all__ = ["NVRTC", "needs_nvrtc", "nvrtc_compile"]


def _nvrtc_library() -> Path | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (test extra) or the system, else None."""
    spec = importlib.util.find_spec("nvidia")
    roots = (spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        for pattern in ("cu*/lib/libnvrtc.so.*", "cuda_nvrtc/lib/libnvrtc.so.*"):
            for lib in sorted(Path(root).glob(pattern)):
                if "builtins" not in lib.name and ".alt." not in lib.name:
                    return lib
    found = ctypes.util.find_library("nvrtc")
    return Path(found) if found else None


NVRTC = _nvrtc_library()
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="libnvrtc is not installed (pip install nvidia-cuda-nvrtc)")


def nvrtc_compile(source: str, options: list[str]) -> tuple[int, str, bytes]:
    """(result code, log, cubin) of NVRTC compiling ``source`` with ``options``."""
    assert NVRTC is not None
    for builtins in sorted(NVRTC.parent.glob("libnvrtc-builtins.so.*")):  # dlopen'ed by NVRTC
        if ".alt." not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(NVRTC))
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernels.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    cubin = b""
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        assert lib.nvrtcGetCUBIN(prog, buf) == 0
        cubin = buf.raw
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), cubin
