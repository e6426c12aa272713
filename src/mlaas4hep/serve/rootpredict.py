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

What the server may open, and the scoring itself, are protocol-neutral
(:mod:`.rootscore`, through the data plane); this module speaks HTTP. Every
request runs in its own lane (:mod:`.lanes`): a few threads, a short queue
(429 beyond), and a time limit (``--root-timeout``), so health probes,
inference and repository calls never wait behind it, and shutdown never
waits for it.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from . import tensors
from .dataplane import DataPlane
from .endpoints import route
from .errors import InvalidRequest
from .http import Call, Reply, tensors_reply
from .rootscore import RootQuery
from .tensors import OutputPrefs

FORMATS = ("json", "binary", "root")


def _int(req: dict[str, Any], key: str, default: int | None) -> int | None:
    v = req.get(key, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidRequest(f"'{key}' must be a non-negative integer")
    return v


async def predict_root(plane: DataPlane, call: Call) -> Reply:
    name, version = call.params["name"], call.params.get("version")
    plane.spec(name, version, call.credentials)  # refuse before reading a body in vain
    req = tensors.parse_json(await call.read_body(1024 * 1024))
    if not isinstance(req, dict):
        raise InvalidRequest(
            'the request must be {"url": ..., "tree": ..., "entry_start": ..., "entry_stop": ...}'
        )
    tree = req.get("tree")
    if tree is not None and (not isinstance(tree, str) or not tree):
        raise InvalidRequest("'tree' must be a tree name")
    query = RootQuery(
        req.get("url"),  # checked by the data plane
        tree,
        _int(req, "entry_start", 0) or 0,
        _int(req, "entry_stop", None),
        _int(req, "chunk_size", 100_000) or 100_000,
    )
    fmt = req.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidRequest(f"'format' must be one of {FORMATS}")
    friend = req.get("friend_tree", "scores")
    if not isinstance(friend, str) or not friend.isidentifier():
        raise InvalidRequest("'friend_tree' must be a plain tree name")
    scores = await plane.predict_root(name, version, query, call.credentials)
    info = scores.spec
    if fmt == "root":
        data = await plane.friend_file(scores, friend)
        return Reply(
            data,
            "application/octet-stream",
            {"Content-Disposition": f'attachment; filename="{info.name}_{friend}.root"'},
        )
    rid = req.get("id") if isinstance(req.get("id"), str) else None
    return tensors_reply(
        info.name, info.version, rid, scores.tensors, OutputPrefs(binary_default=fmt == "binary")
    )


def routes() -> list[Route]:
    return [
        Route("/v2/models/{name}/predict_root", route(predict_root), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/predict_root", route(predict_root), methods=["POST"]),
    ]
