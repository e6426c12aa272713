"""Scoring whole ROOT files for ``predict_root``: which files the server may open, and the scores.

Protocol-neutral: the data plane (:meth:`~mlaas4hep.serve.dataplane.DataPlane.predict_root`)
calls it in its ``predict_root`` lane, and :mod:`.rootpredict` speaks HTTP
around it. The server cannot be turned against the network or its own files:

* remote URLs (``root://``, ``http(s)://``) are refused unless their host is in
  the allow-list given at start (``--allow-remote HOST[,HOST]``); by default
  there is none, and the refusal is the same whatever the host, so it tells
  nothing about the network;
* local files are read only under the ``--data-dir`` directories, checked
  after resolving links, and only regular files (a FIFO or a device would
  block a reading thread forever).
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..bundle import Predictor
from ..bundle_spec import BundleSpec
from ..errors import Mlaas4hepError
from .errors import Forbidden, InvalidRequest

MAX_ENTRIES = 20_000_000


@dataclass
class RootQuery:
    """What to score: a file, its tree (default: the bundle's), an entry range, entries per chunk."""

    url: Any  # as the client sent it, until the data plane checks it (check_url)
    tree: str | None = None
    entry_start: int = 0
    entry_stop: int | None = None
    chunk_size: int = 100_000


REMOTE_SCHEMES = ("root", "xroot", "http", "https")


def check_url(url: Any, prefixes: tuple[str, ...], allow_remote: tuple[str, ...] = ()) -> str:
    """The URL if the server may open it (see the module docstring); :class:`InvalidRequest` or :class:`Forbidden` otherwise."""
    if not isinstance(url, str) or not url or "\x00" in url or len(url) > 4096:
        raise InvalidRequest("'url' must be a file path or a root:// or http(s):// URL")
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://")[0].lower()
        if scheme not in REMOTE_SCHEMES or not any(url.startswith(p) for p in prefixes if "://" in p):
            raise Forbidden(f"this server does not open {scheme[:20]}:// URLs")
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise InvalidRequest("'url' is not a valid URL") from None
        allowed = "*" in allow_remote or host in allow_remote or (port and f"{host}:{port}" in allow_remote)
        if not host or not allowed:
            raise Forbidden(
                "this server reads remote files only from the hosts it was started with (--allow-remote)"
            )
        return url
    path = _local_path(url[len("file://") :] if url.startswith("file://") else url, prefixes)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise InvalidRequest(f"cannot score {url[:200]!r}: no such file in the data directories") from None
    if not stat.S_ISREG(mode):
        raise InvalidRequest(f"{url[:200]!r} is not a regular file")
    return path


def _local_path(raw: str, prefixes: tuple[str, ...]) -> str:
    """A local file inside a data directory: a relative path is taken under each ``--data-dir``
    (then under the server's working directory); links are resolved before the check."""
    dirs = [p for p in prefixes if "://" not in p]
    candidates = [os.path.realpath(raw)]
    if not os.path.isabs(raw):
        candidates = [os.path.realpath(os.path.join(d, raw)) for d in dirs] + candidates
    inside = [c for c in candidates if any(c.startswith(d) for d in dirs)]
    if not inside:
        raise Forbidden("this server does not open local files outside its data directories (--data-dir)")
    return next((c for c in inside if os.path.exists(c)), inside[0])


def score(
    predictor: Predictor, info: BundleSpec, q: RootQuery, max_cells: int, deadline: float
) -> dict[str, np.ndarray]:
    """Scores of the entries ``q`` asks for (blocking: run it in the ``predict_root`` lane).

    ``max_cells`` bounds the events x values of one chunk; past ``deadline``
    (:func:`time.monotonic`) reading stops, since the caller has been answered.
    """
    url, timeout = q.url, deadline - time.monotonic()
    parts: list[dict[str, np.ndarray]] = []
    n = 0
    # each remote open/read gives up a second after the time left (at most the io layer's 30 s):
    # by then the caller has had its answer from the lane's time limit, never this read's error
    io_timeout = max(1.0, min(30.0, deadline - time.monotonic() + 1.0))
    chunk = min(q.chunk_size, 1_000_000, max(1, max_cells // max(1, info.values_per_event)))
    try:
        for part in predictor.predict_root(
            url, q.tree, q.entry_start, q.entry_stop, chunk_size=chunk, timeout=io_timeout
        ):
            if time.monotonic() > deadline:  # the caller has been answered: stop reading
                raise InvalidRequest(f"cannot score {url!r}: no result within {timeout:g} s")
            parts.append(part)
            n += len(part["entry"])
            if n > MAX_ENTRIES:
                raise InvalidRequest(
                    f"more than {MAX_ENTRIES} entries: ask for a range with entry_start/entry_stop"
                )
    except Mlaas4hepError:
        raise
    except Exception as err:  # whatever the file or network threw: the client named the file
        raise InvalidRequest(f"cannot score {url!r}: {type(err).__name__}: {err}") from None
    if not parts:
        return {"entry": np.zeros(0, np.int64), "scores": np.zeros((0, info.n_outputs), np.float32)}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    scores = out.pop("scores")
    out = {k: (v if v.dtype.kind in "biuf" else v.astype(np.int64)) for k, v in out.items()}
    out["scores"] = scores.astype(np.float32, copy=False)
    return out


def friend_file(results: dict[str, np.ndarray], info: BundleSpec, tree: str) -> bytes:
    """The scores as the bytes of a ROOT file holding the friend tree ``tree``."""
    import uproot

    scores = results["scores"]
    branches: dict[str, np.ndarray] = {k: v for k, v in results.items() if k != "scores"}
    if scores.shape[1] == 1:
        branches["score"] = scores[:, 0]
    else:
        for i, label in enumerate(info.labels):
            safe = "".join(c if c.isalnum() else "_" for c in label)
            branches[f"score_{safe}"] = scores[:, i]
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-friend-") as d:
        path = Path(d) / "friend.root"
        with uproot.recreate(path) as f:
            t = f.mktree(tree, {k: v.dtype for k, v in branches.items()})
            if len(scores):
                t.extend(branches)
        return path.read_bytes()
