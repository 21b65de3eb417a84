"""``crest/gpu/kernels.cu`` compiles with nvcc, as is, and matches its Python launchers.

The file is exactly what CuPy hands NVRTC at run time, so it must build without host code
or includes. The PTX's entry points and parameter lists are compared with the argument
tuples ``crest.gpu._cuda`` builds for each launch (count and width of every argument), so
a launcher/kernel mismatch fails here, without a GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crest.gpu import _cuda
from tests.gpu._nvrtc import needs_nvrtc, nvrtc_compile

SOURCE = _cuda.KERNEL_SOURCE
NVCC = shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if Path(p).exists()), None
)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")


def _nvcc(tmp_path: Path, kind: str, arch: str = "sm_90") -> Path:
    out = tmp_path / f"kernels.{kind}"
    proc = subprocess.run(
        [str(NVCC), f"-arch={arch}", f"-{kind}", "--std=c++17", "-Werror", "all-warnings", "-o", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_source_is_nvrtc_compatible() -> None:
    text = SOURCE.read_text()
    assert "#include" not in text
    assert "__host__" not in text and "int main" not in text
    for name in _cuda.KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__ void {name}\(|CREST_DECODE_KERNEL\({name},', text), name


@needs_nvcc
def test_kernels_compile_to_cubin_with_every_entry_point(tmp_path: Path) -> None:
    cubin = _nvcc(tmp_path, "cubin").read_bytes()
    for name in _cuda.KERNEL_NAMES:
        assert name.encode() + b"\x00" in cubin, name


def _ptx_params(ptx: str) -> dict[str, list[int]]:
    """Entry name -> parameter widths in bits."""
    out: dict[str, list[int]] = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S):
        out[m.group(1)] = [int(w) for w in re.findall(r"\.param\s+\.[a-z](\d+)", m.group(2))]
    return out


def _width(arg: Any) -> int:
    if isinstance(arg, np.ndarray):  # stands in for a device array: passed as a pointer
        return 64
    if isinstance(arg, np.generic):
        return arg.dtype.itemsize * 8
    raise AssertionError(f"launch argument of type {type(arg).__name__} has no fixed C type")


@needs_nvcc
def test_launch_arguments_match_kernel_parameters(tmp_path: Path) -> None:
    params = _ptx_params(_nvcc(tmp_path, "ptx").read_text())
    assert set(_cuda.KERNEL_NAMES) <= set(params)
    arr = np.zeros(4, np.uint32)
    t = _cuda.DeviceTensor(
        "w", np.dtype(np.float32), (4, 8), "sparse", codebook=arr, index_words=arr, code_words=arr,
        bounds=arr, bounds_host=np.array([0, 32], np.int64), n_entries=5, chunk_entries=1024,
        index_bits=4, code_bits=5,
    )
    launches = {
        "crest_decode_u8": _cuda.decode_args(t, arr, arr, 4096),
        "crest_decode_u16": _cuda.decode_args(t, arr, arr, 4096),
        "crest_decode_u32": _cuda.decode_args(t, arr, arr, 4096),
        "crest_decode_u64": _cuda.decode_args(t, arr, arr, 4096),
        "crest_fill_regions": _cuda.fill_args(arr, arr, arr, 3, 4),
        "crest_spmv_f32": _cuda.spmv_args(t, arr, arr, arr, 8, 2),
    }
    assert set(launches) == set(_cuda.KERNEL_NAMES)
    for name, args in launches.items():
        assert [_width(a) for a in args] == params[name], name


@needs_nvcc
def test_kernels_compile_for_older_architectures(tmp_path: Path) -> None:
    """Nothing in the source needs Hopper: it builds for Turing (sm_75), CUDA 13's oldest target."""
    _nvcc(tmp_path, "cubin", arch="sm_75")


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_90", "sm_75"])
def test_kernels_compile_with_nvrtc_as_cupy_compiles_them(arch: str) -> None:
    """The options are those ``crest.gpu._cuda`` passes to ``cupy.RawModule`` plus the ones
    CuPy adds itself (the target and ``--device-as-default-execution-space``)."""
    options = [*_cuda.NVRTC_OPTIONS, f"-arch={arch}", "--device-as-default-execution-space"]
    rc, log, cubin = nvrtc_compile(SOURCE.read_text(), options)
    assert rc == 0, log
    assert "warning" not in log.lower(), log
    for name in _cuda.KERNEL_NAMES:
        assert name.encode() + b"\x00" in cubin, name
