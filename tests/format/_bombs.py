"""Small inputs that declare huge outputs ("bombs"), and a cost meter for refusing them.

Builders return bytes a reader must refuse cheaply. :func:`cost` runs a snippet in a fresh
interpreter (so the peak RSS of earlier tests does not hide this one's) and reports the
wall time and the growth of the peak RSS around the refused call, with the error raised.
Only NumPy and crest.format are needed here, so tests/format stays importable without torch.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crest.format import _container, _huffman
from crest.format._bits import packed_nbytes
from crest.format._header import CHUNK_ROW_BYTES

REPO = Path(__file__).resolve().parents[2]
_files = itertools.count()

# generous bounds: "cheap to refuse" means far below what the bomb declares; seconds are
# the call's CPU time (time.process_time), which other load on the machine does not inflate
MAX_SECONDS = 2.0
MAX_RSS_GROWTH_MB = 200.0


def artifact(entries: list[tuple[dict[str, Any], list[tuple[str, object]]]], metadata: dict[str, Any]) -> bytes:
    """A crest file of header entries (``sections`` filled in here) and their sections."""
    header = {"format": "crest", "version": 1, "metadata": metadata, "tensors": [e for e, _ in entries]}
    return _container.build(header, [s for _, s in entries])


def empty_sparse(name: str, shape: tuple[int, ...], dtype: str = "float32") -> tuple[dict[str, Any], list[tuple[str, object]]]:
    """A sparse entry with no entries at all: a few bytes that decode to ``shape`` zeros."""
    entry = {"name": name, "dtype": dtype, "shape": list(shape), "encoding": "sparse", "index_bits": 5,
             "code_bits": 5, "n_entries": 0, "n_codes": 1, "chunk_entries": 1024}
    return entry, [("codebook", np.zeros(1, dtype)), ("index", b""), ("code", b""), ("chunks", b"")]


def huge_sparse_artifact(numel: int = 2**28, *, name: str = "fc1.weight", workload: str = "tiny-digits") -> bytes:
    """~600 bytes declaring a ``numel``-element float32 tensor (1 GiB at 2**28)."""
    return artifact([empty_sparse(name, (numel,))], {"workload": workload})


def huge_dense_artifact(numel: int = 2**28, *, name: str = "fc1.weight", workload: str = "tiny-digits") -> bytes:
    """A dense entry declaring ``numel`` float32 values over a 4-byte section (lengths re-stamped)."""
    blob = artifact([({"name": name, "dtype": "float32", "shape": [1], "encoding": "dense"},
                      [("data", np.zeros(1, np.float32))])], {"workload": workload})
    header = json.loads(_container.raw_header(blob))
    header["tensors"][0]["shape"] = [numel]
    return restamp(blob, header)


def restamp(blob: bytes, header: dict[str, Any]) -> bytes:
    """``blob`` with its header replaced by ``header`` (valid CRC and padding, same sections)."""
    old = _container.raw_header(blob)
    data = blob[_container.align(_container.PREFIX_BYTES + len(old)) :]
    return _container.head(json.dumps(header, separators=(",", ":")).encode()) + data


def many_tensors_header(count: int = 10**6) -> bytes:
    """The prefix and a header listing ``count`` one-byte dense tensors (no data area)."""
    entries = ",".join(
        '{"name":"t%d","dtype":"bool","shape":[],"encoding":"dense","sections":{"data":{"offset":%d,"length":1,"crc32":0}}}'
        % (i, 64 * i)
        for i in range(count)
    )
    text = '{"format":"crest","version":1,"metadata":{"workload":"tiny-digits"},"tensors":[' + entries + "]}"
    return _container.head(text.encode())


@dataclass(frozen=True)
class TransportBomb:
    """A transport file and the crest file length it declares."""

    data: bytes
    file_bytes: int


def constant_transport(n: int = 2**27, width: int = 16, *, digest: bytes = b"\x11" * 32) -> TransportBomb:
    """One sparse tensor of ``n`` entries whose two streams are constant (gap 0, code 1): a
    few hundred bytes that rebuild to a ``n * 2 * width / 8``-byte crest file (512 MiB by default)."""
    sections = [("codebook", 8), ("index", packed_nbytes(n, width)), ("code", packed_nbytes(n, width)),
                ("chunks", -(-n // 65536) * CHUNK_ROW_BYTES)]
    placed, pos = {}, 0
    for name, length in sections:
        offset = _container.align(pos)
        placed[name] = {"offset": offset, "length": length, "crc32": 0}
        pos = offset + length
    entry = {"name": "w", "dtype": "float32", "shape": [n], "encoding": "sparse", "index_bits": width,
             "code_bits": width, "n_entries": n, "n_codes": 2, "chunk_entries": 65536, "sections": placed}
    header = json.dumps({"format": "crest", "version": 1, "metadata": {}, "tensors": [entry]},
                        separators=(",", ":")).encode()
    file_bytes = _container.align(_container.PREFIX_BYTES + len(header)) + _container.align(pos)
    body = np.array([0, 1], np.float32).tobytes()
    body += bytes([_huffman.MODE_CONSTANT]) + struct.pack("<H", 0) + bytes([_huffman.MODE_CONSTANT]) + struct.pack("<H", 1)
    return TransportBomb(transport(header, body, file_bytes, digest), file_bytes)


def transport(header: bytes, body: bytes, file_bytes: int, digest: bytes, block_log2: int = 10) -> bytes:
    """A transport file of a header JSON and the records after it, with a valid CRC."""
    z = zlib.compress(header, 9)
    prefix = struct.pack("<8sII32sQIIB", _huffman.TRANSPORT_MAGIC, 1, 0, digest, file_bytes, len(header), len(z),
                         block_log2)
    out = bytearray(prefix + z + body)
    struct.pack_into("<I", out, 12, zlib.crc32(memoryview(out)[16:]))
    return bytes(out)


@dataclass(frozen=True)
class Cost:
    """What refusing a bomb cost in a fresh interpreter."""

    seconds: float  # CPU seconds of the call
    rss_growth_mb: float
    traced_peak_mb: float  # peak of Python and NumPy allocations (0 unless traced): counts
    # untouched pages too, which RSS does not (np.zeros of 1 GiB is not resident until written)
    error: str | None  # the exception's class name, None when the call returned
    message: str
    base_classes: list[str]

    def cheap(self) -> bool:
        """Within the generous bounds of :data:`MAX_SECONDS` and :data:`MAX_RSS_GROWTH_MB`."""
        memory = max(self.rss_growth_mb, self.traced_peak_mb)
        return self.seconds < MAX_SECONDS and memory < MAX_RSS_GROWTH_MB


_METER = """
import json, resource, sys, time, tracemalloc
{setup}
if {trace}:
    tracemalloc.start()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.process_time()
error, message, bases = None, "", []
try:
    {call}
except BaseException as exc:
    error, message, bases = type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__]
seconds = time.process_time() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
peak = tracemalloc.get_traced_memory()[1] / 2**20 if {trace} else 0.0
print(json.dumps({{"seconds": seconds, "rss_growth_mb": grown, "traced_peak_mb": peak, "error": error,
                  "message": message, "bases": bases}}))
"""


def cost(setup: str, call: str, *, data: bytes, tmp_path: Path, trace: bool = False, timeout: float = 300) -> Cost:
    """Run ``call`` (one statement) after ``setup`` in a fresh interpreter, with the bytes
    ``data`` readable there as ``DATA``; measure only the call (with ``trace``, also the
    peak of what it allocates through Python and NumPy, resident or not)."""
    path = tmp_path / f"bomb-{next(_files)}.bin"
    path.write_bytes(data)
    setup = f"DATA = open({str(path)!r}, 'rb').read()\n" + textwrap.dedent(setup)
    script = _METER.format(setup=setup, call=call, trace=bool(trace))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise AssertionError(f"the meter died (rc {proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Cost(out["seconds"], out["rss_growth_mb"], out["traced_peak_mb"], out["error"], out["message"], out["bases"])
