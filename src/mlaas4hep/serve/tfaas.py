"""The TFaaS API, so that existing TFaaS clients keep working.

======================  ==============================================================
``POST /upload``        (token) install a bundle: a ``.tar.gz`` as the raw body
                        (``Content-Type: application/gzip``), or a multipart form with
                        a file field ``bundle``, or TFaaS's form fields ``name``,
                        ``params`` (params.json), ``model`` (an ONNX file), ``labels``.
                        Query parameters ``name`` and ``version`` override the bundle's.
``GET /models``         every model: its params.json, plus versions, labels, features...
``DELETE /delete/{m}``  (token) delete a model (every version, or ``?version=N``)
``POST /json``          ``{"keys": [...], "values": [...], "model": "name"}`` → the list of
                        class probabilities, in the order of the model's labels. ``values``
                        may also be a list of rows (then a list of lists comes back), and
                        ``keys`` may be the raw branch names of the bundle's preprocessing
                        (jagged branches as one list per event).
``GET /status``         server health, models and loaded sessions
======================  ==============================================================
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from .. import __version__
from ..bundle_spec import BundleSpec, InputError
from ..errors import Mlaas4hepError
from . import archive, tensors
from .errors import ApiError
from .fastpath import Call, Reply
from .http import json_response, read_body, served_by_fastpath, state_of
from .state import ServerState


async def upload(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_admin(request)
    ctype = request.headers.get("content-type", "")
    name = request.query_params.get("name")
    version = request.query_params.get("version")
    if ctype.startswith("multipart/form-data"):
        files, form_name = await _form_files(request, st)
        name = name or form_name
    else:
        body = await read_body(request, st.max_upload)
        if not body:
            raise ApiError(
                400, "empty upload: send a bundle .tar.gz as the body or as the multipart field 'bundle'"
            )
        files = await st.blocking(_unpack, st, body)
    installed, v = await st.blocking(st.repo.install, files, name, version)
    st.forget(installed)
    return json_response({"name": installed, "version": v, "status": "installed"})


async def _form_files(request: Request, st: ServerState) -> tuple[dict[str, bytes], str | None]:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > st.max_upload:
        raise ApiError(413, f"the upload of {cl} bytes exceeds the limit of {st.max_upload} bytes")
    try:  # the limit is enforced on the stream itself: nothing past it is read, spooled or parsed
        form = await _limited(request, st.max_upload + _FORM_OVERHEAD).form(max_files=8, max_fields=16)
    except ApiError:
        raise
    except Exception as err:  # starlette's MultiPartException, HTTPException
        raise ApiError(400, f"malformed multipart form: {getattr(err, 'detail', err)}") from None
    try:
        name = form.get("name")
        name = name if isinstance(name, str) and name else None
        upload = form.get("bundle")
        if isinstance(upload, UploadFile):
            data = await _read_limited(upload, st.max_upload)
            return await st.blocking(_unpack, st, data), name
        model = form.get("model")
        if not isinstance(model, UploadFile):
            raise ApiError(400, "the form needs a file field 'bundle' (a .tar.gz) or 'model' (an ONNX file)")
        files = {"model.onnx": await _read_limited(model, st.max_upload)}
        for field, fname in (("params", "params.json"), ("labels", "labels.txt")):
            value = form.get(field)
            if isinstance(value, UploadFile):
                files[fname] = await _read_limited(value, 1024 * 1024)
            elif isinstance(value, str) and value:
                files[fname] = value.encode()
        if "params.json" in files:
            params = tensors.parse_json(files["params.json"], "params field")
            if isinstance(params, dict):  # the files are stored under our fixed names
                params.update(model="model.onnx", labels="labels.txt")
                name = name or (params.get("name") if isinstance(params.get("name"), str) else None)
                import json

                files["params.json"] = json.dumps(params).encode()
        return files, name
    finally:
        await form.close()


_FORM_OVERHEAD = 2**20  # form fields and part headers beside the files


def _limited(request: Request, limit: int) -> Request:
    """The same request, its body stream cut with 413 once more than ``limit`` bytes have arrived.

    A multipart body may come without Content-Length (chunked): without this
    the form parser would spool the whole of it to disk before the size of
    its files could be checked.
    """
    received = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal received
        msg = await receive()
        received += len(msg.get("body", b""))
        if received > limit:
            raise ApiError(413, f"the upload exceeds the limit of {limit} bytes")
        return msg

    return Request(request.scope, counted)


def _unpack(st: ServerState, data: bytes) -> dict[str, bytes]:
    """Check and unpack an archive; unpacked, a bundle may not exceed the upload limit either."""
    return archive.read_archive(data, max_member=st.max_upload, max_total=st.max_upload)


async def _read_limited(f: UploadFile, limit: int) -> bytes:
    data = await f.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"the file {f.filename!r} exceeds the limit of {limit} bytes")
    return data


def model_summary(st: ServerState, info: BundleSpec) -> dict[str, Any]:
    """What ``/models`` and the web page show of a model."""
    meta = info.meta
    params = {
        "name": info.name,
        "model": "model.onnx",
        "labels": "labels.txt",
        "input_node": info.input_name,
        "output_node": info.output_name,
        "description": meta.get("description", ""),
        "timestamp": meta.get("created"),
    }
    params.update(
        {
            "version": info.version,
            "versions": st.repo.versions(info.name),
            "ready": st.repo.is_ready(info.name),
            "framework": meta.get("framework"),
            "label_names": info.labels,
            "n_features": len(info.features),
            "features": info.features,
            # the model's input tensors: one [-1, F] for a flat bundle, each group and mask for a grouped one
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.inputs],
            # a grouped bundle takes named tensors or raw branches, never a flat feature row
            "grouped": info.grouped,
            "raw_inputs": info.raw_inputs,
            "jagged": dict(info.jagged),
            "metrics": meta.get("metrics", {}),
            # the training data's normalisation constants: the web page builds plausible raw examples from them
            "normalization": {
                "normalize": pre.normalize,
                "offset": pre.offset,
                "scale": pre.scale,
                "pad_value": pre.pad_value,
            }
            if (pre := info.preprocessor)
            else None,
        }
    )
    return params


async def models(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    out = []
    for name in st.repo.names():
        try:
            out.append(model_summary(st, st.model(name)))
        except Mlaas4hepError as err:  # a broken or concurrently deleted model does not hide the others
            out.append({"name": name, "error": str(err)})
    for b in st.repo.broken:  # versions on disk that are not served, and why
        out.append({"name": b["name"], "version": b["version"], "broken": True, "error": b["error"]})
    return json_response(out)


async def delete(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_admin(request)
    name = request.path_params["model"]
    gone = await st.blocking(st.repo.delete, name, request.query_params.get("version"))
    st.forget(name)
    return json_response({"name": name, "deleted_versions": gone})


async def predict_json(st: ServerState, call: Call) -> Reply:
    """``POST /json`` (served by :mod:`.fastpath`)."""
    with st.metrics.observe() as obs:
        st.auth.require_read_header(call.headers.get("authorization"))
        req = tensors.parse_json(await call.read_body(st.max_body))
        if not isinstance(req, dict):
            raise ApiError(400, 'the request must be {"keys": [...], "values": [...], "model": "name"}')
        name = req.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "'model' must be the name of a model")
        info = st.model(name, req.get("version"))
        obs.model = info.name
        keys, values = req.get("keys"), req.get("values")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError(400, "'keys' must be a list of feature (or raw branch) names")
        if not isinstance(values, list) or not values:
            raise ApiError(400, "'values' must be a non-empty list")
        if _is_raw(info, keys):  # preprocessing: off the event loop, bounded in time and memory
            x, single = await st.preprocess(_raw_rows, st, info, keys, values)
        else:
            x, single = _rows(info, keys, values)
        y = np.asarray(await st.infer(info, x))
        probs = np.concatenate([1.0 - y, y], axis=1) if (y.shape[1] == 1 and len(info.labels) == 2) else y
        if single and probs.shape[0] == 1:
            probs = probs[0]
        body, _ = tensors.encode_response(probs.astype(np.float64), [])  # float64 prints 0.1 as 0.1
        return Reply(body)


def _is_raw(info: BundleSpec, keys: list[str]) -> bool:
    """Whether TFaaS ``keys`` name raw branches (to preprocess) rather than features."""
    return (
        info.preprocessor is not None
        and bool(keys)
        and set(keys) <= set(info.raw_inputs)
        and set(keys) != set(info.features)
    )


def _raw_rows(
    st: ServerState, info: BundleSpec, keys: list[str], values: list[Any]
) -> tuple[dict[str, np.ndarray], bool]:
    """The model's tensors from raw branch values (runs in the preprocessing lane), and whether
    the request was for a single event."""
    if len(values) != len(keys):
        raise ApiError(400, f"{len(keys)} keys but {len(values)} values")
    # one event: a number per flat branch, a list per jagged one; several: a list per branch
    flat_keys = [k for k in keys if k not in info.jagged]
    first = values[0]
    single = (
        any(not isinstance(values[keys.index(k)], list) for k in flat_keys)
        if flat_keys
        else (not isinstance(first, list) or not first or not isinstance(first[0], list))
    )
    given: dict[str, Any] = {}
    for k, v in zip(keys, values):
        v = [v] if single else v
        if not isinstance(v, list):
            raise ApiError(400, f"raw input {k!r}: expected a list of values, one per event")
        given[k] = v
    arrays = info.raw_arrays(given)
    st.check_cells(len(next(iter(arrays.values()))), info.values_per_event)
    return info.preprocess(arrays), single


def _rows(info: BundleSpec, keys: list[str], values: list[Any]) -> tuple[dict[str, np.ndarray], bool]:
    """The feature tensor from TFaaS ``keys``/``values`` (feature names in any order), and whether
    the request was for a single row."""
    if info.grouped:
        raise InputError(
            f"model {info.name!r} takes the tensors {info.input_names}, not feature rows: send its "
            f"raw inputs {info.raw_inputs} as keys, or use /v2/models/{info.name}/infer"
        )
    order = info.column_order(keys)
    try:
        x = np.asarray(values)
        if x.dtype.kind not in "biuf":
            raise ValueError("values must be numbers")
        x = x.astype(np.float32, copy=False)
    except (ValueError, TypeError, OverflowError) as err:
        raise ApiError(400, f"'values' must be a list of numbers (or of rows of numbers): {err}") from None
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != len(keys):
        raise ApiError(
            400, f"'values' must hold {len(keys)} numbers per row (one per key), got shape {list(x.shape)}"
        )
    return info.check({info.input_name: x if order is None else x[:, order]}), single


async def status(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    return json_response(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - st.started, 1),
            "models": st.repo.names(),
            "loaded": [f"{n}/{v}" for n, v in st.repo.loaded()],
            "auth": st.auth.enabled,
        }
    )


def routes() -> list[Route]:
    return [
        Route("/upload", upload, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
        Route("/delete/{model}", delete, methods=["DELETE", "POST"]),
        Route("/json", served_by_fastpath, methods=["POST"]),
        Route("/status", status, methods=["GET"]),
    ]
