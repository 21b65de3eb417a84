"""Connecting to Ray: a local instance by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import nullcontext
from typing import Any

from crest._reaper import RayReaper, reap_dead_runs
from crest.exceptions import SweepError
from crest.orchestrator._ray_private import lean_local_start, lean_settings

__all__ = ["RayStart", "connect", "disconnect"]

logger = logging.getLogger(__name__)

_reaper: RayReaper | None = None  # the local Ray this process started, watched

_LOCAL_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def connect(address: str | None, *, cpus_needed: float, lean: bool = True, idle_workers: bool = True) -> bool:
    """Make sure this process is a Ray driver.

    Args:
        address: None starts a local Ray; "auto" or "host:port" joins a cluster.
        cpus_needed: CPUs the workers ask for; a local Ray gets at least this many.
        lean: a local Ray starts without the processes crest does not use (see
            :func:`crest.orchestrator._ray_private.lean_local_start`).
        idle_workers: a local Ray's raylet starts one idle Python worker per CPU when the
            driver connects, as ``ray.init`` has it; False (with ``lean``) starts none,
            for a driver that starts its own workers at once.

    Returns:
        True when this call started Ray (and :func:`disconnect` should stop it).

    Raises:
        SweepError: Ray cannot start or the cluster cannot be reached.
    """
    global _reaper
    if address is None:
        for key, value in _LOCAL_DEFAULTS.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    previous_term = signal.getsignal(signal.SIGTERM)
    if address is None:
        reap_dead_runs()  # what the local Rays of drivers killed on this host left behind
        _reaper = RayReaper()
        _reaper.start()  # before Ray starts, so that a driver killed during ray.init leaves nothing
    quiet = _NotMainThreadFilter()
    ray_worker_log = logging.getLogger("ray._private.worker")  # a filter applies where the record is made
    ray_worker_log.addFilter(quiet)
    try:
        if address is None:
            # "local" always starts a new instance, never joining a cluster that another
            # process left running on this machine (or one named by RAY_ADDRESS)
            _init_local(cpus_needed, lean=lean, idle_workers=idle_workers)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError...
        if _reaper is not None:
            _reaper.stop()
            _reaper = None
        where = "start a local Ray" if address is None else f"connect to the Ray cluster at {address}"
        raise SweepError(f"cannot {where}: {e}") from e
    finally:
        ray_worker_log.removeFilter(quiet)
    if _reaper is not None:
        _reaper.ray_started()
    logger.info("%s Ray: %s CPUs, %s GPUs", "started a local" if address is None else f"joined {address} with",
                ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))
    # Ray installs a SIGTERM handler that aborts the process; a caller's own handler
    # (the CLI's, which stops the sweep cleanly) must stay in charge
    if callable(previous_term) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous_term)
    return True


def _init_local(cpus_needed: float, *, lean: bool, idle_workers: bool = True) -> None:
    """``ray.init`` of a new local instance with at least ``cpus_needed`` CPUs (``lean``:
    see :func:`~crest.orchestrator._ray_private.lean_local_start` and
    :func:`~crest.orchestrator._ray_private.lean_settings`)."""
    import ray

    with lean_local_start() if lean else nullcontext(False) as leaned:
        ray.init(
            address="local",
            num_cpus=max(int(-(-cpus_needed // 1)), os.cpu_count() or 1),
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
            logging_level=logging.WARNING,
            _system_config=lean_settings(idle_workers=idle_workers) if leaned else None,
        )


def disconnect(started: bool) -> None:
    """Stop Ray if :func:`connect` started it."""
    if started:
        import ray

        global _reaper
        ray.shutdown()
        if _reaper is not None:
            _reaper.stop()
            _reaper = None
        logger.info("stopped the local Ray")


class _NotMainThreadFilter(logging.Filter):
    """Drops Ray's warning that it set no SIGTERM handler off the main thread: crest keeps
    its own handler in charge anyway (see :func:`connect`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


STOP_WAIT_S = 20.0  # how long RayStart.stop waits for a start still running


class RayStart:
    """:func:`connect` on a thread of its own, begun at construction, so that Ray's
    processes start while the driver imports its workload, opens its database and trains
    a local baseline (Ray's start is mostly waiting for its own processes).

    :meth:`result` waits for the start and re-raises its error; :meth:`stop` (for an
    exit stack) waits for it too, then stops a Ray the start began. A start cannot be
    cancelled: an error meanwhile waits for it to finish, then shuts it down.

    The thread lives until :meth:`stop`: Ray starts its processes with a parent-death
    signal (Linux ``PR_SET_PDEATHSIG``), which the kernel sends when the *thread* that
    started them ends, so a thread that returned would take Ray's GCS with it.
    """

    def __init__(self, address: str | None, *, cpus_needed: float, lean: bool = True, idle_workers: bool = True) -> None:
        self.address = address
        self._cpus_needed = cpus_needed
        self._lean = lean
        self._idle_workers = idle_workers
        self._started = False
        self._error: BaseException | None = None
        self._up = threading.Event()
        self._release = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()  # orders the start's end against stop() giving up on it
        self._finished = False
        self._abandoned = False  # stop() stopped waiting: the thread disconnects when its start ends
        self._began = time.monotonic()
        self.seconds = 0.0  # how long the start took
        self._thread = threading.Thread(target=self._run, name="crest-ray-start", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, config: Any, *, idle_workers: bool = True) -> RayStart:
        """The start a :class:`~crest.config.SweepConfig` asks for (its ``ray`` and
        ``workers``); ``idle_workers``: see :func:`connect`."""
        ray_opts = config.ray
        return cls(ray_opts.address, cpus_needed=config.workers * ray_opts.cpus_per_worker,
                   lean=ray_opts.local == "lean", idle_workers=idle_workers)

    def _run(self) -> None:
        try:
            self._started = connect(self.address, cpus_needed=self._cpus_needed, lean=self._lean,
                                    idle_workers=self._idle_workers)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread by result()
            self._error = e
        finally:
            self.seconds = time.monotonic() - self._began
            with self._lock:
                self._finished = True
                abandoned = self._abandoned
            self._up.set()
        if abandoned and self._error is None:  # stop() gave up on it: stop it here
            disconnect(self._started)
        self._release.wait()  # Ray's processes die with the thread that started them

    def result(self) -> bool:
        """Wait for the start; True when it started a local Ray.

        Raises:
            SweepError: Ray cannot start or the cluster cannot be reached.
        """
        self._up.wait()
        if self._error is not None:
            raise self._error
        return self._started

    def stop(self) -> None:
        """Wait for the start (at most :data:`STOP_WAIT_S`), then stop the Ray it started
        (if any); again, nothing.

        A start still running after that is left to its thread, which stops the Ray it
        started when the start ends (and Ray's processes end with this process: their
        parent-death signal, crest's watchdog). That happens when a Ctrl-C or
        SIGTERM lands in the middle of an import on the main thread while this thread
        imports Ray: Python can then leave a module's import lock held, and the start
        waits for it for ever."""
        if self._stopped:
            return
        self._stopped = True
        if not self._up.wait(timeout=STOP_WAIT_S):
            with self._lock:
                self._abandoned = not self._finished
            if self._abandoned:
                logger.warning("Ray's start had not finished %.0f s after the stop: left to end with this process",
                               STOP_WAIT_S)
                self._release.set()
                return
        try:
            if self._error is None:
                disconnect(self._started)
        finally:
            self._release.set()
            self._thread.join()
