"""Open Inference Protocol v2 (KServe / Triton HTTP API), with its extensions.

=====================================================  ==========================================
``GET  /v2``                                           server metadata (name, version, extensions)
``GET  /v2/health/live``, ``/v2/health/ready``         probes
``GET  /v2/models/{name}[/versions/{v}]``              model metadata (inputs, outputs, labels)
``GET  /v2/models/{name}[/versions/{v}]/ready``        200 when ready, 400 when unloaded
``GET  /v2/models/{name}[/versions/{v}]/config``       Triton's model configuration (:mod:`.tritonconfig`)
``GET  /v2/models[/{name}[/versions/{v}]]/stats``      Triton's model statistics (:mod:`.statistics`)
``POST /v2/models/{name}[/versions/{v}]/infer``        inference, JSON or binary tensors
``POST /v2/repository/index``                          every model version and its state
``POST /v2/repository/models/{name}/load|unload``      (token) load / unload a model
=====================================================  ==========================================

A model takes either its input tensors as the metadata lists them (a flat
bundle: one ``FP32`` ``[n, F]`` feature tensor; a bundle of object groups: one
tensor per group and a ``BOOL`` mask per object group, e.g. ``jets`` ``[n, 10, 5]``,
``jets_mask`` ``[n, 10]``, ``event`` ``[n, 3]``; all of them, typed JSON ``data``
or binary), or **raw inputs**: one tensor per raw branch the bundle's
preprocessing reads, e.g. ``MET_pt`` (shape ``[n]``, any numeric datatype) and
``Jet_pt`` (shape ``[n]`` with ``data`` a list of lists, one per event). The
server then applies the bundle's normalisation and padding (and, for a grouped
bundle, splits the result into its tensors), so clients never re-implement
them. The output is ``FP32`` ``[n, K]``: the probability of label 1 for a
binary classifier (K=1), else one column per label.

Each route decodes its request, calls the :class:`~mlaas4hep.serve.dataplane.DataPlane`
(which checks the token, the model and the inputs, as for gRPC), and encodes
its answer; this module only speaks the HTTP protocol.
"""

from __future__ import annotations

from starlette.routing import Route

from . import tensors
from .dataplane import DataPlane
from .endpoints import route
from .errors import InvalidRequest, ModelUnloaded
from .http import Call, Reply, infer_reply, json_reply


# ----------------------------------------------------------------- health and metadata
async def server_metadata(plane: DataPlane, call: Call) -> Reply:
    return json_reply(plane.server_metadata())


async def live(plane: DataPlane, call: Call) -> Reply:
    return json_reply({"live": plane.live()})


async def ready(plane: DataPlane, call: Call) -> Reply:
    ok = plane.ready()
    return json_reply({"ready": ok}, 200 if ok else 503)


def _model(call: Call) -> tuple[str, str | None]:
    return call.params["name"], call.params.get("version")


async def model_metadata(plane: DataPlane, call: Call) -> Reply:
    return json_reply(plane.model_metadata(*_model(call), call.credentials))


async def model_ready(plane: DataPlane, call: Call) -> Reply:
    name, version = _model(call)
    info = plane.spec(name, version, call.credentials)
    if not plane.model_ready(info.name, info.version, call.credentials):
        raise ModelUnloaded(f"model {info.name!r} is unloaded")
    return json_reply({"name": info.name, "version": str(info.version), "ready": True})


async def model_config(plane: DataPlane, call: Call) -> Reply:
    """Triton's model configuration (see :mod:`.tritonconfig`): what Triton clients read to batch."""
    return json_reply(plane.model_config(*_model(call), call.credentials))


async def model_stats(plane: DataPlane, call: Call) -> Reply:
    """Triton's statistics of one model, or of every model (``/v2/models/stats``)."""
    return json_reply(plane.statistics(call.params.get("name"), call.params.get("version"), call.credentials))


# ----------------------------------------------------------------- infer
async def infer(plane: DataPlane, call: Call) -> Reply:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` (also served by :mod:`.fastpath`)."""
    name, version = _model(call)
    info = plane.spec(name, version, call.credentials)  # refuse before reading a body in vain
    body = await call.read_body(plane.config.max_body)
    hlen = tensors.header_length(call.headers.get("inference-header-content-length"), len(body))
    req, prefs = tensors.decode_request(
        body, hlen, info.name, info.version, ragged_ok=info.preprocessor is not None
    )
    return infer_reply(await plane.infer(req, call.credentials, info), prefs)


# ----------------------------------------------------------------- repository extension
async def repository_index(plane: DataPlane, call: Call) -> Reply:
    body = await call.read_body(1024 * 1024)
    ready_only = False
    if body.strip():
        req = tensors.parse_json(body)
        ready_only = isinstance(req, dict) and req.get("ready") is True
    return json_reply(await plane.repository_index(call.credentials, ready_only))


async def repository_load(plane: DataPlane, call: Call) -> Reply:
    plane.check_admin(call.credentials)
    name = call.params["name"]
    body = await call.read_body(1024 * 1024)
    cfg = None
    if body.strip():
        req = tensors.parse_json(body)
        params = req.get("parameters") if isinstance(req, dict) else None
        cfg = (params or {}).get("config") if isinstance(params, dict) else None
        if isinstance(cfg, str):
            cfg = tensors.parse_json(cfg.encode(), "parameters.config")
        if cfg is not None and not isinstance(cfg, dict):
            raise InvalidRequest("parameters.config must be a JSON object of serving settings")
    await plane.load(name, cfg, call.credentials)
    return json_reply({"name": name, "state": "READY"})


async def repository_unload(plane: DataPlane, call: Call) -> Reply:
    name = call.params["name"]
    await plane.unload(name, call.credentials)
    return json_reply({"name": name, "state": "UNAVAILABLE"})


def routes() -> list[Route]:
    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    out = [
        Route("/v2", route(server_metadata), methods=["GET"]),
        Route("/v2/health/live", route(live), methods=["GET"]),
        Route("/v2/health/ready", route(ready), methods=["GET"]),
        Route("/v2/repository/index", route(repository_index), methods=["POST", "GET"]),
        Route("/v2/repository/models/{name}/load", route(repository_load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", route(repository_unload), methods=["POST"]),
        Route("/v2/models/stats", route(model_stats), methods=["GET"]),  # before /v2/models/{name}
    ]
    for base in (m, mv):
        out += [
            Route(base, route(model_metadata), methods=["GET"]),
            Route(base + "/ready", route(model_ready), methods=["GET"]),
            Route(base + "/config", route(model_config), methods=["GET"]),
            Route(base + "/stats", route(model_stats), methods=["GET"]),
            Route(base + "/infer", route(infer), methods=["POST"]),
        ]
    return out
