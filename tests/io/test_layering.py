"""The streaming layer's modules import downward only: no cycles in ``mlaas4hep.io``.

The graph is the one the server's layering test reads from the source (every
import, also those inside functions). The parts of a dataset (catalog, cache,
epoch, tensors, report) and of its configuration (settings, trio) sit below
``dataset.py`` and ``config.py``, and never import them back.
"""

from __future__ import annotations

from tests.serve.test_layering import _cycle, imports


def _io_graph() -> tuple[dict[str, set[str]], set[str]]:
    graph = {n: set(deps) for n, deps in imports().items()}
    return graph, {n for n in graph if n.startswith("mlaas4hep.io.")}


def test_no_import_cycles_in_io():
    graph, nodes = _io_graph()
    assert {"mlaas4hep.io.dataset", "mlaas4hep.io.config", "mlaas4hep.io.catalog"} <= nodes
    assert _cycle(graph, nodes) is None, f"import cycle: {' -> '.join(_cycle(graph, nodes) or [])}"


def test_the_parts_do_not_import_the_whole():
    graph, nodes = _io_graph()
    for name in nodes - {"mlaas4hep.io.dataset"}:
        assert "mlaas4hep.io.dataset" not in graph[name], name
    for name in ("settings", "trio", "configfile"):
        assert "mlaas4hep.io.config" not in graph[f"mlaas4hep.io.{name}"], name


def test_the_lazy_names_are_the_public_names():
    """``mlaas4hep.io`` names each public name three times (its ``TYPE_CHECKING`` imports, the
    map ``_WHERE`` that imports on first use, ``__all__``): all three agree, and each name is
    found where the map says."""
    import ast
    import importlib
    from pathlib import Path

    io = importlib.import_module("mlaas4hep.io")
    tree = ast.parse(Path(io.__file__).read_text())
    typed = {
        (node.module, alias.name)
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert sorted(io._WHERE) == sorted(io.__all__)
    assert typed == {(module, name) for name, module in io._WHERE.items()}
    namespace: dict = {}
    exec("from mlaas4hep.io import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == sorted(io.__all__)
