"""Every use of Ray's private API in crest, in one place: a lean local Ray.

What ``ray.init`` does for a local instance that a crest driver's own Ray does without:

- It starts three processes such a Ray never uses: the autoscaler's monitor (there is
  nothing to scale), the log monitor (crest passes ``log_to_driver=False``) and the
  dashboard's API server (started even with ``include_dashboard=False``, for usage
  statistics, which crest turns off; ``ray.init`` waits for it to come up).
- It waits for the raylet to register with a call (``ray._private.services.get_node``)
  that looks, fails, and looks again a second later whenever the raylet (which registers
  once its agents are up) was not yet there.
- The raylet, at its start, connects to its object store; when the store's socket is not
  yet there it waits a whole second before it tries again (Ray's setting
  ``raylet_client_connect_timeout_milliseconds``). On a busy 2-core machine one start in
  three paid that second.
- Where Ray's dashboard packages are installed (``ray[default]``), ``ray.init`` imports
  them to decide how to start the dashboard agent (aiohttp builds its TLS contexts as it
  is imported), then starts the agent whole, for a dashboard that is not running.
- Once the driver connects, the raylet starts one idle Python worker per CPU (each imports
  Ray: about 0.8 CPU-seconds). A driver that starts its own workers at once (a certainly
  new study, whose baseline trains in a process of its own meanwhile) has no use for them,
  and they take CPU from that training.

:func:`lean_local_start` has ``ray.init`` skip the three processes (it replaces the three
``Node`` methods that start them), look for the raylet every 20 ms before that call, and
count the dashboard's packages as missing (the agent then starts ``--minimal``, as it does
where they are not installed), for the duration of the ``ray.init``. The caller passes
:func:`lean_settings` as ``ray.init``'s ``_system_config``, which only a new local
instance takes: clients try again every 20 ms (:data:`QUICK_CONNECT`), and a driver that
starts its own workers at once asks for no idle ones (:data:`NO_IDLE_WORKERS`).
``bench/startup.py`` measures a lean start against a full one and against earlier commits.
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

__all__ = ["NO_IDLE_WORKERS", "QUICK_CONNECT", "SKIPPED", "check_private_api", "lean_local_start", "lean_settings"]

logger = logging.getLogger(__name__)

SKIPPED = ("start_monitor", "start_log_monitor", "start_api_server")  # methods of ray._private.node.Node
# Ray's own settings (ray_config_def.h), for ray.init's _system_config (a new local instance
# takes them); a key this Ray does not know would stop its GCS from starting, so
# lean_settings leaves out any that Ray does not name (_knows_setting), with a warning.
# A client of the raylet or of its object store that finds the socket not yet there (the
# raylet itself, at its start, among others) tries again 20 ms later, not 1 s, as often
# for as long in all (10 s).
QUICK_CONNECT: dict[str, int] = {"raylet_client_connect_timeout_milliseconds": 20,
                                 "raylet_client_num_connect_attempts": 500}
# no idle workers started when the driver connects (for a driver that starts its own at once)
NO_IDLE_WORKERS: dict[str, bool] = {"prestart_worker_first_driver": False}
REGISTRATION_POLL_S = 0.02
REGISTRATION_WAIT_S = 30.0  # as long as ray.init itself waits for its raylet

_lock = threading.Lock()


def _node_class() -> Any:
    from ray._private.node import Node

    return Node


def check_private_api() -> None:
    """Raise RuntimeError when the installed Ray lacks what :func:`lean_local_start` replaces
    or uses, or a setting :func:`lean_settings` may pass (the test suite runs it)."""
    missing = _missing_functions()
    missing += [f"the setting {key}" for key in (*QUICK_CONNECT, *NO_IDLE_WORKERS) if not _knows_setting(key)]
    if missing:
        raise RuntimeError(f"ray._private lacks {', '.join(missing)} (Ray {_ray_version()}): "
                           "update crest/orchestrator/_ray_private.py")


def _missing_functions() -> list[str]:
    """What :func:`lean_local_start` replaces or calls and this Ray lacks."""
    from ray._private import services, state, utils

    node = _node_class()
    missing = [f"Node.{name}" for name in SKIPPED if not callable(node.__dict__.get(name))]
    missing += [f"services.{name}" for name in ("get_node", "_get_gcs_client_options")
                if not callable(getattr(services, name, None))]
    missing += [f"utils.{name}" for name in ("get_dashboard_dependency_error",)
                if not callable(getattr(utils, name, None))]
    missing += [f"GlobalState.{name}" for name in ("_initialize_global_state", "node_table")
                if not callable(getattr(getattr(state, "GlobalState", None), name, None))]
    return missing


def lean_settings(*, idle_workers: bool = True) -> dict[str, Any]:
    """``ray.init``'s ``_system_config`` for a lean local start: :data:`QUICK_CONNECT`, and
    :data:`NO_IDLE_WORKERS` unless ``idle_workers``; less any setting this Ray does not
    name (left out with a warning: Ray's GCS would not start with it)."""
    wanted = {**QUICK_CONNECT, **({} if idle_workers else NO_IDLE_WORKERS)}
    unknown = [key for key in wanted if not _knows_setting(key)]
    if unknown:
        logger.warning("Ray %s has no setting %s: started without it (update crest/orchestrator/_ray_private.py)",
                       _ray_version(), ", ".join(unknown))
    return {key: value for key, value in wanted.items() if key not in unknown}


def _knows_setting(key: str) -> bool:
    """Whether this Ray has the setting ``key``: a getter of ``ray._raylet.Config``, else
    its name in Ray's core library (``ray._raylet``, built from the same settings file as
    its GCS and raylet; searched through a memory map, about 7 ms for 44 MB here)."""
    import mmap

    from ray import _raylet

    if hasattr(getattr(_raylet, "Config", None), key):
        return True
    path = getattr(_raylet, "__file__", None)
    if not path:
        return False
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
            return image.find(key.encode() + b"\0") >= 0
    except (OSError, ValueError) as e:
        logger.debug("cannot read %s: %s", path, e)
        return False


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def _skip(self: Any, *args: Any, **kwargs: Any) -> None:
    """In place of a ``Node`` method that would start a process crest does not use."""


def _no_dashboard() -> ImportError:
    """In place of ``ray._private.utils.get_dashboard_dependency_error``: the dashboard's
    packages count as missing, so Ray imports none of them (aiohttp builds its TLS
    contexts as it is imported) and starts its dashboard agent ``--minimal``."""
    return ImportError("a lean local Ray runs no dashboard")


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
        missing = _missing_functions()
    except ImportError as e:
        missing = [str(e)]
    if missing:
        logger.warning("starting a full local Ray: ray._private lacks %s (Ray %s): update "
                       "crest/orchestrator/_ray_private.py", ", ".join(missing), _ray_version())
        yield False
        return
    from ray._private import services, utils

    node = _node_class()
    with _lock:
        saved = {name: node.__dict__[name] for name in SKIPPED}
        get_node = services.get_node
        for name in SKIPPED:
            setattr(node, name, _skip)
        services.get_node = _registered_first(get_node)
        dependency_error = utils.get_dashboard_dependency_error
        utils.get_dashboard_dependency_error = _no_dashboard
        try:
            yield True
        finally:
            utils.get_dashboard_dependency_error = dependency_error
            for name, method in saved.items():
                setattr(node, name, method)
            services.get_node = get_node
