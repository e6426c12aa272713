"""The server's modules import downward only: no cycles, no route module importing the app.

Read from the source with :mod:`ast` (every import, also those inside functions),
so a cycle is caught even where Python would tolerate it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlaas4hep

SRC = Path(mlaas4hep.__file__).parent
#: The front ends: thin adapters over serve.state and the bundle contract.
ADAPTERS = ("v2", "tfaas", "rootpredict", "grpc_server")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """``{module: modules of mlaas4hep it imports}`` for every module of the package."""
    modules = {_module(p): p for p in SRC.rglob("*.py") if "_proto" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        # imports under ``if TYPE_CHECKING:`` are for annotations only: never run, not an edge
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                prefix = (
                    ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                )
                # "from . import v2" imports the module v2; "from .state import X" the module state
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix or ""]
            else:
                continue
            # a module's own packages are imported before it anyway: not an edge
            found |= {t for t in targets if t in modules and not (name + ".").startswith(t + ".")}
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n] & nodes):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles_in_serve_and_the_bundle_contract():
    graph = imports()
    nodes = {n for n in graph if n.startswith(("mlaas4hep.serve", "mlaas4hep.bundle"))}
    assert "mlaas4hep.serve.state" in nodes and "mlaas4hep.bundle_spec" in nodes
    assert _cycle(graph, nodes) is None, f"import cycle: {' -> '.join(_cycle(graph, nodes) or [])}"


def test_front_ends_import_downward_only():
    graph = imports()
    for name in ADAPTERS:
        deps = graph[f"mlaas4hep.serve.{name}"]
        assert "mlaas4hep.serve.app" not in deps, name
        assert not deps & {f"mlaas4hep.serve.{a}" for a in ADAPTERS}, (name, deps)
    # the bundle and its contract know nothing of the server
    for name in ("mlaas4hep.bundle", "mlaas4hep.bundle_spec", "mlaas4hep.bundle_schema"):
        assert not {d for d in graph[name] if d.startswith("mlaas4hep.serve")}, name


def test_the_checker_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph, set(graph)) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}, {"a", "b"}) is None
