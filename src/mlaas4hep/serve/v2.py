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

The checks of names, datatypes and shapes are the bundle's own
(:class:`~mlaas4hep.bundle_spec.BundleSpec`), shared with gRPC and the
in-process ``Predictor``; this module only speaks the HTTP protocol.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from . import metadata, statistics, tensors, tritonconfig
from .errors import ApiError
from .fastpath import Call, Reply
from .http import infer_reply, json_response, read_body, served_by_fastpath, state_of
from .state import ServerState


# ----------------------------------------------------------------- metadata
async def server_metadata(request: Request) -> Response:
    return json_response({"name": "mlaas4hep", "version": __version__, "extensions": metadata.EXTENSIONS})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    return json_response({"ready": True})


async def model_metadata(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    info = st.model(request.path_params["name"], request.path_params.get("version"))
    return json_response(metadata.model_metadata(info, st.repo.versions(info.name)))


async def model_ready(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    info = st.model(request.path_params["name"], request.path_params.get("version"))
    if not st.repo.is_ready(info.name):
        raise ApiError(400, f"model {info.name!r} is unloaded")
    return json_response({"name": info.name, "version": str(info.version), "ready": True})


async def model_config(request: Request) -> Response:
    """Triton's model configuration (see :mod:`.tritonconfig`): what Triton clients read to batch."""
    st = state_of(request)
    st.auth.require_read(request)
    info = st.model(request.path_params["name"], request.path_params.get("version"))
    b = st.batcher(info)
    return json_response(tritonconfig.model_config(info, b.max_batch, b.max_delay))


async def model_stats(request: Request) -> Response:
    """Triton's statistics of one model, or of every model (``/v2/models/stats``)."""
    st = state_of(request)
    st.auth.require_read(request)
    name = request.path_params.get("name")
    return json_response(statistics.statistics(st, name, request.path_params.get("version")))


# ----------------------------------------------------------------- infer
async def infer(st: ServerState, call: Call) -> Reply:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` (served by :mod:`.fastpath`)."""
    with st.metrics.observe() as obs:
        st.auth.require_read_header(call.headers.get("authorization"))
        info = st.model(call.params["name"], call.params.get("version"))
        obs.model = info.name
        body = await call.read_body(st.max_body)
        hlen = tensors.header_length(call.headers.get("inference-header-content-length"), len(body))
        req = tensors.decode_request(body, hlen, ragged_ok=info.preprocessor is not None)
        inputs = await st.inputs(info, {t.name: t.data for t in req.inputs})
        y = await st.infer(info, inputs)
        return infer_reply(info.name, info.version, req, {info.output_name: y})


# ----------------------------------------------------------------- repository extension
async def repository_index(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    await st.blocking(st.repo.rescan)
    return json_response(st.repo.index())


async def repository_load(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_admin(request)
    name = request.path_params["name"]
    body = await read_body(request, 1024 * 1024)
    if body.strip():
        req = tensors.parse_json(body)
        params = req.get("parameters") if isinstance(req, dict) else None
        cfg = (params or {}).get("config") if isinstance(params, dict) else None
        if cfg is not None:
            if isinstance(cfg, str):
                cfg = tensors.parse_json(cfg.encode(), "parameters.config")
            if not isinstance(cfg, dict):
                raise ApiError(400, "parameters.config must be a JSON object of serving settings")
            await st.blocking(st.repo.rescan)
            st.repo.set_serving(name, cfg)
    await st.blocking(st.repo.load, name)
    st.forget(name)
    return json_response({"name": name, "state": "READY"})


async def repository_unload(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_admin(request)
    name = request.path_params["name"]
    await st.blocking(st.repo.unload, name)
    st.forget(name)
    return json_response({"name": name, "state": "UNAVAILABLE"})


def routes() -> list[Route]:
    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    out = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST", "GET"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/v2/models/stats", model_stats, methods=["GET"]),  # before /v2/models/{name}
    ]
    for base in (m, mv):
        out += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", model_config, methods=["GET"]),
            Route(base + "/stats", model_stats, methods=["GET"]),
            Route(base + "/infer", served_by_fastpath, methods=["POST"]),
        ]
    return out
