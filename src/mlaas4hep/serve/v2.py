"""Open Inference Protocol v2 (KServe / Triton HTTP API), with its extensions.

=====================================================  ==========================================
``GET  /v2``                                           server metadata (name, version, extensions)
``GET  /v2/health/live``, ``/v2/health/ready``         probes
``GET  /v2/models/{name}[/versions/{v}]``              model metadata (inputs, outputs, labels)
``GET  /v2/models/{name}[/versions/{v}]/ready``        200 when ready, 400 when unloaded
``GET  /v2/models/{name}[/versions/{v}]/config``       Triton's model configuration (:mod:`.tritonconfig`)
``POST /v2/models/{name}[/versions/{v}]/infer``        inference, JSON or binary tensors
``POST /v2/repository/index``                          every model version and its state
``POST /v2/repository/models/{name}/load|unload``      (token) load / unload a model
=====================================================  ==========================================

A model takes either its feature tensor (``FP32``, shape ``[n, F]``, named as
in the metadata), or **raw inputs**: one tensor per raw branch the bundle's
preprocessing reads, e.g. ``MET_pt`` (shape ``[n]``, any numeric datatype) and
``Jet_pt`` (shape ``[n]`` with ``data`` a list of lists, one per event). The
server then applies the bundle's normalisation and padding, so clients never
re-implement them. The output is ``FP32`` ``[n, K]``: the probability of label
1 for a binary classifier (K=1), else one column per label.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..errors import Mlaas4hepError
from . import tensors, tritonconfig
from .app import ModelInfo, ServerState, read_body, served_by_fastpath, state_of
from .errors import ApiError
from .fastpath import Call, Reply
from .tensors import InferRequest, InputTensor

EXTENSIONS = ["binary_tensor_data", "model_repository", "raw_inputs", "predict_root"]
_JSON = "application/json"


def json_response(obj: Any, status: int = 200) -> Response:
    body, _ = tensors.encode_response(obj, [])
    return Response(body, status_code=status, media_type=_JSON)


# ----------------------------------------------------------------- metadata
async def server_metadata(request: Request) -> Response:
    return json_response({"name": "mlaas4hep", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    return json_response({"ready": True})


def model_metadata_dict(st: ServerState, info: ModelInfo) -> dict[str, Any]:
    meta = info.meta
    return {
        "name": info.name,
        "versions": [str(v) for v in st.repo.versions(info.name)],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": info.input_name, "datatype": "FP32", "shape": [-1, len(info.features)]}],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.n_outputs]}],
        "parameters": {
            "version": str(info.version),
            "labels": info.labels,
            "features": info.features,
            "raw_inputs": info.raw_inputs,
            "jagged": {n: k for n, k in info.preprocessor.jagged} if info.preprocessor else {},
            "tree": info.preprocessor.tree if info.preprocessor else None,
            "framework": meta.get("framework"),
            "description": meta.get("description", ""),
            "created": meta.get("created"),
            "metrics": meta.get("metrics", {}),
        },
    }


async def model_metadata(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    info = st.model(request.path_params["name"], request.path_params.get("version"))
    return json_response(model_metadata_dict(st, info))


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
        x = await features(st, info, req)
        y = await st.infer(info, x)
        return infer_reply(info, req, {info.output_name: y})


def infer_reply(info: ModelInfo, req: InferRequest, results: dict[str, np.ndarray]) -> Reply:
    """The reply to an infer request: requested outputs, JSON or binary."""
    names = list(results) if req.outputs is None else req.outputs
    header: dict[str, Any] = {"model_name": info.name, "model_version": str(info.version)}
    if req.id is not None:
        header["id"] = req.id
    outs, blobs = [], []
    for name in names:
        if name not in results:
            raise ApiError(400, f"unknown output {name!r}; model {info.name!r} has {list(results)}")
        t, raw = tensors.output_tensor(name, results[name], req.wants_binary(name))
        outs.append(t)
        if raw is not None:
            blobs.append(raw)
    header["outputs"] = outs
    body, hlen = tensors.encode_response(header, blobs)
    if hlen is None:
        return Reply(body)
    return Reply(body, "application/octet-stream", {"Inference-Header-Content-Length": str(hlen)})


def infer_response(info: ModelInfo, req: InferRequest, results: dict[str, np.ndarray]) -> Response:
    """:func:`infer_reply` as a Starlette response."""
    return infer_reply(info, req, results).response()


async def features(st: ServerState, info: ModelInfo, req: InferRequest) -> np.ndarray:
    """The model's feature rows from the request: the feature tensor itself, or raw inputs preprocessed."""
    F = len(info.features)
    first = req.inputs[0]
    if first.name == info.input_name:
        if len(req.inputs) != 1:
            raise ApiError(
                400, f"model {info.name!r} takes one input {info.input_name!r}; got {len(req.inputs)}"
            )
        if first.datatype != "FP32":
            raise ApiError(
                400, f"input {first.name!r} has datatype {first.datatype} but the model expects FP32"
            )
        x = first.data
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != F:
            raise ApiError(
                400, f"input {first.name!r} has shape {first.shape} but the model expects [n, {F}]"
            )
        return x
    if info.preprocessor is None:
        raise ApiError(
            400,
            f"unknown input {first.name!r}: model {info.name!r} takes one input "
            f"{info.input_name!r} of shape [n, {F}]",
        )
    names = [t.name for t in req.inputs]
    unknown = [n for n in names if n not in info.raw_inputs]
    if unknown:
        raise ApiError(
            400,
            f"unknown inputs {unknown}: model {info.name!r} takes {info.input_name!r} "
            f"or the raw inputs {info.raw_inputs}",
        )
    missing = [n for n in info.raw_inputs if n not in names]
    if missing:
        raise ApiError(400, f"missing raw inputs {missing}; model {info.name!r} needs {info.raw_inputs}")
    # what the preprocessing will allocate is known before it runs: events x features
    st.check_cells(max(_events(t) for t in req.inputs), F)
    return await st.preprocess(_raw_features, info, req.inputs)


def _events(t: InputTensor) -> int:
    return int(t.data.shape[0]) if isinstance(t.data, np.ndarray) else len(t.data)


def _raw_features(info: ModelInfo, inputs: list[InputTensor]) -> np.ndarray:
    """Raw input tensors to the model's feature rows (runs in the preprocessing lane)."""
    arrays = {t.name: _raw_array(t) for t in inputs}
    lengths = {n: len(a) for n, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ApiError(400, f"raw inputs have different numbers of events: {lengths}")
    return _transform(info, arrays)


def _transform(info: ModelInfo, arrays: dict[str, Any]) -> np.ndarray:
    assert info.preprocessor is not None
    try:
        return info.preprocessor.transform(arrays, apply_selection=False)[0]
    except Mlaas4hepError:
        raise
    except Exception as err:  # awkward/numpy errors on odd client data
        raise ApiError(400, f"cannot preprocess the raw inputs: {type(err).__name__}: {err}") from None


def _raw_array(t: InputTensor) -> Any:
    """One raw branch: numpy ``[n]`` (flat) or ``[n, k]``, or an awkward list-per-event array."""
    if isinstance(t.data, np.ndarray):
        if t.data.ndim > 2:
            raise ApiError(400, f"raw input {t.name!r} must have shape [n] or [n, k], got {t.shape}")
        return t.data
    data = t.data
    if not all(isinstance(e, list) for e in data):
        raise ApiError(400, f"raw input {t.name!r}: 'data' mixes lists and numbers; send one list per event")
    counts = np.fromiter((len(e) for e in data), dtype=np.int64, count=len(data))
    flat = [v for e in data for v in e]
    try:
        content = np.asarray(flat, dtype=np.float64) if not flat else np.asarray(flat)
    except (ValueError, TypeError, OverflowError):
        content = np.empty((0, 0))
    if content.dtype.kind not in "biuf" or content.ndim != 1:
        raise ApiError(400, f"raw input {t.name!r}: each event must be a list of numbers")
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    layout = ak.contents.ListOffsetArray(
        ak.index.Index64(offsets), ak.contents.NumpyArray(content.astype(np.float64))
    )
    return ak.Array(layout)


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
    ]
    for base in (m, mv):
        out += [
            Route(base, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", model_config, methods=["GET"]),
            Route(base + "/infer", served_by_fastpath, methods=["POST"]),
        ]
    return out
