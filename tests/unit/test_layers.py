"""The tree's layers hold: imports point down only, and no module imports itself back.

From the bottom up: the vocabulary every layer speaks (``hub.config``, ``hub.errors``,
``hub.events``, ``hub.metrics``, ``hub.timing``), ``hub.infra`` (databases, brokers, the
archive), ``hub.domain`` (access, the stream node, fan-out, the order flow), ``hub.edge``
(HTTP, WebSocket, CLI) and the entry points (``hub.app``, ``hub.__main__``). Every import is
counted, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "hub"

LAYERS = {"base": 0, "infra": 1, "domain": 2, "edge": 3, "entry": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in HUB.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in {"infra", "domain", "edge"}:
        return parts[1]
    if module in {"hub.app", "hub.__main__"}:
        return "entry"
    return "base"


def imports(module: str) -> set[str]:
    """The hub modules ``module`` imports (a ``from P import name`` of a submodule counts
    as an import of that submodule)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_layers_are_packages() -> None:
    """infra, domain and edge are packages, and every module belongs to exactly one layer."""
    for package in ("hub.infra", "hub.domain", "hub.edge"):
        assert MODULES[package].name == "__init__.py"
    assert {layer(m) for m in MODULES} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    """A module imports only from its own layer or the layers below it."""
    upward = sorted(
        target for target in GRAPH[module] if LAYERS[layer(target)] > LAYERS[layer(module)]
    )
    assert not upward, f"{module} ({layer(module)}) imports upward: {upward}"


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import_and_a_cycle() -> None:
    """The walk itself works: the known edges of the tree are found."""
    assert "hub.infra.store.base" in GRAPH["hub.infra.store.file"]
    assert "hub.domain.node" in GRAPH["hub.edge.ws"]
    assert "hub.edge.app" in GRAPH["hub.app"]
