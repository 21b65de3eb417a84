"""``kernels.cu`` itself, run on the CPU by an emulator, against the NumPy reference.

The emulator (``tests/gpu/emu``) compiles the kernel source with the host C++ compiler
under AddressSanitizer and UndefinedBehaviorSanitizer and runs every CUDA thread as a
fiber, with real barriers behind ``__syncthreads`` and the warp intrinsics, resuming
threads in a seeded random order at each barrier. The launches
are the ones the CuPy path builds (:func:`crest.gpu._cuda.decode_launches`,
:func:`crest.gpu._cuda.spmv_launch`): grid and block shapes, shared-memory sizes and
arguments are the GPU's. Output buffers start poisoned, as ``cupy.empty`` does not clear.
What this cannot show is timing, NVRTC's code generation and the device's memory model;
the ``gpu`` tests in ``test_cupy.py`` cover those on a device.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crest.gpu import _cuda, _xp, decode, encode, parse
from tests.gpu import _emulator
from tests.format._corpus import BLOBS, bits, corpus, sparse_array, weight

_REASON = _emulator.unavailable_reason()
needs_emulator = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

CORPUS = corpus(seed=2, count=24)
_counter = itertools.count()


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _REASON is not None:
        pytest.skip(_REASON)
    return _emulator.build(tmp_path_factory.mktemp("emu-build"))


def _work(tmp_path: Path) -> Path:
    return tmp_path / f"job{next(_counter)}"


def _decode_emulated(
    exe: Path,
    blob: bytes,
    work: Path,
    *,
    dtype: Any = None,
    stage_cap: int = _xp.STAGE_CAP_BYTES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every sparse tensor of ``blob`` with entries, decoded by the emulated kernels as
    ``_cuda.decode_device`` launches them (one emulator run for the whole file)."""
    launches: list[_cuda.Launch] = []
    outs: dict[str, tuple[np.ndarray, np.dtype[Any], tuple[int, ...]]] = {}
    for t in parse(blob):
        if t.encoding != "sparse" or t.numel == 0 or not t.n_entries:
            continue
        dt = _cuda.stored_form(t, np.array)
        out_dtype = np.dtype(t.dtype if dtype is None else dtype)
        isz = out_dtype.itemsize
        out = np.full(t.numel * isz, 0xA5, np.uint8).view(f"u{isz}")  # cupy.empty is not zeroed
        assert dt.bounds_host is not None and dt.codebook_host is not None
        plan = _xp.plan_regions(dt.bounds_host, isz, stage_cap)
        table = _cuda.codebook_bits(dt.codebook_host, out_dtype)
        launches += _cuda.decode_launches(dt, plan, table, out, plan.big_starts.copy(), plan.big_ends.copy())
        outs[t.name] = (out, out_dtype, t.shape)
    if launches:
        _emulator.run(exe, launches, work, seed=seed)
    return {name: out.view(d).reshape(shape) for name, (out, d, shape) in outs.items()}


def _check(exe: Path, blob: bytes, work: Path, **kw: Any) -> int:
    got = _decode_emulated(exe, blob, work, **kw)
    ref = decode(blob, dtype=kw.get("dtype"))
    for name, arr in got.items():
        want = ref[name]
        assert arr.dtype == want.dtype and arr.shape == want.shape, name
        assert np.array_equal(bits(arr), bits(want)), name
    return len(got)


@pytest.mark.slow
def test_decode_corpus_bit_exact(emu: Path, tmp_path: Path) -> None:
    """Every width, chunk size and dtype of the corpus, every output itemsize (1..8 bytes)."""
    checked = sum(_check(emu, blob, _work(tmp_path), seed=i) for i, (_, blob, _) in enumerate(CORPUS))
    assert checked >= 30


@pytest.mark.slow
@pytest.mark.parametrize("stage_cap", [0, 256, 4096])
def test_decode_with_regions_too_big_to_stage(emu: Path, tmp_path: Path, stage_cap: int) -> None:
    """Small shared-memory budgets send most regions through crest_fill_regions + scatter."""
    checked = 0
    for _, blob, _ in CORPUS[::3]:
        checked += _check(emu, blob, _work(tmp_path), stage_cap=stage_cap)
    assert checked > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(["float16", "float32", "float64", "int8", "uint16", "bool"]),
    shape=st.lists(st.integers(1, 90), min_size=1, max_size=3).map(tuple),
    density=st.sampled_from([0.005, 0.1, 0.6]),
    index_bits=st.integers(1, 16),
    code_bits=st.integers(1, 8),
    chunk=st.sampled_from([32, 128, 1024, 4096]),
    stage_cap=st.sampled_from([0, 96, _xp.STAGE_CAP_BYTES]),
    seed=st.integers(0, 2**16),
)
def test_decode_property(
    emu: Path, tmp_path: Path, dtype: str, shape: tuple[int, ...], density: float, index_bits: int,
    code_bits: int, chunk: int, stage_cap: int, seed: int,
) -> None:
    x = sparse_array(np.random.default_rng(seed), shape, density, (1 << code_bits) - 1, dtype)
    blob = encode({"t": x}, index_bits=index_bits, code_bits=code_bits, chunk_entries=chunk)
    assume(_check(emu, blob, _work(tmp_path), stage_cap=stage_cap, seed=seed) == 1)


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_decode_fuzz_corpus_blobs(emu: Path, tmp_path: Path, name: str) -> None:
    assert _check(emu, BLOBS[name][0], _work(tmp_path)) > 0


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("chunk", [32, 1024, 4096])
def test_decode_layer_to_float16_and_float64(emu: Path, tmp_path: Path, chunk: int) -> None:
    """A layer-shaped tensor decoded straight to other dtypes (codebook converted on the host)."""
    rng = np.random.default_rng(chunk)
    w = weight(rng, 96, 700, 0.09, n_values=27)
    w[0, :4] = [1e-8, 7e4, -1e-30, 65504.0]  # underflow and overflow in float16: 31 values
    blob = encode({"w": w}, index_bits=4, code_bits=5, chunk_entries=chunk)
    for dtype in ("float16", "float64", None):
        assert _check(emu, blob, _work(tmp_path), dtype=dtype) == 1


def _spmv_emulated(exe: Path, blob: bytes, x: np.ndarray, work: Path) -> np.ndarray:
    """``y = W x`` by the emulated crest_spmv_f32, launched as ``matmul_device`` does."""
    (t,) = parse(blob)
    dt = _cuda.stored_form(t, np.array)
    assert dt.codebook_host is not None
    in_f = int(np.prod(t.shape[1:], dtype=np.int64))
    values = dt.codebook_host.astype(np.float32)
    xs = np.ascontiguousarray(x, dtype=np.float32)
    y = np.zeros((t.shape[0], xs.shape[1]), np.float32)
    _emulator.run(exe, [_cuda.spmv_launch(dt, values, xs, y, in_f, int(xs.shape[1]))], work)
    return y


@pytest.mark.parametrize(
    "shape,density,chunk,batch",
    [
        ((40, 30), 0.3, 32, 1),  # rows shorter than a warp's entries: the atomic path
        ((200, 40), 0.3, 1024, 2),  # several rows inside one thread's entries: flushes
        ((64, 300), 0.09, 256, 3),
        ((16, 5000), 0.09, 1024, 8),  # long rows: whole warps reduce inside one row
        ((50, 7, 3, 3), 0.2, 64, 16),  # conv weight viewed as [out, in * kh * kw]
        ((3, 100_000), 0.001, 32, 2),  # filler entries and rows without any entry
    ],
)
def test_fused_product_matches_reference(
    emu: Path, tmp_path: Path, shape: tuple[int, ...], density: float, chunk: int, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    w = weight(rng, shape[0], int(np.prod(shape[1:])), density).reshape(shape)
    blob = encode({"w": w}, index_bits=4, code_bits=5, chunk_entries=chunk)
    (t,) = parse(blob)
    x = rng.standard_normal((int(np.prod(shape[1:])), batch)).astype(np.float32)
    got = _spmv_emulated(emu, blob, x, _work(tmp_path))
    want = _xp.sparse_matmul_xp(t, x, np)
    dense = decode(blob)["w"].reshape(shape[0], -1).astype(np.float64)
    scale = np.abs(dense) @ np.abs(x.astype(np.float64)) + 1e-30  # bound of float32 rounding
    assert np.all(np.abs(got - want) <= 1e-5 * scale)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    out_f=st.integers(1, 60),
    in_f=st.integers(1, 400),
    density=st.sampled_from([0.01, 0.1, 0.5, 1.0]),
    chunk=st.sampled_from([32, 64, 256, 1024]),
    index_bits=st.integers(1, 8),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_fused_product_property(
    emu: Path, tmp_path: Path, out_f: int, in_f: int, density: float, chunk: int, index_bits: int, batch: int, seed: int
) -> None:
    """Random shapes, row lengths against warp and chunk sizes, gap widths and batches."""
    rng = np.random.default_rng(seed)
    w = weight(rng, out_f, in_f, density)
    blob = encode({"w": w}, index_bits=index_bits, code_bits=5, chunk_entries=chunk)
    (t,) = parse(blob)
    assume(t.encoding == "sparse" and bool(t.n_entries))  # else there is no kernel to run
    x = rng.standard_normal((in_f, batch)).astype(np.float32)
    got = _spmv_emulated(emu, blob, x, _work(tmp_path))
    want = _xp.sparse_matmul_xp(t, x, np)
    scale = np.abs(w.astype(np.float64)) @ np.abs(x.astype(np.float64)) + 1e-30
    assert np.all(np.abs(got - want) <= 1e-5 * scale)


def _short_y_product(exe: Path, work: Path, shape: tuple[int, int], chunk: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``W x`` launched with a ``y`` one row short of W's rows (the launch's row count is
    y's), as a corrupt table or gap stream would make entries land past the last row;
    returns (y, the reference product)."""
    rng = np.random.default_rng(batch)
    w = weight(rng, shape[0], shape[1], 0.3)
    (t,) = parse(encode({"w": w}, index_bits=4, code_bits=5, chunk_entries=chunk))
    dt = _cuda.stored_form(t, np.array)
    assert dt.codebook_host is not None
    x = rng.standard_normal((shape[1], batch)).astype(np.float32)
    y = np.zeros((shape[0] - 1, batch), np.float32)
    _emulator.run(exe, [_cuda.spmv_launch(dt, dt.codebook_host.astype(np.float32), x, y, shape[1], batch)], work)
    return y, _xp.sparse_matmul_xp(t, x, np)


@pytest.mark.parametrize(
    "shape,chunk,batch",
    [((200, 40), 1024, 2), ((40, 30), 32, 1), ((16, 5000), 1024, 8)],  # flushes, atomics, whole-warp rows
)
def test_fused_product_never_writes_past_y(emu: Path, tmp_path: Path, shape: tuple[int, int], chunk: int, batch: int) -> None:
    """Entries in a row beyond ``y`` are dropped (AddressSanitizer watches the byte after y);
    the rows inside y are the product's."""
    y, want = _short_y_product(emu, _work(tmp_path), shape, chunk, batch)
    assert np.allclose(y, want[:-1], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_emulator
def test_without_the_row_guard_the_product_writes_past_y(tmp_path: Path) -> None:
    """Not vacuous: the same launch on a kernel whose row check always passes is reported."""
    old = "    return row >= 0 && row < rows;"
    assert _SOURCE.count(old) == 1, "the row guard of kernels.cu changed: update this mutation"
    exe = _emulator.build(tmp_path / "build", _SOURCE.replace(old, "    return true;"))
    with pytest.raises(AssertionError, match="AddressSanitizer: heap-buffer-overflow"):
        _short_y_product(exe, _work(tmp_path), (200, 40), 1024, 2)


def test_spmv_launch_refuses_batches_above_sixteen() -> None:
    rng = np.random.default_rng(0)
    (t,) = parse(encode({"w": weight(rng, 4, 8, 0.5)}, chunk_entries=32))
    dt = _cuda.stored_form(t, np.array)
    with pytest.raises(ValueError, match="batch"):
        _cuda.spmv_launch(dt, dt.codebook, np.zeros((8, 17), np.float32), np.zeros((4, 17), np.float32), 8, 17)


def _float32_decode_launches(
    rng: np.random.Generator, out_f: int, in_f: int, density: float, chunk: int, table_dtype: Any
) -> list[_cuda.Launch]:
    """The launches decoding a random float32 weight into a uint32 output, with the
    codebook given as ``table_dtype`` bit patterns (float32: right; others: a bug)."""
    (t,) = parse(encode({"w": weight(rng, out_f, in_f, density)}, chunk_entries=chunk))
    dt = _cuda.stored_form(t, np.array)
    assert dt.bounds_host is not None and dt.codebook_host is not None
    plan = _xp.plan_regions(dt.bounds_host, 4, _xp.STAGE_CAP_BYTES)
    table = _cuda.codebook_bits(dt.codebook_host, table_dtype)
    return _cuda.decode_launches(dt, plan, table, np.zeros(t.numel, np.uint32), plan.big_starts, plan.big_ends)


def test_emulator_reports_shared_memory_overrun(emu: Path, tmp_path: Path) -> None:
    """Not vacuous: a decode launched with less shared memory than its staging needs is
    reported by AddressSanitizer (on a GPU it would corrupt or fault)."""
    (launch,) = _float32_decode_launches(np.random.default_rng(1), 64, 300, 0.09, 256, np.float32)
    short = _cuda.Launch(launch.kernel, launch.grid, launch.block, launch.args, launch.shared_mem - 64)
    with pytest.raises(AssertionError, match="AddressSanitizer"):
        _emulator.run(emu, [short], _work(tmp_path))


# Deliberately broken kernels: each must fail a check above, or the emulator proves nothing.
_SOURCE = _cuda.KERNEL_SOURCE.read_text()
_MUTANTS = {
    # the staged region is zeroed, then scattered into: without the barrier between them
    # threads scatter into parts of the region that others have not zeroed yet
    "barrier-after-zeroing": (
        "s4[i] = crest_zero_v4();\n        __syncthreads();",
        "s4[i] = crest_zero_v4();",
    ),
    # a warp spanning several rows must flush its sums at each row change
    "row-flush": ("if (dirty && !warp_one_row) {", "if (dirty && false) {"),
}


@pytest.mark.slow
@needs_emulator
@pytest.mark.parametrize("mutant", sorted(_MUTANTS))
def test_emulator_catches_broken_kernels(tmp_path: Path, mutant: str) -> None:
    old, new = _MUTANTS[mutant]
    assert _SOURCE.count(old) == 1, f"the mutation {mutant!r} no longer applies to kernels.cu"
    exe = _emulator.build(tmp_path / "build", _SOURCE.replace(old, new))
    failures = 0
    for i, (_, blob, _) in enumerate(CORPUS[:12]):
        try:
            _check(exe, blob, _work(tmp_path), seed=i)
        except AssertionError:
            failures += 1
    try:
        test_fused_product_matches_reference(exe, tmp_path, (200, 40), 0.3, 1024, 2)
    except AssertionError:
        failures += 1
    assert failures > 0


@needs_emulator
def test_asan_sees_a_thread_stack_overflow_after_barriers(tmp_path: Path) -> None:
    """A kernel thread reading past a local array after the block scan's barriers (each a
    fiber switch) is reported by AddressSanitizer alone: the switches keep the redzones
    around a suspended thread's locals."""
    old = "    bool dirty = false;\n"
    new = old + "    { volatile float* p = acc; if (batch == 2) acc[0] += p[CREST_MAX_BATCH + (int)(threadIdx.x & 1)]; }\n"
    assert _SOURCE.count(old) == 1, "the mutation no longer applies to kernels.cu"
    exe = _emulator.build(tmp_path / "build", _SOURCE.replace(old, new), ubsan=False)
    with pytest.raises(AssertionError, match="AddressSanitizer: stack-buffer-overflow"):
        test_fused_product_matches_reference(exe, tmp_path, (200, 40), 0.3, 1024, 2)


def test_emulator_refuses_an_array_of_the_wrong_element_size(emu: Path, tmp_path: Path) -> None:
    """A launcher that hands a kernel a codebook of another dtype than its output fails."""
    # 2-byte codebook patterns handed to the kernel that writes 4-byte elements
    launches = _float32_decode_launches(np.random.default_rng(2), 8, 64, 0.3, 32, np.float16)
    with pytest.raises(AssertionError, match="element size differs"):
        _emulator.run(emu, launches, _work(tmp_path))
