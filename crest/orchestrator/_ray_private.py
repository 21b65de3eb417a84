"""Every use of Ray's private API in crest, in one place: a lean local Ray.

``ray.init`` starts, besides the GCS, the raylet and its agents, three processes that a
crest driver's own local Ray never uses: the autoscaler's monitor (there is nothing to
scale), the log monitor (crest passes ``log_to_driver=False``) and the dashboard's API
server (started even with ``include_dashboard=False``, for usage statistics, which crest
turns off; ``ray.init`` waits for it to come up). On the 2-core development machine they
cost about 1 s of CPU and 0.6 to 1.6 s of ``ray.init``'s time (``bench/startup.py``).
:func:`lean_local_start` has ``ray.init`` skip them, by replacing the three ``Node``
methods that start them for the duration of the call. ``ray: {local: full}`` in a sweep
file starts Ray as ``ray.init`` does. :func:`check_private_api` (run by the test suite
against the Ray that is installed) fails loudly when a release renames them; crest itself
then falls back to a full start, with a warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SKIPPED", "check_private_api", "lean_local_start"]

logger = logging.getLogger(__name__)

SKIPPED = ("start_monitor", "start_log_monitor", "start_api_server")  # methods of ray._private.node.Node

_lock = threading.Lock()


def _node_class() -> Any:
    from ray._private.node import Node

    return Node


def check_private_api() -> None:
    """Raise RuntimeError when the installed Ray lacks what :func:`lean_local_start` replaces."""
    node = _node_class()
    missing = [name for name in SKIPPED if not callable(node.__dict__.get(name))]
    if missing:
        raise RuntimeError(f"ray._private.node.Node has no {', '.join(missing)} (Ray {_ray_version()}): "
                           "update crest/orchestrator/_ray_private.py")


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def _skip(self: Any, *args: Any, **kwargs: Any) -> None:
    """In place of a ``Node`` method that would start a process crest does not use."""


@contextmanager
def lean_local_start() -> Iterator[bool]:
    """While held, a local Ray that ``ray.init`` starts in this process skips the autoscaler
    monitor, the log monitor and the dashboard's API server; the methods are put back on
    exit. Yields False (and changes nothing) when this Ray lacks them."""
    try:
        check_private_api()
    except (ImportError, RuntimeError) as e:
        logger.warning("starting a full local Ray: %s", e)
        yield False
        return
    node = _node_class()
    with _lock:
        saved = {name: node.__dict__[name] for name in SKIPPED}
        for name in SKIPPED:
            setattr(node, name, _skip)
        try:
            yield True
        finally:
            for name, method in saved.items():
                setattr(node, name, method)
