"""The house's import rules, read from the source: the layers point one way, and no module
imports itself back through others (a cycle makes import order matter and a module half
initialised when another uses it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared_lib", "psi_local")
# what each inner layer must never import
FORBIDDEN = {
    "shared_lib.domain": ("shared_lib.services", "shared_lib.adapters", "shared_lib.http"),
    "shared_lib.services": ("shared_lib.adapters", "shared_lib.http", "shared_lib.bootstrap"),
    "shared_lib": ("psi_local",),
}
# the command line offers `psi dev` and finds a running local stack when the local tools are
# installed (each such import is guarded: the function image has no psi_local)
MAY_USE_LOCAL_TOOLS = "shared_lib.cli"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = file
    return found


def imports(file: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module `file` imports, at any depth of its code (lazy imports too): for
    ``from package import name`` the submodule when `name` is one, else the package."""
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            yield from (s for s in subs if s in known)
            if any(s not in known for s in subs):
                yield node.module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imports(file, known) if m in known and m != name}
        for name, file in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_point_one_way():
    broken = []
    for module, targets in graph().items():
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                broken += [
                    (module, t)
                    for t in targets
                    if t.startswith(forbidden)
                    and not (module.startswith(MAY_USE_LOCAL_TOOLS) and t.startswith("psi_local"))
                ]
    assert broken == []
