"""The shape the code keeps: layers that import only downwards, and services that are safe
to share (composition.py builds each once per process, and every request uses it)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import get_type_hints

import pytest

import autopilot_api
from autopilot_api.composition import Services

PACKAGE = Path(autopilot_api.__file__).parent
OUR_PACKAGES = {"autopilot_api", "tests"}

# What each layer never imports (lazily inside a function either).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("autopilot_api.services", "autopilot_api.api", "autopilot_api.composition"),
    "models": ("autopilot_api.services", "autopilot_api.api", "autopilot_api.composition"),
    "services": ("fastapi", "starlette", "autopilot_api.api", "autopilot_api.composition"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    found = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == bad or name.startswith(f"{bad}.") for bad in FORBIDDEN[layer])
    }
    assert found == set()


def assignments_outside_init(cls: type) -> list[str]:
    """`self.x = …` (or `+=`) in any method but __init__: state a shared object would carry
    from one request into the next."""
    found: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in OUR_PACKAGES:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        (class_def,) = tree.body
        assert isinstance(class_def, ast.ClassDef)
        for method in class_def.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if method.name == "__init__":
                continue
            for node in ast.walk(method):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                    targets = [node.target]
                for target in targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        found.append(f"{klass.__name__}.{method.name}: self.{target.attr}")
    return found


@pytest.mark.parametrize("name", sorted(get_type_hints(Services)))
def test_a_shared_service_keeps_nothing_of_a_request(name: str) -> None:
    assert assignments_outside_init(get_type_hints(Services)[name]) == []


class Remembers:
    def __init__(self) -> None:
        self.last: str | None = None

    def handle(self, caller: str) -> None:
        self.last = caller


def test_the_check_sees_state_kept_on_self() -> None:
    assert assignments_outside_init(Remembers) == ["Remembers.handle: self.last"]
