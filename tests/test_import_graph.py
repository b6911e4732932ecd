"""The arrows between the service's layers point one way (issue 14, part 9): ``cli`` →
``service`` → ``api`` → ``app`` → ``fleet``, with no import among them inside functions.

Read from the source with :mod:`ast`: imports under ``if TYPE_CHECKING:`` are for annotations
only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stream_monitor"
LAYERS = ("stream_monitor.cli", "stream_monitor.service", "stream_monitor.api", "stream_monitor.app",
          "stream_monitor.fleet")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) of every runtime import of the file."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else []))
                found.extend((f"{target}.{alias.name}" if not child.module else target, in_function)
                             for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_layers_import_downwards_only_and_at_the_top() -> None:
    upward, in_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer(_module(path))
        if source is None or source == "stream_monitor.cli":  # the CLI imports lazily to start fast
            continue
        for target, in_function in _imports(path):
            layer = _layer(target)
            if layer is None or layer == source:
                continue
            if LAYERS.index(layer) <= LAYERS.index(source):
                upward.append(f"{_module(path)} imports {target}")
            if in_function:
                in_functions.append(f"{_module(path)} imports {target} inside a function")
    assert upward == [] and in_functions == [], upward + in_functions


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The reader itself: a function-level import and a TYPE_CHECKING one are told apart.
    probe = PACKAGE / "app.py"
    kinds = {(target, inside) for target, inside in _imports(probe)}
    assert ("stream_monitor.fleet", False) in kinds
    assert not any(t.startswith("stream_monitor.api") for t, _ in kinds)
    fleet = {t for t, _ in _imports(PACKAGE / "fleet.py")}
    assert not any(t.startswith("stream_monitor.app") for t in fleet)  # only under TYPE_CHECKING there
