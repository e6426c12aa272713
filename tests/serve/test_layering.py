"""The server's modules import downward only: no cycles, no route module importing the app.

Read from the source with :mod:`ast` (every import, also those inside functions),
so a cycle is caught even where Python would tolerate it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlaas4hep

SRC = Path(mlaas4hep.__file__).parent
#: The front ends: thin adapters over the data plane (serve.dataplane) and the bundle contract.
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
    assert "mlaas4hep.serve.dataplane" in nodes and "mlaas4hep.bundle_spec" in nodes
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


# ------------------------------------------------------------------ the data plane and its adapters
#: Below the protocol adapters: the protocol-neutral core every front end calls.
CORE = (
    "dataplane",
    "errors",
    "repository",
    "batching",
    "lanes",
    "auth",
    "metrics",
    "metadata",
    "statistics",
    "tritonconfig",
    "rootscore",
    "config",
)
#: What speaks a protocol: frameworks, wire libraries, and our own HTTP and gRPC modules.
PROTOCOL_IMPORTS = ("starlette", "fastapi", "uvicorn", "grpc", "google.protobuf", "http", "httpx")
ADAPTER_MODULES = (
    *ADAPTERS,
    *("http", "fastpath", "httpfront", "httpproto", "app", "tensors", "cli", "_proto"),
    *("grpcwire", "grpcframes", "grpccall", "h2limits"),
)


def _third_party(path: Path) -> set[str]:
    """Every module a file imports by absolute name (also inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
    return out


def _status_literals(path: Path) -> list[int]:
    """Integers 400-599 passed to a call (``ApiError(404, ...)``, ``Response(status_code=503)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Constant) and type(arg.value) is int and 400 <= arg.value < 600:
                    found.append(arg.value)
    return found


def test_nothing_below_the_adapters_speaks_a_protocol():
    graph = imports()
    for name in CORE:
        path = SRC / "serve" / f"{name}.py"
        speaks = {
            m for m in _third_party(path) if m.split(".")[0] in PROTOCOL_IMPORTS or m in PROTOCOL_IMPORTS
        }
        assert not speaks, (name, speaks)
        ours = {
            d.rsplit(".", 1)[-1] for d in graph[f"mlaas4hep.serve.{name}"] if d.startswith("mlaas4hep.serve.")
        }
        assert not ours & set(ADAPTER_MODULES), (name, ours & set(ADAPTER_MODULES))
        assert not _status_literals(path), (name, _status_literals(path))


def test_the_checkers_see_a_protocol_below_the_adapters(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from starlette.responses import Response\ndef f():\n    raise ApiError(404, 'x')\n")
    assert _third_party(bad) == {"starlette.responses"} and _status_literals(bad) == [404]


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += sorted(graph.get(n, ()))
    return seen


def test_the_client_and_its_command_line_import_nothing_of_the_server():
    graph = imports()
    for name in (
        "mlaas4hep.client",
        "mlaas4hep.clientcli",
        "mlaas4hep.jobclient",
        "mlaas4hep.jobcli",
        "mlaas4hep.bundle_archive",
        "mlaas4hep.tokens",
    ):
        reached = {m for m in _reach(graph, name) if m.startswith("mlaas4hep.serve")}
        assert not reached, (name, reached)


def test_the_streaming_layer_reaches_no_layer_above_it():
    graph = imports()
    for name in [n for n in graph if n.startswith("mlaas4hep.io.")]:
        above = {
            m
            for m in _reach(graph, name)
            if m.startswith(("mlaas4hep.scale", "mlaas4hep.train", "mlaas4hep.serve"))
        }
        assert not above, (name, above)


def _exception_classes() -> dict[str, list[str]]:
    """``{module: [exception classes defined there]}`` for every importable module of the package."""
    import importlib
    import inspect
    import pkgutil

    out: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(mlaas4hep.__path__, "mlaas4hep."):
        if "_proto" in info.name or info.name.endswith("__main__"):
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:  # a layer whose extra is not installed
            continue
        classes = [
            n
            for n, c in vars(mod).items()
            if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == info.name
        ]
        if classes:
            out[info.name] = classes
    return out


def test_each_layer_keeps_its_exceptions_in_one_module():
    found = _exception_classes()
    for layer in ("mlaas4hep.serve", "mlaas4hep.io", "mlaas4hep.train"):
        homes = {m for m in found if m.startswith(layer + ".")}
        assert homes == {f"{layer}.errors"}, (layer, {m: found[m] for m in homes})
    # the bundle contract shared by training and serving: its errors live with its schema
    assert {m for m in found if m.startswith("mlaas4hep.bundle")} == {"mlaas4hep.bundle_schema"}


def test_exit_statuses_are_the_errors_own():
    from mlaas4hep.bundle_schema import BundleError
    from mlaas4hep.errors import ConfigError, Mlaas4hepError
    from mlaas4hep.io.errors import BranchNotFoundError, FileOpenError, TreeNotFoundError
    from mlaas4hep.terminal import exit_status
    from mlaas4hep.train.errors import ModelFileError

    for cls in (ConfigError, BundleError, BranchNotFoundError, TreeNotFoundError, ModelFileError):
        assert cls.exit_status == 2 and exit_status(cls.__new__(cls)) == 2, cls
    assert exit_status(FileOpenError("f.root", "gone")) == 1 and Mlaas4hepError.exit_status == 1


def test_the_server_never_imports_the_training_layer_nor_a_model_file():
    """A job's model file is user code: only its own process (mlaas4hep.train.job) imports it."""
    graph = imports()
    for name in [n for n in graph if n.startswith("mlaas4hep.serve")]:
        reached = {m for m in _reach(graph, name) if m.startswith(("mlaas4hep.train", "mlaas4hep.models"))}
        assert not reached, (name, reached)
