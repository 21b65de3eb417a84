"""A new study's baseline, trained on this host in a process of its own while Ray starts.

:func:`trains_here` says when it trains on this host (instead of in a worker), and
:func:`early_baseline` begins it before the driver's own imports (Optuna, SQLAlchemy)
when the study is certainly new (:func:`new_study_here`). The process
(:mod:`~crest.orchestrator._baseline_child`) imports torch and the workload, sends the
model's summary as soon as the model is built, trains, and sends the baseline: a new
local study's driver never imports torch, and the training shares neither the driver's
GIL nor its memory. This module imports no torch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from crest import exceptions
from crest.exceptions import CrestError, SweepError
from crest.orchestrator._baseline_child import (
    BASELINE,
    BASELINE_HEAD,
    ERROR,
    MAX_ERROR_BYTES,
    SUMMARY,
    read_frame,
)
from crest.tasks._model_summary import MAX_SUMMARY_BYTES, ModelSummary

__all__ = ["LocalBaseline", "early_baseline", "new_sqlite_file", "new_study_here", "starts_own_workers",
           "trains_here"]

logger = logging.getLogger(__name__)

CHILD_MODULE = "crest.orchestrator._baseline_child"
_BLOB_SLACK = 64 << 20  # the artifact's header and tables beyond its tensors' bytes
_EXIT_GRACE_S = 5.0  # how long a child that sent its baseline may take to end


_BOOT = ("import json, runpy, sys; sys.path.extend(p for p in json.loads(sys.argv[1]) if p not in sys.path); "
         f"runpy.run_module({CHILD_MODULE!r}, run_name='__main__', alter_sys=True)")


def child_command() -> list[str]:
    """The baseline process's command line: this interpreter, without the working directory
    on its path (``-P``: a ``torch.py`` there must not shadow torch), with the driver's
    path after its own (the standard library and site-packages first; then what the
    driver added, and the directory crest was imported from, so that it runs this crest),
    running :data:`CHILD_MODULE`."""
    import crest

    cwd = os.getcwd()
    extra = [p for p in sys.path if p and os.path.abspath(p) != cwd]
    extra.append(str(Path(crest.__file__).resolve().parent.parent))
    return [sys.executable, "-P", "-c", _BOOT, json.dumps(list(dict.fromkeys(extra)))]


class LocalBaseline:
    """Trains and encodes a workload's dense baseline on this host's CPU, in a child
    process begun at construction, with ``threads`` torch intra-op threads (a worker's
    count, so that the baseline is the one a worker on this host would train).

    The child ends when the baseline is sent, when :meth:`stop` is called, or when this
    process ends (its stdin closes, even after ``kill -9``). It runs in a session of its
    own: Ctrl-C reaches the driver, which stops it (the whole process group: what the
    workload forked goes too), and no terminal stops it for writing. Its memory (the
    model, its gradients, Adam's moments) goes back to the system with it.

    Args:
        workload: a built-in name or ``module:function`` (resolved in the child).
        seed: the baseline's seed.
        threads: torch intra-op threads of the training.
        search_path: directories for importing a ``module:function`` workload.
        command: the child's command line (default :func:`child_command`; tests pass
            another to play a broken child).

    Raises:
        SweepError: the child process cannot be started.
    """

    def __init__(self, workload: str, seed: int, *, threads: int, search_path: Sequence[str] = (),
                 command: Sequence[str] | None = None) -> None:
        self.workload = workload
        self._threads = threads
        self._summary: ModelSummary | None = None
        self._out: tuple[bytes, float] | None = None
        self._error: BaseException | None = None
        self._have_summary = threading.Event()  # set with the summary, or with the error
        self._done = threading.Event()  # set with the baseline, or with the error
        self.seconds = 0.0  # how long the training took, in the child
        request = {"workload": workload, "search_path": [str(p) for p in search_path], "seed": seed,
                   "threads": threads, "log_level": logging.getLogger("crest").getEffectiveLevel()}
        try:
            self._proc = subprocess.Popen(list(command or child_command()), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise SweepError(f"the baseline's process could not be started: {e}") from e
        try:
            stdin, stdout = self._proc.stdin, self._proc.stdout
            if stdin is None or stdout is None:  # (cannot happen: both are pipes)
                raise SweepError("the baseline's process has no pipes")
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
            self._reader = threading.Thread(target=self._read, args=(stdout,), name="crest-baseline", daemon=True)
            self._reader.start()
            threading.Thread(target=self._watch_exit, name="crest-baseline-exit", daemon=True).start()
        except BaseException as e:  # the child has no owner yet: end it, then raise
            self._kill()
            if isinstance(e, OSError):
                raise SweepError(f"the baseline's process could not be started: {e}") from e
            raise
        logger.info("training the baseline in a process of its own (pid %d, %d thread(s)) while Ray starts",
                    self._proc.pid, threads)

    def _read(self, src: Any) -> None:
        """Read the child's frames (on a thread) until the baseline, an error or the end.
        A reply that breaks the protocol ends the child."""
        try:
            self._read_frames(src)
        except Exception as e:  # any broken reply (a short frame, JSON too deep, ...): fail, never hang
            logger.debug("the baseline's process broke the protocol", exc_info=True)
            self._fail(SweepError(f"the baseline's process sent a broken reply: {type(e).__name__}: {e}"))
            self._kill()
        finally:
            src.close()
            if not self._done.is_set():  # its stdout closed before the baseline: it is ending
                self._fail(SweepError(f"the baseline's process ended (exit code {self._reap()}) before sending it"))

    def _watch_exit(self) -> None:
        """Fail the baseline if the child ends without it while its stdout stays open (a
        process it forked holds the pipe): the reader would wait for ever."""
        code = self._proc.wait()
        if not self._done.wait(timeout=_EXIT_GRACE_S):
            self._fail(SweepError(f"the baseline's process ended (exit code {code}) before sending it"))
            self._kill_group()  # what it forked holds its pipe, so its group (the child's pid) still exists

    def _read_frames(self, src: Any) -> None:
        limits = {SUMMARY: MAX_SUMMARY_BYTES, ERROR: MAX_ERROR_BYTES}
        while (frame := read_frame(src, limits)) is not None:
            kind, payload = frame
            if kind == SUMMARY and self._summary is None:
                self._summary = ModelSummary.from_json(payload)
                limits = {BASELINE: BASELINE_HEAD.size + self._summary.state_bytes + _BLOB_SLACK,
                          ERROR: MAX_ERROR_BYTES}
                self._have_summary.set()
            elif kind == BASELINE:
                accuracy, self.seconds = BASELINE_HEAD.unpack_from(payload)
                self._out = (payload[BASELINE_HEAD.size:], accuracy)
                self._done.set()
                return
            else:
                error, trace = _child_error(payload)
                if trace:
                    logger.debug("the baseline's process failed:\n%s", trace)
                self._fail(error)
                return

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._done.is_set():
            self._error = error
        self._have_summary.set()
        self._done.set()

    def cpus_spare(self) -> int:
        """This host's CPUs that the training leaves free (its CPUs less its threads)."""
        return max(0, (os.cpu_count() or 1) - self._threads)

    def summary(self) -> ModelSummary:
        """Wait for the model's summary (sent before the training starts).

        Raises:
            as :meth:`result`.
        """
        self._have_summary.wait()
        if self._summary is None:
            self._raise()
        return self._summary

    def result(self) -> tuple[bytes, float]:
        """Wait for the baseline: (artifact bytes, score).

        Raises:
            CrestError: the workload's own error (a WorkloadError, ...).
            SweepError: any other failure of the training or of its process.
        """
        self._done.wait()
        if self._out is None:
            self._raise()
        self.stop()
        return self._out

    def _raise(self) -> NoReturn:
        if self._error is None:  # cannot happen: an event is set with a result or an error
            raise SweepError("the baseline's training ended without a result")
        raise self._error

    def stop(self) -> None:
        """End the child (at once, unless it sent its baseline and is ending) and reap it.
        Idempotent."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()  # the child ends when its stdin closes
            except OSError as e:
                logger.debug("closing the baseline's stdin: %s", e)
        if self._out is None:
            self._kill()
        else:
            self._reap()

    def _kill(self) -> None:
        """Kill the child's process group (the child and what it forked) and reap the child.
        Once the child is reaped its pid, the group's id, may be reused: then nothing is sent."""
        if self._proc.returncode is None:
            self._kill_group()
        self._proc.wait()

    def _kill_group(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as e:  # all gone already
            logger.debug("the baseline's process group: %s", e)

    def _reap(self) -> int:
        """Wait for the child's end (killing it after :data:`_EXIT_GRACE_S`); its exit code."""
        try:
            return self._proc.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self._kill()
            return self._proc.returncode


def _child_error(payload: bytes) -> tuple[BaseException, str]:
    """The exception the child reported (crest's own class: a WorkloadError stays one;
    else a SweepError naming the cause) and its traceback's text. Only crest's exception
    classes are looked up."""
    try:
        doc = json.loads(payload)
        name, message, ours = str(doc["type"]), str(doc["message"]), bool(doc["crest"])
        trace = str(doc.get("traceback", ""))
    except (ValueError, KeyError, TypeError, RecursionError, AttributeError) as e:
        return SweepError(f"the baseline's process sent a broken error: {e}"), ""
    cls = getattr(exceptions, name, None) if ours else None
    if isinstance(cls, type) and issubclass(cls, CrestError):
        return cls(message), trace
    return SweepError(f"the baseline could not be trained: {name}: {message}"), trace


def trains_here(config: Any) -> bool:
    """Whether a new study's baseline trains on this host, in a process of its own, while
    Ray starts (:class:`LocalBaseline`): when a worker would train it on this host's CPU
    anyway (no Ray address, no GPUs per worker, device ``auto`` or ``cpu``), with the
    worker's thread count, so that it is the same baseline. Otherwise (a cluster, GPU
    workers) a worker trains it.

    Args:
        config: the sweep (a ``crest.config.SweepConfig``).
    """
    return config.ray.address is None and not config.ray.gpus_per_worker and config.device in ("auto", "cpu")


def baseline_threads(config: Any) -> int:
    """torch threads of the baseline's training: a worker's (``ray.cpus_per_worker``)."""
    return max(1, int(config.ray.cpus_per_worker))


def new_sqlite_file(url: str) -> bool:
    """True when ``url`` names a SQLite file that does not exist yet (so no study is
    stored there), read from the URL's text without importing SQLAlchemy; False for
    anything else (another database, a URI filename, memory, a query string)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return False
    path = url[len(prefix):]
    if not path or path == ":memory:" or path.startswith("file:"):
        return False
    return not Path(path).exists()


def new_study_here(config: Any) -> bool:
    """Whether the study is certainly new (its database is a SQLite file that does not exist
    yet) and its baseline :func:`trains_here`: read from the config and the file system
    alone, without importing torch, so that the CLI can ask it before Ray's start."""
    return config.storage is not None and trains_here(config) and new_sqlite_file(config.storage)


def starts_own_workers(config: Any) -> bool:
    """Whether the driver of this sweep starts its first workers as soon as Ray answers and
    has no use for Ray's idle ones: a study certainly new (:func:`new_study_here`) whose
    node's decoder check runs in the driver (CuPy is not installed; where it is, the check
    is a Ray task, which an idle worker takes at once)."""
    import importlib.util

    return new_study_here(config) and importlib.util.find_spec("cupy") is None


def early_baseline(config: Any, search_path: list[str]) -> LocalBaseline | None:
    """The baseline's training begun now, before the driver imports Optuna and SQLAlchemy,
    when it :func:`trains_here` and the study is certainly new: its database is a SQLite
    file that does not exist yet. Otherwise None, and the driver decides after reading
    the database (it does not use this one if the study has a baseline by then).

    Args:
        config: the validated sweep (a ``crest.config.SweepConfig``).
        search_path: directories for importing a ``module:function`` workload.

    A workload that does not resolve is reported by the child, and raised (a
    WorkloadError) by :meth:`LocalBaseline.summary`, before anything is written.
    """
    if not new_study_here(config):
        return None
    return LocalBaseline(config.workload, config.seed, threads=baseline_threads(config), search_path=search_path)
