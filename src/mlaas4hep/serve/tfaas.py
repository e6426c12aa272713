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

import json
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import bundle_archive as archive
from ..bundle_spec import BundleSpec, InputError
from . import forms, tensors
from .dataplane import DataPlane, InferRequest
from .endpoints import route
from .errors import BodyTimedOut, InvalidRequest, TooLarge
from .http import Call, Reply, json_reply, json_response, plane_of


# ----------------------------------------------------------------- repository
async def upload(request: Request) -> Response:
    plane = plane_of(request)
    credentials = request.headers.get("authorization")
    plane.check_admin(credentials)  # before reading what may be 512 MB
    limit = plane.config.max_upload
    ctype = request.headers.get("content-type", "")
    name = request.query_params.get("name")
    version = request.query_params.get("version")
    if ctype.startswith("multipart/form-data"):
        files, form_name = await _form_files(request, limit)
        name = name or form_name
    else:
        body = await Call.of(request).read_body(limit)
        if not body:
            raise InvalidRequest(
                "empty upload: send a bundle .tar.gz as the body or as the multipart field 'bundle'"
            )
        files = _unpacker(bytes(body), limit)
    installed, v = await plane.install(files, name, version, credentials)
    return json_response({"name": installed, "version": v, "status": "installed"})


def _unpacker(data: bytes, limit: int) -> Any:
    """Checks and unpacks an archive when called (off the event loop); unpacked, a bundle may
    not exceed the upload limit either."""
    return lambda: archive.read_archive(data, max_member=limit, max_total=limit)


async def _form_files(request: Request, limit: int) -> tuple[Any, str | None]:
    try:  # the limit is enforced on the stream itself: nothing past it is read, spooled or parsed
        form = await forms.limited(request, limit).form(max_files=8, max_fields=16)
    except (TooLarge, BodyTimedOut):
        raise
    except Exception as err:  # starlette's MultiPartException, HTTPException
        raise InvalidRequest(f"malformed multipart form: {getattr(err, 'detail', err)}") from None
    try:
        name = form.get("name")
        name = name if isinstance(name, str) and name else None
        upload = form.get("bundle")
        if isinstance(upload, UploadFile):
            return _unpacker(await forms.read_file(upload, limit), limit), name
        model = form.get("model")
        if not isinstance(model, UploadFile):
            raise InvalidRequest("the form needs a file field 'bundle' (a .tar.gz) or 'model' (an ONNX file)")
        files = {"model.onnx": await forms.read_file(model, limit)}
        for field, fname in (("params", "params.json"), ("labels", "labels.txt")):
            value = form.get(field)
            if isinstance(value, UploadFile):
                files[fname] = await forms.read_file(value, 1024 * 1024)
            elif isinstance(value, str) and value:
                files[fname] = value.encode()
        if "params.json" in files:
            params = tensors.parse_json(files["params.json"], "params field")
            if isinstance(params, dict):  # the files are stored under our fixed names
                params.update(model="model.onnx", labels="labels.txt")
                name = name or (params.get("name") if isinstance(params.get("name"), str) else None)
                files["params.json"] = json.dumps(params).encode()
        return files, name
    finally:
        await form.close()


async def models(plane: DataPlane, call: Call) -> Reply:
    return json_reply(plane.models(call.credentials))


async def delete(plane: DataPlane, call: Call) -> Reply:
    name = call.params["model"]
    gone = await plane.delete(name, call.query.get("version"), call.credentials)
    return json_reply({"name": name, "deleted_versions": gone})


async def status(plane: DataPlane, call: Call) -> Reply:
    return json_reply(plane.status(call.credentials))


# ----------------------------------------------------------------- inference
async def predict_json(plane: DataPlane, call: Call) -> Reply:
    """``POST /json`` (also served by :mod:`.fastpath`)."""
    plane.check_read(call.credentials)  # before reading a body in vain
    req = tensors.parse_json(await call.read_body(plane.config.max_body))
    if not isinstance(req, dict):
        raise InvalidRequest('the request must be {"keys": [...], "values": [...], "model": "name"}')
    name = req.get("model")
    if not isinstance(name, str):
        raise InvalidRequest("'model' must be the name of a model")
    info = plane.spec(name, req.get("version"), call.credentials)
    keys, values = req.get("keys"), req.get("values")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InvalidRequest("'keys' must be a list of feature (or raw branch) names")
    if not isinstance(values, list) or not values:
        raise InvalidRequest("'values' must be a non-empty list")
    inputs, single = _raw(info, keys, values) if _is_raw(info, keys) else _rows(info, keys, values)
    result = await plane.infer(InferRequest(info.name, inputs, info.version), call.credentials, info)
    y = np.asarray(result.outputs[info.output_name])
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


def _raw(info: BundleSpec, keys: list[str], values: list[Any]) -> tuple[dict[str, Any], bool]:
    """Raw branch values as named inputs (a list per branch; the data plane preprocesses them),
    and whether the request was for a single event."""
    if len(values) != len(keys):
        raise InvalidRequest(f"{len(keys)} keys but {len(values)} values")
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
            raise InvalidRequest(f"raw input {k!r}: expected a list of values, one per event")
        given[k] = v
    return given, single


def _rows(info: BundleSpec, keys: list[str], values: list[Any]) -> tuple[dict[str, Any], bool]:
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
        raise InvalidRequest(f"'values' must be a list of numbers (or of rows of numbers): {err}") from None
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != len(keys):
        raise InvalidRequest(
            f"'values' must hold {len(keys)} numbers per row (one per key), got shape {list(x.shape)}"
        )
    return {info.input_name: x if order is None else x[:, order]}, single


def routes() -> list[Route]:
    return [
        Route("/upload", upload, methods=["POST"]),
        Route("/models", route(models), methods=["GET"]),
        Route("/delete/{model}", route(delete), methods=["DELETE", "POST"]),
        Route("/json", route(predict_json), methods=["POST"]),
        Route("/status", route(status), methods=["GET"]),
    ]
