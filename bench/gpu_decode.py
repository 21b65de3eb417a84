"""GPU benchmark of crest decoding and the fused product, against the usual alternatives.

On an AlexNet-fc6-sized layer (weight [4096, 9216], 9% dense, 31 shared values, 4-bit
gaps, 5-bit codes; seeded, the tensors of bench/format.py) and on the whole AlexNet-sized
model, in one run, timed with CUDA events after hundreds of warm-up launches (medians):

- crest decode to dense fp32 and fp16, crest fused y = W x at batch 1 and 8;
- torch CSR ``to_dense()``, ``cupyx.scipy.sparse`` CSR ``toarray()``, a naive CuPy decode
  (cumsum of gaps + gather + scatter on pre-unpacked streams), cuSPARSE SpMV/SpMM
  (torch CSR @ x), dense GEMV fp32/fp16;
- the device's copy bandwidth and fill floor (cudaMemset and torch ``fill_`` of the
  output size).

crest's decode is first checked bit for bit against the NumPy reference (and the fused
product against NumPy) before anything is timed. Prints a markdown table and writes JSON
(device, CUDA/CuPy/torch versions, medians, ratios against the budgets of DESIGN.md).

Needs only numpy, cupy and torch. Run: ``python bench/gpu_decode.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crest.gpu import _cuda, decode, encode, gpu_unavailable_reason, parse  # noqa: E402

BUDGETS = {
    "decode_fp32_over_fill_floor_max": 1.3,
    "torch_csr_to_dense_over_decode_min": 10.0,
    "naive_over_decode_min": 4.0,
    "cusparse_spmv_over_fused_b1_min": 3.0,
    "dense_gemv_fp32_over_fused_b1_min": 3.0,
}


def _load_format_bench() -> Any:
    spec = importlib.util.spec_from_file_location("crest_bench_format", REPO / "bench" / "format.py")
    if spec is None or spec.loader is None:
        raise SystemExit("cannot load bench/format.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Timer:
    """Median milliseconds of a GPU callable, with CUDA events on the legacy default stream."""

    def __init__(self, cp: Any, warmup: int, iters: int) -> None:
        self.cp, self.warmup, self.iters = cp, warmup, iters

    def __call__(self, fn: Callable[[], Any]) -> dict[str, float]:
        cp = self.cp
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        once = time.perf_counter() - t0
        warmup = self.warmup if once < 2e-3 else max(10, min(self.warmup, int(0.5 / max(once, 1e-6))))
        for _ in range(warmup):
            fn()
        cp.cuda.Device().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        runs = []
        for _ in range(self.iters):
            start.record()
            fn()
            end.record()
            end.synchronize()
            runs.append(cp.cuda.get_elapsed_time(start, end))
        return {"median_ms": statistics.median(runs), "min_ms": min(runs), "warmup": warmup, "iters": self.iters}


def _environment(cp: Any, torch: Any) -> dict[str, Any]:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return {
        "device": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "cupy": cp.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _naive_inputs(cp: Any, t: Any) -> tuple[Any, Any, Any]:
    """Pre-unpacked gaps and codes on the device (the naive decoder gets them for free)."""
    from crest.gpu import _bits

    n = int(t.n_entries or 0)
    gaps = cp.asarray(_bits.unpack(t.index_stream, t.index_bits, n).astype(np.int32))
    codes = cp.asarray(_bits.unpack(t.code_stream, t.code_bits, n).astype(np.int32))
    cb = cp.asarray(np.ascontiguousarray(t.codebook).astype(t.dtype))
    return gaps, codes, cb


def _naive_decode(cp: Any, gaps: Any, codes: Any, cb: Any, numel: int) -> Any:
    pos = cp.cumsum(gaps + 1, dtype=cp.int64) - 1
    out = cp.zeros(numel, dtype=cb.dtype)
    out[pos] = cb[codes]
    return out


def _verify(cp: Any, blob: bytes, dts: dict[str, Any]) -> None:
    ref = decode(blob)
    for name, dt in dts.items():
        for dtype in (None, np.float16):
            got = cp.asnumpy(_cuda.decode_device(dt, dtype))
            want = ref[name] if dtype is None or ref[name].dtype.kind != "f" else ref[name].astype(dtype)
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                raise SystemExit(f"crest GPU decode of {name} ({dtype or 'stored dtype'}) is NOT bit-exact")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a markdown table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_decode.json")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args(argv)

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"bench/gpu_decode.py needs a CUDA device: {reason}. Nothing was measured.", file=sys.stderr)
        raise SystemExit(2)
    import cupy as cp
    import cupyx.scipy.sparse as cpsparse
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_decode.py needs torch with CUDA; this torch sees no device.", file=sys.stderr)
        raise SystemExit(2)

    fmt = _load_format_bench()
    t_enc = time.perf_counter()
    tensors, overrides = fmt.make_model()
    blob = encode(tensors, overrides=overrides)
    encoded = {t.name: t for t in parse(blob)}
    print(f"encoded the model in {time.perf_counter() - t_enc:.1f} s: {len(blob) / 1e6:.2f} MB", file=sys.stderr)
    dts = {name: _cuda.to_device(t) for name, t in encoded.items()}
    _verify(cp, blob, dts)
    timer = Timer(cp, args.warmup, args.iters)
    rows: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- fc6 layer
    name = "fc6.weight"
    t, dt = encoded[name], dts[name]
    w_np = tensors[name]
    out_f, in_f = w_np.shape
    w = torch.from_numpy(w_np).cuda()
    w16 = w.half()
    csr = w.to_sparse_csr()
    cpx_csr = cpsparse.csr_matrix(cp.asarray(w_np))
    gaps, codes, cb = _naive_inputs(cp, t)
    numel = t.numel
    rng = np.random.default_rng(0)
    x1_np = rng.standard_normal(in_f).astype(np.float32)
    x8_np = rng.standard_normal((in_f, 8)).astype(np.float32)
    x1, x8 = cp.asarray(x1_np), cp.asarray(x8_np)
    tx1, tx8 = torch.from_numpy(x1_np).cuda(), torch.from_numpy(x8_np).cuda()
    tx1h = tx1.half()
    for x_np, x in ((x1_np, x1), (x8_np, x8)):
        want = w_np.astype(np.float64) @ x_np.astype(np.float64)
        got = cp.asnumpy(_cuda.matmul_device(dt, x))
        if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
            raise SystemExit("crest fused product does not match NumPy")
    if not bool(cp.array_equal(_naive_decode(cp, gaps, codes, cb, numel), cp.asarray(w_np.reshape(-1)))):
        raise SystemExit("naive decode does not match")
    fill_buf = torch.empty(numel, dtype=torch.float32, device="cuda")
    copy_src = torch.empty_like(fill_buf)
    cp_buf = cp.empty(numel, dtype=cp.float32)
    nbytes = numel * 4

    def memset() -> None:
        cp.cuda.runtime.memsetAsync(cp_buf.data.ptr, 0, nbytes, cp.cuda.get_current_stream().ptr)

    fc6 = {
        "crest decode fp32": lambda: _cuda.decode_device(dt),
        "crest decode fp16": lambda: _cuda.decode_device(dt, np.float16),
        "crest fused y=Wx batch 1": lambda: _cuda.matmul_device(dt, x1),
        "crest fused y=Wx batch 8": lambda: _cuda.matmul_device(dt, x8),
        "fill floor: cudaMemset fp32 output": memset,
        "fill floor: torch fill_ fp32 output": lambda: fill_buf.fill_(0),
        "device copy of the fp32 output": lambda: fill_buf.copy_(copy_src),
        "torch CSR to_dense() fp32": lambda: csr.to_dense(),
        "cupyx CSR toarray() fp32": lambda: cpx_csr.toarray(),
        "naive CuPy decode (cumsum+gather+scatter)": lambda: _naive_decode(cp, gaps, codes, cb, numel),
        "cuSPARSE SpMV (torch CSR @ x) batch 1": lambda: csr @ tx1,
        "cuSPARSE SpMM (torch CSR @ x) batch 8": lambda: csr @ tx8,
        "dense GEMV fp32 batch 1": lambda: w @ tx1,
        "dense GEMV fp16 batch 1": lambda: w16 @ tx1h,
        "dense GEMM fp32 batch 8": lambda: w @ tx8,
    }
    for label, fn in fc6.items():
        rows[f"fc6: {label}"] = timer(fn)
        print(f"  fc6: {label}: {rows[f'fc6: {label}']['median_ms']:.4f} ms", file=sys.stderr)
    del csr, cpx_csr, fill_buf, copy_src, cp_buf

    # ---------------------------------------------------------------- whole model
    sparse = [n for n, d in dts.items() if d.encoding == "sparse"]
    model_bytes = sum(encoded[n].nbytes for n in dts)
    csrs = [torch.from_numpy(tensors[n].reshape(tensors[n].shape[0], -1)).cuda().to_sparse_csr() for n in sparse]
    naive = [(_naive_inputs(cp, encoded[n]), encoded[n].numel) for n in sparse]
    outs = [torch.empty(encoded[n].numel, dtype=torch.float32, device="cuda") for n in dts]

    def model_decode(dtype: Any = None) -> None:
        for d in dts.values():
            _cuda.decode_device(d, dtype)

    model = {
        "crest decode fp32": model_decode,
        "crest decode fp16": lambda: model_decode(np.float16),
        "fill floor: torch fill_ of every output": lambda: [o.fill_(0) for o in outs],
        "torch CSR to_dense() fp32": lambda: [c.to_dense() for c in csrs],
        "naive CuPy decode": lambda: [_naive_decode(cp, *inp, n) for inp, n in naive],
    }
    for label, fn in model.items():
        rows[f"model: {label}"] = timer(fn)
        print(f"  model: {label}: {rows[f'model: {label}']['median_ms']:.4f} ms", file=sys.stderr)

    def ms(key: str) -> float:
        return float(rows[key]["median_ms"])

    floor = min(ms("fc6: fill floor: cudaMemset fp32 output"), ms("fc6: fill floor: torch fill_ fp32 output"))
    dec = ms("fc6: crest decode fp32")
    fused = ms("fc6: crest fused y=Wx batch 1")
    ratios = {
        "decode_fp32_over_fill_floor": dec / floor,
        "decode_fp16_over_fill_floor_fp32": ms("fc6: crest decode fp16") / floor,
        "torch_csr_to_dense_over_decode": ms("fc6: torch CSR to_dense() fp32") / dec,
        "cupyx_toarray_over_decode": ms("fc6: cupyx CSR toarray() fp32") / dec,
        "naive_over_decode": ms("fc6: naive CuPy decode (cumsum+gather+scatter)") / dec,
        "cusparse_spmv_over_fused_b1": ms("fc6: cuSPARSE SpMV (torch CSR @ x) batch 1") / fused,
        "dense_gemv_fp32_over_fused_b1": ms("fc6: dense GEMV fp32 batch 1") / fused,
        "dense_gemv_fp16_over_fused_b1": ms("fc6: dense GEMV fp16 batch 1") / fused,
        "cusparse_spmm_over_fused_b8": ms("fc6: cuSPARSE SpMM (torch CSR @ x) batch 8") / ms("fc6: crest fused y=Wx batch 8"),
        "model_decode_over_fill_floor": ms("model: crest decode fp32") / ms("model: fill floor: torch fill_ of every output"),
        "model_torch_csr_over_decode": ms("model: torch CSR to_dense() fp32") / ms("model: crest decode fp32"),
        "model_naive_over_decode": ms("model: naive CuPy decode") / ms("model: crest decode fp32"),
    }
    budgets = {
        "decode within 1.3x of the fill floor": ratios["decode_fp32_over_fill_floor"] <= BUDGETS["decode_fp32_over_fill_floor_max"],
        ">=10x faster than torch CSR to_dense": ratios["torch_csr_to_dense_over_decode"] >= BUDGETS["torch_csr_to_dense_over_decode_min"],
        ">=4x faster than naive CuPy decode": ratios["naive_over_decode"] >= BUDGETS["naive_over_decode_min"],
        "fused batch 1 >=3x faster than cuSPARSE SpMV": ratios["cusparse_spmv_over_fused_b1"] >= BUDGETS["cusparse_spmv_over_fused_b1_min"],
        "fused batch 1 >=3x faster than dense GEMV fp32": ratios["dense_gemv_fp32_over_fused_b1"] >= BUDGETS["dense_gemv_fp32_over_fused_b1_min"],
    }
    fc6_plan = _cuda._plan(cp, dt, 4, _cuda._kernels(cp).stage_cap)[0]
    result = {
        "benchmark": "crest GPU decode and fused product (AlexNet fc6 and whole AlexNet-sized model)",
        "environment": _environment(cp, torch),
        "fc6": {
            "shape": [out_f, in_f],
            "density": float(np.count_nonzero(w_np) / numel),
            "n_entries": t.n_entries,
            "n_chunks": t.n_chunks,
            "chunk_entries": t.chunk_entries,
            "index_bits": t.index_bits,
            "code_bits": t.code_bits,
            "stored_bytes": sum(a.nbytes for a in (t.codebook, t.index_stream, t.code_stream, t.chunk_table)),
            "dense_fp32_bytes": nbytes,
            "stage_bytes": fc6_plan.stage_bytes,
            "chunks_not_staged": int(fc6_plan.big.shape[0]),
        },
        "model": {"tensors": len(dts), "sparse_tensors": len(sparse), "dense_fp32_bytes": model_bytes, "file_bytes": len(blob)},
        "bit_exact_verified": True,
        "timings_ms": rows,
        "ratios": ratios,
        "budgets": BUDGETS,
        "budgets_met": budgets,
        "notes": "fill floor = min(cudaMemset, torch fill_) of the 151 MB fp32 output; "
        "naive decode gets pre-unpacked int32 gaps and codes; medians of CUDA-event timings.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    env = result["environment"]
    print(f"crest GPU benchmark on {env['device']} (CUDA runtime {env['cuda_runtime']}, CuPy {env['cupy']}, "
          f"torch {env['torch']}), medians after warm-up\n")
    print("| operation | fc6 median ms | GB/s of dense fp32 output |")
    print("|---|---|---|")
    for key, row in rows.items():
        if key.startswith("fc6: "):
            print(f"| {key[5:]} | {row['median_ms']:.4f} | {nbytes / 1e6 / row['median_ms']:.0f} |")
    print("\n| whole model | median ms |")
    print("|---|---|")
    for key, row in rows.items():
        if key.startswith("model: "):
            print(f"| {key[7:]} | {row['median_ms']:.4f} |")
    print("\n| ratio | value |")
    print("|---|---|")
    for key, value in ratios.items():
        print(f"| {key} | {value:.2f} |")
    print("\n| budget | met |")
    print("|---|---|")
    for key, ok in budgets.items():
        print(f"| {key} | {'yes' if ok else 'NO'} |")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
