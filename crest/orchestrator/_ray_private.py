"""Every use of Ray's private API in crest, in one place: a lean local Ray.

``ray.init`` starts, besides the GCS, the raylet and its agents, three processes that a
crest driver's own local Ray never uses: the autoscaler's monitor (there is nothing to
scale), the log monitor (crest passes ``log_to_driver=False``) and the dashboard's API
server (started even with ``include_dashboard=False``, for usage statistics, which crest
turns off; ``ray.init`` waits for it to come up). Then ``ray.init`` waits for the raylet
to register, with a call (``ray._private.services.get_node``) that looks, fails, and looks
again a second later whenever the raylet (which registers once its agents are up) was not
yet there. :func:`lean_local_start` has ``ray.init`` skip the three processes, by
replacing the three ``Node`` methods that start them, and look for the raylet every
20 ms before that call, for the duration of the ``ray.init``. ``bench/startup.py``
measures both: on the 2-core development machine, ``ray.init`` alone took 1.4 s lean and
2.5-3.5 s full, and a lean start spent 1.7 fewer CPU-seconds before the first trial.
``ray: {local: full}`` in a sweep file starts Ray as ``ray.init`` does.
:func:`check_private_api` (run by the test suite against the Ray that is installed) fails
loudly when a release renames any of this; crest itself then falls back to a full start,
with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SKIPPED", "check_private_api", "lean_local_start"]

logger = logging.getLogger(__name__)

SKIPPED = ("start_monitor", "start_log_monitor", "start_api_server")  # methods of ray._private.node.Node
REGISTRATION_POLL_S = 0.02
REGISTRATION_WAIT_S = 30.0  # as long as ray.init itself waits for its raylet

_lock = threading.Lock()


def _node_class() -> Any:
    from ray._private.node import Node

    return Node


def check_private_api() -> None:
    """Raise RuntimeError when the installed Ray lacks what :func:`lean_local_start` replaces or uses."""
    from ray._private import services, state

    node = _node_class()
    missing = [f"Node.{name}" for name in SKIPPED if not callable(node.__dict__.get(name))]
    missing += [f"services.{name}" for name in ("get_node", "_get_gcs_client_options")
                if not callable(getattr(services, name, None))]
    missing += [f"GlobalState.{name}" for name in ("_initialize_global_state", "node_table")
                if not callable(getattr(getattr(state, "GlobalState", None), name, None))]
    if missing:
        raise RuntimeError(f"ray._private lacks {', '.join(missing)} (Ray {_ray_version()}): "
                           "update crest/orchestrator/_ray_private.py")


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def _skip(self: Any, *args: Any, **kwargs: Any) -> None:
    """In place of a ``Node`` method that would start a process crest does not use."""


def _registered_first(get_node: Any) -> Any:
    """``get_node``, called once the node is in the GCS's node table (looked up every
    :data:`REGISTRATION_POLL_S`), so that its own one-second retry is not reached."""
    from ray._private import services, state

    def wait_then_get(gcs_address: str, node_id: str) -> Any:
        try:
            table = state.GlobalState()  # type: ignore[no-untyped-call]
            options = services._get_gcs_client_options(gcs_address)  # type: ignore[no-untyped-call]
            table._initialize_global_state(options)
            deadline = time.monotonic() + REGISTRATION_WAIT_S
            while time.monotonic() < deadline and not _listed(table, node_id):
                time.sleep(REGISTRATION_POLL_S)
        except Exception as e:  # noqa: BLE001 -- only a shortcut: Ray's own call follows either way
            logger.debug("looking for the raylet in the node table: %s", e)
        return get_node(gcs_address, node_id)

    return wait_then_get


def _listed(table: Any, node_id: str) -> bool:
    """Whether the GCS's node table lists ``node_id`` (hex)."""
    nodes = table.node_table()
    return any(n.get("NodeID") == node_id for n in nodes)


@contextmanager
def lean_local_start() -> Iterator[bool]:
    """While held, a local Ray that ``ray.init`` starts in this process skips the autoscaler
    monitor, the log monitor and the dashboard's API server, and ``ray.init`` looks for its
    raylet every 20 ms; all is put back on exit. Yields False (and changes nothing) when
    this Ray lacks what it replaces."""
    try:
        check_private_api()
    except (ImportError, RuntimeError) as e:
        logger.warning("starting a full local Ray: %s", e)
        yield False
        return
    from ray._private import services

    node = _node_class()
    with _lock:
        saved = {name: node.__dict__[name] for name in SKIPPED}
        get_node = services.get_node
        for name in SKIPPED:
            setattr(node, name, _skip)
        services.get_node = _registered_first(get_node)
        try:
            yield True
        finally:
            for name, method in saved.items():
                setattr(node, name, method)
            services.get_node = get_node
