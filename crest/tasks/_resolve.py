"""Resolving a workload by name: a built-in, a registered factory, or ``module:function``.

A name from a sweep file resolves here. ``module:function`` imports from the caller's
search path (the CLI's working directory) only while the import and the call run, and
``sys.path`` is left as it was. A name read from stored bytes (an artifact's metadata, a
database row) is resolved with ``allow_import=False``: only built-in and registered
workloads, so a file can never choose code to import and run.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from crest.exceptions import WorkloadError
from crest.tasks._builtin import BUILTINS
from crest.tasks._workload import Workload

__all__ = ["get_workload", "builtin_workloads", "register_workload"]

logger = logging.getLogger(__name__)


# crest's own workloads, and those an application registers in its own process
_REGISTRY: dict[str, tuple[Callable[[], Workload], str]] = {
    name: (factory, factory.__doc__ or "") for name, factory in BUILTINS.items()
}


def register_workload(name: str, factory: Callable[[], Workload], description: str) -> None:
    """Make ``factory`` resolvable by ``name`` in this process, as the built-ins are."""
    _REGISTRY[name] = (factory, description)


def builtin_workloads() -> dict[str, str]:
    """Built-in (and registered) workload names and their descriptions."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def get_workload(name: str, *, search_path: list[str] | None = None, allow_import: bool = True) -> Workload:
    """Resolve a built-in name or ``module:function`` to a Workload.

    Args:
        name: a built-in name (see :func:`builtin_workloads`) or ``module:function``,
            where the function takes no arguments and returns a ``Workload``.
        search_path: directories put in front of ``sys.path`` for the import
            (the CLI passes the working directory).
        allow_import: whether ``module:function`` may be imported and called. Pass False
            for a name that comes from stored bytes (an artifact, a database row): then
            only built-in and registered workloads resolve.

    Raises:
        WorkloadError: the name does not resolve, names code while ``allow_import`` is
            False, or the function misbehaves.
    """
    builtins = builtin_workloads()
    if name in builtins:
        workload = _REGISTRY[name][0]()
    elif ":" in name and not allow_import:
        logger.warning("refused to import workload %r named by stored data", name[:200])
        raise WorkloadError(
            f"workload '{name[:200]}' is not a built-in ({', '.join(builtins)}); a name read from "
            "an artifact or a database selects only a built-in workload: pass the workload yourself"
        )
    elif ":" in name:
        workload = _import_workload(name, search_path or [])
    else:
        known = ", ".join(builtins)
        raise WorkloadError(
            f"workload '{name[:200]}' is neither a built-in ({known}) nor 'module:function'"
        )
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload '{name}' returned {type(workload).__name__}, not crest.tasks.Workload"
        )
    return workload


def _import_workload(name: str, search_path: list[str]) -> Workload:
    module_name, _, func_name = name.partition(":")
    if not module_name or not func_name.isidentifier():
        raise WorkloadError(f"workload '{name}': expected 'module:function'")
    with _on_sys_path(search_path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise WorkloadError(f"workload '{name}': cannot import module '{module_name}' ({e})") from e
        func = getattr(module, func_name, None)
        if not callable(func):
            raise WorkloadError(f"workload '{name}': module '{module_name}' has no function '{func_name}'")
        try:
            result = func()
        except Exception as e:
            raise WorkloadError(f"workload '{name}': {func_name}() raised {type(e).__name__}: {e}") from e
    logger.info("workload '%s' imported from %s", name, getattr(module, "__file__", "?"))
    return result  # type: ignore[no-any-return]


@contextmanager
def _on_sys_path(paths: list[str]) -> Iterator[None]:
    """``paths`` in front of ``sys.path`` while the block runs; removed again afterwards."""
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
