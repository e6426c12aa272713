"""Scores for a whole ROOT file: ``POST /v2/models/{name}[/versions/{v}]/predict_root``.

Request::

    {"url": "root://host//store/file.root", "tree": "Events",
     "entry_start": 0, "entry_stop": 100000, "format": "json"}

The server streams the file through the io layer (local paths, ``root://``,
``http(s)://``, with retries), applies the bundle's preprocessing *without* its
selection (every entry gets a score), and answers with tensors named
``entry``, the identifier branches the file has (``run``, ``luminosityBlock``,
``event``) and ``scores`` (``[n, K]``):

* ``"format": "json"`` (default): an OIP-style JSON response;
* ``"format": "binary"``: the same with every tensor in the binary extension;
* ``"format": "root"``: a ROOT file holding a friend tree (``friend_tree``,
  default ``"scores"``) with ``entry``, the ids and ``score`` (or
  ``score_<label>`` per class), aligned entry by entry with the input tree.

The server cannot be turned against the network or its own files:

* remote URLs (``root://``, ``http(s)://``) are refused unless their host is in
  the allow-list given at start (``--allow-remote HOST[,HOST]``, ``create_app(
  allow_remote=...)``); by default there is none, and the refusal is the same
  whatever the host, so it tells nothing about the network;
* local files are read only under the ``--data-dir`` directories, checked
  after resolving links, and only regular files (a FIFO or a device would
  block a reading thread forever);
* every request runs in its own lane (:mod:`.lanes`): a few threads, a short
  queue (429 beyond), and a time limit (``root_timeout``), so health probes,
  inference and repository calls never wait behind it, and shutdown never
  waits for it.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..bundle_spec import BundleSpec
from ..errors import Mlaas4hepError
from . import tensors
from .errors import ApiError
from .http import infer_reply, read_body, state_of
from .state import ServerState
from .tensors import InferRequest

MAX_ENTRIES = 20_000_000
FORMATS = ("json", "binary", "root")


REMOTE_SCHEMES = ("root", "xroot", "http", "https")


def check_url(url: Any, prefixes: tuple[str, ...], allow_remote: tuple[str, ...] = ()) -> str:
    """The URL if the server may open it (see the module docstring); 400/403 otherwise."""
    if not isinstance(url, str) or not url or "\x00" in url or len(url) > 4096:
        raise ApiError(400, "'url' must be a file path or a root:// or http(s):// URL")
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://")[0].lower()
        if scheme not in REMOTE_SCHEMES or not any(url.startswith(p) for p in prefixes if "://" in p):
            raise ApiError(403, f"this server does not open {scheme[:20]}:// URLs")
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise ApiError(400, "'url' is not a valid URL") from None
        allowed = "*" in allow_remote or host in allow_remote or (port and f"{host}:{port}" in allow_remote)
        if not host or not allowed:
            raise ApiError(
                403, "this server reads remote files only from the hosts it was started with (--allow-remote)"
            )
        return url
    path = _local_path(url[len("file://") :] if url.startswith("file://") else url, prefixes)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise ApiError(400, f"cannot score {url[:200]!r}: no such file in the data directories") from None
    if not stat.S_ISREG(mode):
        raise ApiError(400, f"{url[:200]!r} is not a regular file")
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
        raise ApiError(403, "this server does not open local files outside its data directories (--data-dir)")
    return next((c for c in inside if os.path.exists(c)), inside[0])


def _int(req: dict[str, Any], key: str, default: int | None) -> int | None:
    v = req.get(key, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ApiError(400, f"'{key}' must be a non-negative integer")
    return v


async def predict_root(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    info = st.model(request.path_params["name"], request.path_params.get("version"))
    if info.preprocessor is None:
        raise ApiError(400, f"model {info.name!r} has no preprocessing, so it cannot read ROOT files")
    if not st.repo.is_ready(info.name):
        raise ApiError(400, f"model {info.name!r} is unloaded")
    req = tensors.parse_json(await read_body(request, 1024 * 1024))
    if not isinstance(req, dict):
        raise ApiError(
            400, 'the request must be {"url": ..., "tree": ..., "entry_start": ..., "entry_stop": ...}'
        )
    url = check_url(req.get("url"), st.root_prefixes, st.allow_remote)
    tree = req.get("tree")
    if tree is not None and (not isinstance(tree, str) or not tree):
        raise ApiError(400, "'tree' must be a tree name")
    start, stop = _int(req, "entry_start", 0), _int(req, "entry_stop", None)
    chunk = _int(req, "chunk_size", 100_000) or 100_000
    fmt = req.get("format", "json")
    if fmt not in FORMATS:
        raise ApiError(400, f"'format' must be one of {FORMATS}")
    friend = req.get("friend_tree", "scores")
    if not isinstance(friend, str) or not friend.isidentifier():
        raise ApiError(400, "'friend_tree' must be a plain tree name")
    deadline = time.monotonic() + st.root_timeout
    results = await st.root_lane.run(_score, st, info, url, tree, start, stop, chunk, deadline)
    if fmt == "root":
        data = await st.root_lane.run(_friend_file, results, info, friend)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{info.name}_{friend}.root"'},
        )
    oreq = InferRequest(
        id=req.get("id") if isinstance(req.get("id"), str) else None,
        inputs=[],
        outputs=None,
        binary_default=fmt == "binary",
    )
    return infer_reply(info.name, info.version, oreq, results).response()


def _score(
    st: ServerState,
    info: BundleSpec,
    url: str,
    tree: str | None,
    start: int,
    stop: int | None,
    chunk: int,
    deadline: float,
) -> dict[str, np.ndarray]:
    predictor = st.repo.predictor(info.name, info.version)
    parts: list[dict[str, np.ndarray]] = []
    n = 0
    # each remote open/read gives up after the time left (at most the io layer's 30 s)
    io_timeout = max(1.0, min(30.0, deadline - time.monotonic()))
    chunk = min(chunk, 1_000_000, max(1, st.max_cells // max(1, info.values_per_event)))
    try:
        for part in predictor.predict_root(url, tree, start, stop, chunk_size=chunk, timeout=io_timeout):
            if time.monotonic() > deadline:  # the caller has been answered: stop reading
                raise ApiError(400, f"cannot score {url!r}: no result within {st.root_timeout:g} s")
            parts.append(part)
            n += len(part["entry"])
            if n > MAX_ENTRIES:
                raise ApiError(
                    400, f"more than {MAX_ENTRIES} entries: ask for a range with entry_start/entry_stop"
                )
    except (ApiError, Mlaas4hepError):
        raise
    except Exception as err:  # whatever the file or network threw: the client named the file
        raise ApiError(400, f"cannot score {url!r}: {type(err).__name__}: {err}") from None
    if not parts:
        return {"entry": np.zeros(0, np.int64), "scores": np.zeros((0, info.n_outputs), np.float32)}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    scores = out.pop("scores")
    out = {k: (v if v.dtype.kind in "biuf" else v.astype(np.int64)) for k, v in out.items()}
    out["scores"] = scores.astype(np.float32, copy=False)
    return out


def _friend_file(results: dict[str, np.ndarray], info: BundleSpec, tree: str) -> bytes:
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


def routes() -> list[Route]:
    return [
        Route("/v2/models/{name}/predict_root", predict_root, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/predict_root", predict_root, methods=["POST"]),
    ]
