"""``mlaas4hep inspect``: what a ROOT file holds, without reading its data."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from . import sources, urls
from .errors import FileOpenError
from .schema import branch_kind

#: default ports of the remote schemes
PORTS = {"root": 1094, "roots": 1094, "xroot": 1094, "http": 80, "https": 443}


def inspect_file(
    url: str, tree: str | None = None, pattern: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Trees of a file with their entries, and the branches (name, type, kind) of each.

    ``kind`` is ``flat``, ``jagged`` or ``unsupported`` (what the streaming layer
    would do with the branch). Only metadata is read, so this is fast even for
    remote files with thousands of branches.
    """
    import fnmatch

    check_reachable(url, min(timeout, 10.0))
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


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Fail fast, in one line, when the server of a remote URL cannot be reached at all.

    Without this, an XRootD client retries a refused connection until its
    timeouts expire, and the error that finally comes back talks about the file.
    """
    parts = urlsplit(url)
    port = PORTS.get(parts.scheme)
    if port is None or not parts.hostname:
        return
    try:
        port = parts.port or port
    except ValueError:
        raise FileOpenError(url, f"the port in {parts.netloc!r} is not a number") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise FileOpenError(
            url,
            f"cannot connect to {parts.hostname}:{port} ({reason}); is the server up, and the host and port right?",
        ) from None


def suggest_branches(url: str, name: str) -> str:
    """``; did you mean 'Jet_pt'?`` from the branches of a local file's trees (``""`` if none is close)."""
    from .expr import did_you_mean

    if not urls.is_local(url):
        return ""
    try:
        f = sources.open_file(url)
    except Exception:
        return ""
    try:
        keys: list[str] = []
        for k, c in f.classnames(recursive=True).items():
            if c == "TTree":
                keys += f[k].keys(recursive=True)
        if "*" in name:  # a wildcard: the collections' patterns (Jte_* -> Jet_*)
            keys = [f"{k.split('_', 1)[0]}_*" for k in keys if "_" in k]
        return did_you_mean(name, dict.fromkeys(keys))
    except Exception:
        return ""
    finally:
        f.close()
