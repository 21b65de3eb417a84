"""The decoder check every node passes before its workers take trials.

One task pinned to the node encodes seeded test tensors (and decodes a real artifact of
the study), decodes them with the node's GPU decoder (CuPy) when it has one, and compares
the result bit for bit with the NumPy reference. A node without a usable GPU is checked
on the NumPy path (round trip of the seeded tensors) and marked ``cpu``.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import numpy as np

from crest import gpu
from crest.gpu._probe import probe_cupy

__all__ = ["check_node", "seeded_test_tensors", "gpu_probe"]

logger = logging.getLogger(__name__)


def seeded_test_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Tensors that exercise every path of the decoder: dense, sparse, gaps far beyond
    ``2**index_bits`` (fillers), many chunks, float16 and float32, an empty tensor."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    codebook = rng.normal(size=31).astype(np.float32)
    w = np.where(rng.random((300, 257)) < 0.09, codebook[rng.integers(0, 31, (300, 257))], 0).astype(np.float32)
    out["sparse.fp32"] = w
    h = np.where(rng.random((64, 64)) < 0.3, rng.integers(1, 200, (64, 64)), 0).astype(np.float16)
    out["sparse.fp16"] = h
    far = np.zeros(200_003, np.float32)
    far[[0, 17, 40_000, 199_999]] = [1.5, -2.0, 3.25, 0.5]
    out["sparse.far_gaps"] = far
    out["dense.fp32"] = rng.normal(size=(33, 7)).astype(np.float32)
    out["empty"] = np.zeros((0, 5), np.float32)
    return out


def gpu_probe() -> dict[str, Any]:
    """What GPU this process sees through CuPy: name, CUDA and CuPy versions, or why none."""
    found = probe_cupy()
    cp = found.module
    info: dict[str, Any] = {"cupy_version": cp.__version__} if cp is not None else {}
    if found.reason is not None:
        return {**info, "available": False, "reason": found.reason}
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        version = cp.cuda.runtime.runtimeGetVersion()
    except Exception as e:  # a driver that broke after the probe
        logger.warning("CuPy sees a device but cannot describe it: %s", e)
        return {**info, "available": False, "reason": f"CuPy cannot use the device: {type(e).__name__}: {e}"}
    name = props["name"]
    return {
        **info,
        "available": True,
        "gpu_name": name.decode() if isinstance(name, bytes) else str(name),
        "cuda_version": f"{version // 1000}.{version % 1000 // 10}",
    }


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize not in (1, 2, 4, 8):
        return bool(np.array_equal(a, b))
    kind = f"u{a.dtype.itemsize}"
    return bool(np.array_equal(np.ascontiguousarray(a).view(kind), np.ascontiguousarray(b).view(kind)))


def check_node(artifacts: list[bytes], *, seed: int = 0, node_id: str | None = None) -> dict[str, Any]:
    """Run the decoder check here; returns the row for ``node_checks``.

    Args:
        artifacts: real artifacts of the study (decoded on both paths and compared).
        seed: seed of the synthetic test tensors.
        node_id: the Ray node id to report (the caller pins the task to it).

    Returns:
        {"node_id", "host", "mode" ("cuda" or "cpu"), "gpu_name", "cuda_version",
        "cupy_version", "passed", "reason", "seconds"}.
    """
    start = time.perf_counter()
    probe = gpu_probe()
    row: dict[str, Any] = {
        "node_id": node_id or "",
        "host": socket.gethostname(),
        "mode": "cuda" if probe["available"] else "cpu",
        "gpu_name": probe.get("gpu_name"),
        "cuda_version": probe.get("cuda_version"),
        "cupy_version": probe.get("cupy_version"),
        "passed": False,
        "reason": None if probe["available"] else probe.get("reason"),
    }
    try:
        tensors = seeded_test_tensors(seed)
        blobs = [gpu.encode(tensors, index_bits=4, code_bits=5, chunk_entries=256), *artifacts]
        reference = gpu.decode(blobs[0])
        for name, array in tensors.items():
            if not _same_bits(reference[name], array):
                raise RuntimeError(f"NumPy round trip of the test tensor '{name}' is not bit-exact")
        for index, blob in enumerate(blobs):
            expected = gpu.decode(blob)
            if probe["available"]:
                got = gpu.decode(blob, device="cuda")  # type: ignore[call-arg]
                for name, array in expected.items():
                    host = got[name].get() if hasattr(got[name], "get") else np.asarray(got[name])
                    if not _same_bits(host, array):
                        what = "test tensors" if index == 0 else f"artifact {gpu.sha256(blob)[:12]}"
                        raise RuntimeError(f"CuPy decode of {what}, tensor '{name}', differs from NumPy")
        row["passed"] = True
    except Exception as e:  # the check reports every failure as a failed row
        logger.debug("decoder check failed", exc_info=True)
        row["reason"] = f"{type(e).__name__}: {e}"[:1000]
    row["seconds"] = time.perf_counter() - start
    return row
