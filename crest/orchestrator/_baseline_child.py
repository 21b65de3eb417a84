"""The process that trains a new local study's baseline: ``python -m
crest.orchestrator._baseline_child``, begun by :class:`~crest.orchestrator._baseline.LocalBaseline`.

It reads one JSON line on stdin (``workload``, ``search_path``, ``seed``, ``threads``),
then writes frames on its stdout: the model's summary (``S``) as soon as the model is
built, then the baseline (``B``), or an error (``E``) instead. A frame is its kind (one
byte), its length (8 bytes, big-endian) and that many bytes. The workload's own output
goes to stderr. It exits when its stdin closes (the driver is gone, or done with it), so
that a driver killed with ``kill -9`` leaves no training behind.

Importing this module imports no torch: the driver reads frames with :func:`read_frame`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import sys
import threading
import time
import traceback
from typing import IO, Any

__all__ = ["BASELINE", "ERROR", "MAX_ERROR_BYTES", "MAX_REQUEST_BYTES", "SUMMARY", "main", "read_frame",
           "write_frame"]

logger = logging.getLogger(__name__)

SUMMARY, BASELINE, ERROR = b"S", b"B", b"E"
BASELINE_HEAD = struct.Struct(">dd")  # the score, the training's seconds; then the artifact's bytes
MAX_REQUEST_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10
_FRAME = struct.Struct(">cQ")


def write_frame(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    """Write one frame and flush it."""
    out.write(_FRAME.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def read_frame(src: IO[bytes], limits: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """One frame from ``src``: (kind, payload), or None at a clean end (no byte left).

    Args:
        limits: each kind expected -> the most bytes its payload may have.

    Raises:
        ValueError: a kind not in ``limits``, a length over its limit, or an end within
            a frame. Nothing is allocated beyond the limit of the kind read.
    """
    head = _read_exactly(src, _FRAME.size, allow_empty=True)
    if not head:
        return None
    kind, length = _FRAME.unpack(head)
    if kind not in limits:
        raise ValueError(f"unexpected frame kind {kind!r}")
    if length > limits[kind]:
        raise ValueError(f"a {kind.decode()} frame of {length} bytes, over its limit of {limits[kind]}")
    return kind, _read_exactly(src, length, allow_empty=False)


def _read_exactly(src: IO[bytes], n: int, *, allow_empty: bool) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        part = src.read(min(left, 1 << 20))
        if not part:
            if allow_empty and left == n:
                return b""
            raise ValueError(f"the stream ended {left} bytes before the frame's end")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_request() -> dict[str, Any]:
    """The request: one JSON line on stdin, read from the descriptor itself (a buffered
    reader would hold its lock in the watcher thread at the interpreter's end)."""
    data = b""
    while b"\n" not in data:
        part = os.read(0, 65536)
        if not part or len(data) + len(part) > MAX_REQUEST_BYTES:
            raise ValueError("no request line on stdin")
        data += part
    request: dict[str, Any] = json.loads(data.partition(b"\n")[0])
    return request


def _exit_when_closed() -> None:
    """Read stdin until it closes (nothing more is sent), then end the process at once."""
    while os.read(0, 4096):
        pass
    os._exit(0)


def _error(e: BaseException) -> bytes:
    """The E frame's payload: the exception's class name, message and traceback (each cut
    to fit :data:`MAX_ERROR_BYTES`), and whether it is one of crest's."""
    from crest.exceptions import CrestError

    trace = "".join(traceback.format_exception(e))[-(MAX_ERROR_BYTES // 4):]
    doc = {"type": type(e).__name__[:200], "message": str(e)[:4000], "crest": isinstance(e, CrestError),
           "traceback": trace}
    return json.dumps(doc).encode()


def _train(request: dict[str, Any], out: IO[bytes]) -> None:
    import torch

    from crest.tasks import get_workload, train_baseline
    from crest.tasks._model_summary import ModelSummary

    torch.set_num_threads(max(1, int(request["threads"])))
    workload = get_workload(str(request["workload"]), search_path=[str(p) for p in request["search_path"]])
    began = time.monotonic()
    blob, accuracy = train_baseline(
        workload, seed=int(request["seed"]), device="cpu",
        on_model=lambda model: write_frame(out, SUMMARY, ModelSummary.of(model).to_json()),
    )
    write_frame(out, BASELINE, BASELINE_HEAD.pack(accuracy, time.monotonic() - began) + blob)


def main() -> int:
    """Run the child (see the module's docstring); returns its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the driver, which ends this process
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the workload's prints go to stderr, never into the frames
    try:
        request = _read_request()
    except ValueError as e:
        write_frame(out, ERROR, _error(e))
        return 2
    level = request.get("log_level", logging.WARNING)
    logging.basicConfig(level=level if isinstance(level, int) else logging.WARNING,
                        format="crest (baseline): %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_when_closed, name="crest-stdin", daemon=True).start()
    try:
        _train(request, out)
    except BrokenPipeError:  # the driver is gone
        return 1
    except Exception as e:  # noqa: BLE001 -- sent to the driver, which raises it and logs the traceback
        try:
            write_frame(out, ERROR, _error(e))
        except BrokenPipeError:
            logger.debug("the driver is gone: the error is not sent")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # no interpreter shutdown: the stdin watcher may still be reading, torch need not unload
