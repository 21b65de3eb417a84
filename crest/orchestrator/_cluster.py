"""Connecting to Ray: a local instance by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
import signal
import threading

from crest._reaper import RayReaper, reap_dead_runs
from crest.exceptions import SweepError

__all__ = ["connect", "disconnect"]

logger = logging.getLogger(__name__)

_reaper: RayReaper | None = None  # the local Ray this process started, watched

_LOCAL_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def connect(address: str | None, *, cpus_needed: float) -> bool:
    """Make sure this process is a Ray driver.

    Args:
        address: None starts a local Ray; "auto" or "host:port" joins a cluster.
        cpus_needed: CPUs the workers ask for; a local Ray gets at least this many.

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
    try:
        if address is None:
            # "local" always starts a new instance, never joining a cluster that another
            # process left running on this machine (or one named by RAY_ADDRESS)
            ray.init(
                address="local",
                num_cpus=max(int(-(-cpus_needed // 1)), os.cpu_count() or 1),
                include_dashboard=False,
                object_store_memory=256 * 1024 * 1024,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError...
        if _reaper is not None:
            _reaper.stop()
            _reaper = None
        where = "start a local Ray" if address is None else f"connect to the Ray cluster at {address}"
        raise SweepError(f"cannot {where}: {e}") from e
    if _reaper is not None:
        _reaper.ray_started()
    logger.info("%s Ray: %s CPUs, %s GPUs", "started a local" if address is None else f"joined {address} with",
                ray.cluster_resources().get("CPU", 0), ray.cluster_resources().get("GPU", 0))
    # Ray installs a SIGTERM handler that aborts the process; a caller's own handler
    # (the CLI's, which stops the sweep cleanly) must stay in charge
    if callable(previous_term) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous_term)
    return True


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
