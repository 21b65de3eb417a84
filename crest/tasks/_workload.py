"""The Workload: what a sweep compresses (a model, its data, how to train and score it)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from crest.exceptions import WorkloadError

__all__ = ["Workload", "get_workload", "builtin_workloads", "register_workload"]


@dataclass
class Workload:
    """A trainable model with its data.

    Args:
        name: short name shown in tables and stored with the study.
        build_model: returns a freshly initialised ``torch.nn.Module`` (CPU).
        train_set: training data; items are ``(input, label)``.
        test_set: held-out data used for every recorded accuracy.
        baseline_epochs: epochs of the study's dense baseline training.
        batch_size: minibatch size for training and evaluation.
        lr: Adam learning rate of the baseline (retraining defaults to it).
        evaluate: optional ``model -> float`` (higher is better) replacing top-1
            accuracy on ``test_set``.
        loss: optional ``(logits, labels) -> loss``; cross-entropy by default.
        description: one line for ``--help`` and tables.
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    train_set: Dataset  # type: ignore[type-arg]
    test_set: Dataset  # type: ignore[type-arg]
    baseline_epochs: int
    batch_size: int
    lr: float
    evaluate: Callable[[torch.nn.Module], float] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    description: str = field(default="")


_BUILTINS: dict[str, tuple[Callable[[], Workload], str]] = {}


def register_workload(name: str, factory: Callable[[], Workload], description: str) -> None:
    """Register a built-in workload factory under ``name``."""
    _BUILTINS[name] = (factory, description)


def builtin_workloads() -> dict[str, str]:
    """Built-in workload names and their one-line descriptions."""
    from crest.tasks import _builtin  # noqa: F401  (registers the built-ins)

    return {name: desc for name, (_, desc) in sorted(_BUILTINS.items())}


def get_workload(name: str, *, search_path: list[str] | None = None) -> Workload:
    """Resolve a built-in name or ``module:function`` to a Workload.

    Args:
        name: a built-in name (see :func:`builtin_workloads`) or ``module:function``,
            where the function takes no arguments and returns a ``Workload``.
        search_path: directories put in front of ``sys.path`` for the import
            (the CLI passes the working directory).

    Raises:
        WorkloadError: the name does not resolve or the function misbehaves.
    """
    builtins = builtin_workloads()
    if name in builtins:
        workload = _BUILTINS[name][0]()
    elif ":" in name:
        workload = _import_workload(name, search_path or [])
    else:
        known = ", ".join(builtins)
        raise WorkloadError(
            f"workload '{name}' is neither a built-in ({known}) nor 'module:function'"
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
    for path in reversed(search_path):
        if path not in sys.path:
            sys.path.insert(0, path)
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
    return result  # type: ignore[no-any-return]
