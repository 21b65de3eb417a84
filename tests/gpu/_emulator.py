"""Build and drive the CPU emulator of ``crest/gpu/kernels.cu`` (``tests/gpu/emu``).

The emulator runs the kernel source itself, compiled by the host C++ compiler with
AddressSanitizer and UndefinedBehaviorSanitizer, each CUDA thread a fiber that really
waits at the kernels' barriers (``emu/cuda_host.h``). It takes
the same :class:`crest.gpu._cuda.Launch` descriptions that CuPy is handed on a GPU, with
NumPy arrays standing in for device arrays; arrays are copied in, the launches run in
order, and every array is copied back.

Only the kernels' ``__shared__`` declarations are rewritten before compiling: the dynamic
shared-memory array becomes a pointer to the launch's exactly-sized buffer, and each
static ``__shared__`` array a reference to storage that every block finds refilled with
garbage.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crest.gpu import _cuda

EMU_DIR = Path(__file__).with_name("emu")
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
FLAGS = [
    "-std=c++20",
    "-O1",
    "-g",
        "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-Wall",
    "-Wno-unknown-pragmas",
]
_STATIC = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\[([^\]]+)\];")
_DYNAMIC = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\[\];")


@functools.cache
def unavailable_reason() -> str | None:
    """Why the emulator cannot be built here (no compiler, no sanitizer runtime), or None."""
    if CXX is None:
        return "no C++ compiler (g++) on this machine"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("#include <ucontext.h>\nint main() { ucontext_t c; return getcontext(&c); }\n")
        proc = subprocess.run(
            [CXX, *FLAGS, "-o", str(Path(tmp) / "probe"), str(src)], check=False, capture_output=True, text=True
        )
    if proc.returncode != 0:
        return f"{CXX} cannot build with {' '.join(FLAGS)}: {proc.stderr.strip()[-300:]}"
    return None


def host_source(source: str) -> str:
    """``kernels.cu`` with its shared-memory declarations rewritten for the host.

    Raises:
        AssertionError: the source no longer has the declarations this rewrite expects.
    """
    out, n_dynamic = _DYNAMIC.subn(r"\1* \2 = reinterpret_cast<\1*>(crest_emu::dynamic_smem());", source)
    out, n_static = _STATIC.subn(r"auto& \2 = crest_emu::block_static<\1[\3], __COUNTER__>();", out)
    assert "__shared__" not in out, "a __shared__ declaration the emulator does not know"
    assert n_dynamic >= 1 and n_static >= 1, "kernels.cu's __shared__ declarations changed: update the emulator"
    return out


def build(build_dir: Path, source: str | None = None, *, ubsan: bool = True) -> Path:
    """Compile the emulator; returns the executable.

    Args:
        build_dir: where the executable and the rewritten source go.
        source: kernel source to compile (default: ``crest/gpu/kernels.cu``; the tests
            pass deliberately broken variants to show what the emulator catches).
        ubsan: also build with UndefinedBehaviorSanitizer (False: AddressSanitizer alone,
            to show what ASan catches by itself).
    """
    if CXX is None:
        raise RuntimeError("no C++ compiler")
    build_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        source = _cuda.KERNEL_SOURCE.read_text()
    (build_dir / "kernels_host.inc").write_text(host_source(source))
    exe = build_dir / "crest_emu"
    flags = FLAGS if ubsan else [f.replace("address,undefined", "address") for f in FLAGS]
    cmd = [CXX, *flags, f"-I{EMU_DIR}", f"-I{build_dir}", "-o", str(exe), str(EMU_DIR / "runner.cpp")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the emulator failed:\n{proc.stdout}{proc.stderr}")
    return exe


def _scalar(value: np.generic) -> str:
    if value.dtype == np.int32:
        return f"i32:{int(value)}"
    if value.dtype == np.int64:
        return f"i64:{int(value)}"
    raise TypeError(f"no kernel parameter takes a {value.dtype} scalar")


def run(exe: Path, launches: Sequence[_cuda.Launch], work: Path, *, seed: int = 0, timeout: float = 300) -> None:
    """Run ``launches`` in order on the emulator; arrays in their args are updated in place.

    Args:
        exe: from :func:`build`.
        launches: as built by ``crest.gpu._cuda`` (NumPy arrays, C-contiguous, as buffers).
        work: an empty folder for the job's files.
        seed: shuffles the order in which blocks run.
        timeout: seconds before a hung launch (a barrier some threads never reach) fails.

    Raises:
        AssertionError: the emulator failed (sanitizer report, launch-limit violation,
            deadlock); the message holds its output.
    """
    work.mkdir(parents=True, exist_ok=True)
    arrays: list[np.ndarray] = []
    index: dict[int, int] = {}
    lines = [f"seed {seed}"]
    launch_lines = []
    for launch in launches:
        words = []
        for arg in launch.args:
            if isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:
                    raise ValueError("emulated kernels take C-contiguous arrays")
                if id(arg) not in index:
                    index[id(arg)] = len(arrays)
                    path = work / f"buf{len(arrays)}"
                    arg.tofile(path)
                    lines.append(f"buffer {arg.nbytes} {arg.itemsize} {path}")
                    arrays.append(arg)
                words.append(f"b{index[id(arg)]}")
            else:
                words.append(_scalar(arg))
        grid = (tuple(launch.grid) + (1, 1))[:3]
        block = (tuple(launch.block) + (1, 1))[:3]
        launch_lines.append(
            " ".join(["launch", launch.kernel, *map(str, grid), *map(str, block), str(launch.shared_mem), str(len(words)), *words])
        )
    job = work / "job.txt"
    job.write_text("\n".join(lines + launch_lines) + "\n")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    try:
        proc = subprocess.run([str(exe), str(job)], check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"emulated launch hung for {timeout} s (a barrier not reached by every thread?)") from exc
    assert proc.returncode == 0, f"emulator failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr[-8000:]}"
    for i, arr in enumerate(arrays):
        got = np.fromfile(work / f"buf{i}.out", dtype=arr.dtype)
        arr.reshape(-1)[...] = got

