"""``mlaas4hep inspect``: what a ROOT file holds, without reading its data."""

from __future__ import annotations

from typing import Any

from . import sources
from .schema import branch_kind


def inspect_file(
    url: str, tree: str | None = None, pattern: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Trees of a file with their entries, and the branches (name, type, kind) of each.

    ``kind`` is ``flat``, ``jagged`` or ``unsupported`` (what the streaming layer
    would do with the branch). Only metadata is read, so this is fast even for
    remote files with thousands of branches.
    """
    import fnmatch

    from . import formats

    if formats.is_parquet(url):  # one table per file: listed under the name of the file
        table = formats.open_parquet(url, timeout)
        try:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            return {
                "url": url,
                "compression": str(table.file.compression),
                "trees": [formats.inspect_view(table, name, pattern)],
            }
        finally:
            table.close()
    f = sources.open_file(url, timeout)
    try:
        kinds = ("TTree", "ROOT::RNTuple")
        trees = [k.split(";")[0] for k, c in f.classnames(recursive=True).items() if c in kinds]
        trees = list(dict.fromkeys(trees))
        out: dict[str, Any] = {"url": url, "compression": str(f.file.compression), "trees": []}
        for name in trees:
            if tree and name != tree:
                continue
            t = f[name]
            v = formats.view(t, url)
            if v is not None:  # an RNTuple: fields mapped to branch names (see mlaas4hep.io.formats)
                out["trees"].append(formats.inspect_view(v, name, pattern))
                continue
            branches = []
            for k in t.keys(recursive=True):
                b = t[k]
                if b.branches:
                    continue
                if pattern and not fnmatch.fnmatchcase(k, pattern):
                    continue
                branches.append({"name": k, "type": str(b.typename), "kind": branch_kind(b) or "unsupported"})
            out["trees"].append({"name": name, "entries": int(t.num_entries), "branches": branches})
        if tree and not out["trees"]:
            from .errors import TreeNotFoundError

            raise TreeNotFoundError(url, tree, trees)
        return out
    finally:
        f.close()
