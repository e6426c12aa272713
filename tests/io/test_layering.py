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
