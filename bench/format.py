"""Benchmark of the crest format on AlexNet-sized tensors (61M weights), CPU / NumPy.

fc layers: 9% dense, 31 distinct nonzero values, 5-bit codes, 4-bit gaps. conv layers:
35% dense, 255 values, 8-bit codes, 8-bit gaps. Biases dense fp32. Seeded random data.

Measures encode / decode / parse time (median of repeats), throughput in MB/s of dense
fp32 input and of file bytes, the file size against dense fp32, and the bit-packed payload
floor (entries incl. fillers x (index_bits + code_bits) bits) for fc6 and for the model.

Run: ``python bench/format.py [--repeats N] [--out bench/results/format.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crest.format import decode, encode, inspect, parse  # noqa: E402

LAYERS: list[tuple[str, tuple[int, ...], str]] = [
    ("conv1", (96, 3, 11, 11), "conv"),
    ("conv2", (256, 48, 5, 5), "conv"),
    ("conv3", (384, 256, 3, 3), "conv"),
    ("conv4", (384, 192, 3, 3), "conv"),
    ("conv5", (256, 192, 3, 3), "conv"),
    ("fc6", (4096, 9216), "fc"),
    ("fc7", (4096, 4096), "fc"),
    ("fc8", (1000, 4096), "fc"),
]
SETTINGS = {
    "fc": {"density": 0.09, "n_values": 31, "index_bits": 4, "code_bits": 5},
    "conv": {"density": 0.35, "n_values": 255, "index_bits": 8, "code_bits": 8},
}
MB = 1e6


def make_model(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """AlexNet-shaped tensors and the per-tensor overrides; float32."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for name, shape, kind in LAYERS:
        s = SETTINGS[kind]
        n = int(np.prod(shape))
        codebook = np.unique(rng.standard_normal(4 * s["n_values"]).astype(np.float32))
        codebook = rng.permutation(codebook[codebook != 0])[: s["n_values"]]
        w = np.zeros(n, np.float32)
        nz = rng.random(n) < s["density"]
        w[nz] = codebook[rng.integers(0, codebook.shape[0], int(nz.sum()))]
        tensors[f"{name}.weight"] = w.reshape(shape)
        overrides[f"{name}.weight"] = {"index_bits": s["index_bits"], "code_bits": s["code_bits"]}
        tensors[f"{name}.bias"] = rng.standard_normal(shape[0]).astype(np.float32)
        overrides[f"{name}.bias"] = {"encoding": "dense"}
    return tensors, overrides


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """Median seconds over ``repeats`` runs (after one warm-up), all runs, last result."""
    result = fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, result


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "format.json")
    args = parser.parse_args(argv)

    tensors, overrides = make_model()
    dense_bytes = sum(t.nbytes for t in tensors.values())
    n_weights = sum(t.size for t in tensors.values())

    enc_s, enc_runs, blob = timed(lambda: encode(tensors, overrides=overrides), args.repeats)
    dec_s, dec_runs, out = timed(lambda: decode(blob), args.repeats)
    parse_s, parse_runs, encoded = timed(lambda: parse(blob), args.repeats)
    for name, t in tensors.items():
        if not np.array_equal(out[name].view(np.uint32), t.view(np.uint32)):
            raise SystemExit(f"round trip failed for {name}")

    info = inspect(blob)
    per_tensor = {e["name"]: e for e in info["tensors"]}
    floor_bits = 0
    fc6 = {}
    layers = []
    for t in encoded:
        entry = per_tensor[t.name]
        if t.encoding == "sparse":
            bits = (t.n_entries or 0) * ((t.index_bits or 0) + (t.code_bits or 0))
            floor_bits += bits
        else:
            bits = 0
        row = {
            "name": t.name,
            "shape": list(t.shape),
            "encoding": t.encoding,
            "index_bits": t.index_bits,
            "code_bits": t.code_bits,
            "nonzeros": int(np.count_nonzero(tensors[t.name])),
            "n_entries": t.n_entries,
            "n_chunks": t.n_chunks,
            "dense_bytes": entry["dense_bytes"],
            "stored_bytes": entry["stored_bytes"],
            "payload_floor_bytes": bits / 8,
        }
        layers.append(row)
        if t.name == "fc6.weight":
            fc6 = {
                **row,
                "ratio_vs_dense_fp32": row["dense_bytes"] / row["stored_bytes"],
                "stored_over_floor": row["stored_bytes"] / (bits / 8),
            }
    dense_section_bytes = sum(r["stored_bytes"] for r in layers if r["encoding"] == "dense")
    floor_bytes = floor_bits / 8
    result = {
        "benchmark": "crest format, AlexNet-sized (NumPy reference encoder/decoder, CPU)",
        "machine": machine(),
        "repeats": args.repeats,
        "model": {
            "weights": n_weights,
            "dense_fp32_bytes": dense_bytes,
            "file_bytes": len(blob),
            "ratio_vs_dense_fp32": dense_bytes / len(blob),
            "payload_floor_bytes_sparse": floor_bytes,
            "dense_sections_bytes": dense_section_bytes,
            "file_over_floor": len(blob) / (floor_bytes + dense_section_bytes),
        },
        "fc6": fc6,
        "encode": {
            "seconds_median": enc_s,
            "seconds_runs": enc_runs,
            "dense_MB_per_s": dense_bytes / MB / enc_s,
            "file_MB_per_s": len(blob) / MB / enc_s,
        },
        "decode": {
            "seconds_median": dec_s,
            "seconds_runs": dec_runs,
            "dense_MB_per_s": dense_bytes / MB / dec_s,
            "file_MB_per_s": len(blob) / MB / dec_s,
        },
        "parse_validate": {
            "seconds_median": parse_s,
            "seconds_runs": parse_runs,
            "file_MB_per_s": len(blob) / MB / parse_s,
        },
        "layers": layers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    m = result["model"]
    print(f"crest format, AlexNet-sized ({n_weights / 1e6:.1f}M weights), "
          f"{result['machine']['processor']}, {result['machine']['cpu_count']} CPUs, "
          f"numpy {np.__version__}, median of {args.repeats}\n")
    print("| quantity | whole model | fc6 only |")
    print("|---|---|---|")
    print(f"| dense fp32 | {dense_bytes / MB:.1f} MB | {fc6['dense_bytes'] / MB:.1f} MB |")
    print(f"| crest bytes | {len(blob) / MB:.2f} MB | {fc6['stored_bytes'] / MB:.2f} MB |")
    print(f"| ratio vs dense fp32 | {m['ratio_vs_dense_fp32']:.1f}x | {fc6['ratio_vs_dense_fp32']:.1f}x |")
    print(f"| payload floor (entries x bits) | {floor_bytes / MB:.2f} MB (+{dense_section_bytes / 1e3:.1f} kB dense biases) "
          f"| {fc6['payload_floor_bytes'] / MB:.2f} MB |")
    print(f"| stored / floor | {m['file_over_floor']:.4f} | {fc6['stored_over_floor']:.4f} |")
    print("\n| operation | median s | MB/s of dense fp32 | MB/s of file |")
    print("|---|---|---|---|")
    for op in ("encode", "decode"):
        r = result[op]
        print(f"| {op} | {r['seconds_median']:.3f} | {r['dense_MB_per_s']:.0f} | {r['file_MB_per_s']:.0f} |")
    r = result["parse_validate"]
    print(f"| parse (full validation) | {r['seconds_median']:.3f} | - | {r['file_MB_per_s']:.0f} |")
    return result


if __name__ == "__main__":
    main()
