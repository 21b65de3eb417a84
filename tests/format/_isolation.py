"""What the import tests share: a subprocess with heavy packages blocked, and crest's import graph.

:func:`run_blocked` runs a script in a fresh interpreter in which importing any of
:data:`BLOCKED` raises ImportError, as on a deployment target or a bare GPU machine.
:func:`import_graph` reads every ``import`` / ``from`` statement under ``crest/`` with
:mod:`ast` (module level and inside functions, not under ``if TYPE_CHECKING:``) and
returns which crest module imports which.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("ray", "optuna", "sqlalchemy", "pydantic", "cupy", "torch", "alembic", "typer")

_PRELUDE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    """
)


def run_blocked(script: str) -> str:
    """Run ``script`` (dedented) with :data:`BLOCKED` unimportable; return its stdout.

    The script sees ``BLOCKED`` (a set of names); it must exit 0.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(script), ",".join(BLOCKED)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def heavy_imports(package: Path) -> list[tuple[str, str]]:
    """``(file, name)`` for every module of ``package`` whose text imports a blocked name or pickle."""
    found = []
    for path in sorted(package.glob("*.py")):
        text = path.read_text()
        for name in (*BLOCKED, "pickle"):
            if f"import {name}" in text or f"from {name}" in text:
                found.append((path.name, name))
    return found


def crest_modules() -> dict[str, Path]:
    """Dotted name -> file of every module under ``crest/``."""
    out = {}
    for path in sorted((REPO / "crest").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` that can run (skips ``if TYPE_CHECKING:`` bodies)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _runtime_imports(child)


def _targets(stmt: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> Iterator[tuple[str, str]]:
    """``(submodule, module)`` for every name ``stmt`` imports.

    ``from a import b`` gives ``("a.b", "a")``: it imports the submodule ``a.b`` when there
    is one, else the module ``a``; ``import a.b`` gives ``("a.b", "a.b")``.
    """
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            yield alias.name, alias.name
        return
    base = stmt.module or ""
    if stmt.level:  # relative: from the package that holds ``name``
        parts = name.split(".") if is_package else name.split(".")[:-1]
        parts = parts[: len(parts) - (stmt.level - 1)]
        base = ".".join([*parts, base]) if base else ".".join(parts)
    for alias in stmt.names:
        yield f"{base}.{alias.name}", base


def import_graph() -> dict[str, dict[str, int]]:
    """Crest module -> {crest module it imports: line of the first such import}.

    Imports at module level and inside functions count; those under ``if TYPE_CHECKING:``
    do not (they never run).
    """
    modules = crest_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for stmt in _runtime_imports(ast.parse(path.read_text(), str(path))):
            for sub, base in _targets(stmt, name, path.name == "__init__.py"):
                target = sub if sub in modules else base
                if target in modules:
                    edges.setdefault(target, stmt.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` that hold a cycle (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)
