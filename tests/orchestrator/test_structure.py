"""The orchestrator stays readable, and the Optuna private names it relies on still exist."""

from __future__ import annotations

import ast
from pathlib import Path

import crest.orchestrator
from crest.orchestrator._optuna_private import check_private_api

MAX_FUNCTION_LINES = 60


def test_installed_optuna_still_has_the_private_names_crest_uses() -> None:
    check_private_api()  # raises CrestError naming what changed


def test_only_the_adapter_touches_optuna_private_names() -> None:
    root = Path(crest.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "_optuna_private.py"
        and any(name in path.read_text() for name in ("._trial_id", "._storage"))
    ]
    assert offenders == []


def test_no_orchestrator_function_is_longer_than_a_screen() -> None:
    root = Path(crest.orchestrator.__file__).parent
    long = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []


def test_the_package_exports_exactly_its_lazy_names_and_each_resolves() -> None:
    assert sorted(crest.orchestrator.__all__) == sorted(crest.orchestrator._WHERE)
    for name in crest.orchestrator.__all__:
        value = getattr(crest.orchestrator, name)
        assert value.__name__ == name and value.__module__ == crest.orchestrator._WHERE[name]
