"""A new study's baseline, trained in the driver on a thread while Ray starts.

:func:`trains_here` says when the driver trains it (instead of a worker), and
:func:`early_baseline` begins it before the driver's own imports (Optuna, SQLAlchemy) when
the study is certainly new (:func:`new_study_here`), so that its training overlaps them
too. This module imports torch only when a baseline is trained.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crest.exceptions import CrestError, SweepError

if TYPE_CHECKING:
    from crest.tasks import Workload

__all__ = ["LocalBaseline", "early_baseline", "new_study_here", "release_freed_memory", "starts_own_workers",
           "trains_here"]

logger = logging.getLogger(__name__)


class LocalBaseline:
    """Trains and encodes ``workload``'s dense baseline on the CPU, on a thread begun at
    construction, with ``threads`` torch intra-op threads (a worker's count, so that the
    baseline is the one a worker on this host would train).

    torch's thread count is process-wide: it is set for the training and put back after.
    The memory the training freed (the model, its gradients and Adam's moments) is given
    back to the operating system after it (glibc's ``malloc_trim``): the driver lives for
    the whole sweep, and glibc would otherwise keep it. ``bench/scale.py`` records the
    driver's peak and last RSS (22M-parameter model: 1,076 MB while the baseline trained,
    499 MB at the end of the sweep, ``bench/results/scale-driver-rss.json``).
    The thread is a daemon: a driver that fails meanwhile does not wait for it.
    """

    def __init__(self, workload: Workload, seed: int, *, threads: int) -> None:
        self.workload = workload
        self._seed, self._threads = seed, threads
        self._out: tuple[bytes, float] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()  # set when _out or _error is, before the memory is released
        self.seconds = 0.0  # how long the training took
        self._thread = threading.Thread(target=self._run, name="crest-baseline", daemon=True)
        self._thread.start()
        logger.info("training the baseline in the driver (%d thread(s)) while Ray starts", threads)

    def _run(self) -> None:
        import torch

        from crest.tasks import train_baseline

        began = time.monotonic()
        before = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            self._out = train_baseline(self.workload, seed=self._seed, device="cpu")
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread by result()
            self._error = e
        finally:
            torch.set_num_threads(before)
            self.seconds = time.monotonic() - began
            self._done.set()  # the driver goes on meanwhile
            release_freed_memory()

    def cpus_spare(self) -> int:
        """This host's CPUs that the training leaves free (its CPUs less its threads)."""
        return max(0, (os.cpu_count() or 1) - self._threads)

    def result(self) -> tuple[bytes, float]:
        """Wait for the baseline: (artifact bytes, score).

        Raises:
            CrestError: the workload's own error (a WorkloadError, ...).
            SweepError: any other failure of the training.
        """
        self._done.wait()
        if isinstance(self._error, CrestError):
            raise self._error
        if self._error is not None:
            raise SweepError(f"the baseline could not be trained: {type(self._error).__name__}: {self._error}") \
                from self._error
        if self._out is None:  # the thread ended without a result or an error: cannot happen, say so if it does
            raise SweepError("the baseline's training ended without a result")
        return self._out


def trains_here(config: Any) -> bool:
    """Whether a new study's baseline trains in the driver (on a thread, while Ray starts):
    when a worker would train it on this host's CPU anyway (no Ray address, no GPUs per
    worker, device ``auto`` or ``cpu``), with the worker's thread count, so that it is the
    same baseline. Otherwise (a cluster, GPU workers) a worker trains it.

    Args:
        config: the sweep (a ``crest.config.SweepConfig``).
    """
    return config.ray.address is None and not config.ray.gpus_per_worker and config.device in ("auto", "cpu")


def baseline_threads(config: Any) -> int:
    """torch threads of the baseline's training: a worker's (``ray.cpus_per_worker``)."""
    return max(1, int(config.ray.cpus_per_worker))


def _new_sqlite_file(url: str) -> bool:
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
    return config.storage is not None and trains_here(config) and _new_sqlite_file(config.storage)


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

    Raises:
        WorkloadError: the workload does not resolve (as it would in the driver).
    """
    if not new_study_here(config):
        return None
    from crest.tasks import get_workload

    workload = get_workload(config.workload, search_path=search_path)
    return LocalBaseline(workload, config.seed, threads=baseline_threads(config))


def release_freed_memory() -> bool:
    """Collect the young garbage, then have glibc give freed heap memory back to the
    operating system (``malloc_trim(0)``, every arena). Returns False where there is no glibc.

    A training's tensors are freed when their last reference goes. A full collection found
    nothing after the quick start's baseline and took 0.09-0.15 s holding the GIL (torch,
    Ray, Optuna and SQLAlchemy imported), while the driver's threads need it; so only the
    young generations are collected. A model held in a reference cycle that outlived them
    (a forward hook bound to the model, say) is freed by Python's next full collection,
    and its memory is not given back here."""
    gc.collect(1)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError) as e:  # not glibc (musl, macOS): nothing to trim
        logger.debug("malloc_trim is not available: %s", e)
        return False
    trim(0)
    return True
