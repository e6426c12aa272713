"""The OpenAPI 3.0 description of the server, served at ``GET /openapi.json``.

Written by hand (the app is plain Starlette, with no per-request validation
layer to derive it from), route by route, from what the handlers accept:
the TFaaS API (:mod:`.tfaas`), the Open Inference Protocol v2 with its
repository extension (:mod:`.v2`) and ``predict_root`` (:mod:`.rootpredict`).
Clients and fuzzers (the test suite runs schemathesis against it) read it;
``tests/serve/test_openapi.py`` checks that it lists every route of the app.

Every error is ``{"error": "message"}`` with a 4xx status (:data:`ERROR`);
a 5xx is a bug of ours.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

JSON = "application/json"
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model name",
}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
    "description": "model version (an integer from 1 to 2**63-1)",
}
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
            ],
        },
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 8},
        "data": {
            "type": "array",
            "description": "flat or nested values; for jagged raw inputs, a list per event",
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    },
}
INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}
PREDICT_ROOT = {
    "type": "object",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "description": "a path under --data-dir, or a root:// or http(s):// URL"},
        "tree": {"type": "string"},
        "entry_start": {"type": "integer", "minimum": 0},
        "entry_stop": {"type": "integer", "minimum": 0},
        "chunk_size": {"type": "integer", "minimum": 0},
        "format": {"type": "string", "enum": ["json", "binary", "root"]},
        "friend_tree": {"type": "string"},
        "id": {"type": "string"},
    },
}
TFAAS_JSON = {
    "type": "object",
    "required": ["model", "keys", "values"],
    "properties": {
        "model": {"type": "string"},
        "version": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "keys": {"type": "array", "items": {"type": "string"}},
        "values": {
            "type": "array",
            "minItems": 1,
            "description": "one row, a list of rows, or raw branch values",
        },
    },
}
LOAD = {
    "type": "object",
    "properties": {
        "parameters": {
            "type": "object",
            "properties": {
                "config": {
                    "type": "object",
                    "properties": {
                        "max_batch": {"type": "integer", "minimum": 1, "maximum": 65536},
                        "max_delay_ms": {"type": "number", "minimum": 0, "maximum": 10000},
                    },
                }
            },
        }
    },
}


def _responses(ok: str, ok_schema: dict[str, Any] | None = None, *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok}}
    if ok_schema is not None:
        out["200"]["content"] = {JSON: {"schema": ok_schema}}
    for c in codes:
        out[str(c)] = {"description": _REASONS[c], "content": {JSON: {"schema": ERROR}}}
    return out


_REASONS = {
    400: "malformed request, or the model refuses it",
    401: "a bearer token is required",
    403: "the token is wrong, or the server does not open this file",
    404: "unknown model, version or route",
    409: "the version exists already",
    413: "the body, the upload or the work asked for exceeds the server's limits",
    415: "unsupported Content-Encoding",
    429: "too many such requests at once: retry later",
    503: "the model is broken on disk, or the server is shutting down",
}


def _op(
    summary: str,
    ok: str,
    ok_schema: dict[str, Any] | None = None,
    codes: tuple[int, ...] = (400, 404),
    **extra: Any,
) -> dict[str, Any]:
    return {"summary": summary, "responses": _responses(ok, ok_schema, *codes), **extra}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


JOB = {
    "type": "object",
    "required": ["id", "name", "user", "state"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "user": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "progress": {"type": "object", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "model": {"type": "object", "nullable": True},
    },
}


def jobs_paths() -> dict[str, Any]:
    """The routes of the jobs API (``serve --jobs``, :mod:`.jobs.routes`)."""
    user: list[dict[str, list[str]]] = [{"bearer": []}]
    job_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    form = {
        "type": "object",
        "properties": {
            "config": {"type": "string", "format": "binary"},
            "model": {"type": "string", "format": "binary"},
            "folder": {"type": "string", "format": "binary"},
            "name": {"type": "string"},
            "cpus": {"type": "integer"},
            "memory": {"type": "number"},
            "device": {"type": "string"},
            "time_limit": {"type": "number"},
        },
    }
    own = (401, 403, 404)
    submit = _op(
        "submit a training: 'config' + 'model', or 'folder' (.tar.gz); answered at once, queued",
        "the job",
        JOB,
        (400, 401, 413, 429),
        security=user,
        requestBody={"required": True, "content": {"multipart/form-data": {"schema": form}}},
    )
    submit["responses"] = {"202": submit["responses"].pop("200"), **submit["responses"]}
    return {
        "/jobs": {
            "post": submit,
            "get": _op("the caller's jobs, newest first", "jobs", {"type": "object"}, (401,), security=user),
        },
        "/jobs/{id}": {
            "get": _op(
                "one job: state, progress, error, model",
                "the job",
                JOB,
                own,
                security=user,
                parameters=job_id,
            ),
            "delete": _op(
                "cancel a job (its processes end)", "the job", JOB, own, security=user, parameters=job_id
            ),
        },
        "/jobs/{id}/logs": {
            "get": _op(
                "the job's log, streamed while it runs", "text", None, own, security=user, parameters=job_id
            )
        },
        "/jobs/{id}/bundle": {
            "get": _op(
                "the trained bundle (.tar.gz)", "bundle", None, (400, *own), security=user, parameters=job_id
            )
        },
    }


def document(jobs: bool = False) -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call); ``jobs``: with the jobs API."""
    admin: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/upload": {
            "post": _op(
                "install a bundle: a .tar.gz body, or a multipart form (field 'bundle', or TFaaS's "
                "'name', 'model', 'params', 'labels')",
                "installed",
                {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
                },
                (400, 401, 403, 409, 413),
                security=admin,
                parameters=[
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "version", "in": "query", "schema": {"type": "string"}},
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "bundle": {"type": "string", "format": "binary"},
                                    "name": {"type": "string"},
                                    "model": {"type": "string", "format": "binary"},
                                    "params": {"type": "string"},
                                    "labels": {"type": "string"},
                                },
                            }
                        },
                    },
                },
            )
        },
        "/models": {
            "get": _op(
                "every model (TFaaS params, versions, labels, features); versions on disk that are "
                "not served are listed with 'broken': true and the reason in 'error'",
                "the models",
                {"type": "array", "items": {"type": "object"}},
                (401, 403),
            )
        },
        "/delete/{model}": {
            "delete": _op(
                "delete a model (every version, or ?version=N)",
                "deleted",
                {"type": "object"},
                (400, 401, 403, 404),
                security=admin,
                parameters=[
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "version", "in": "query", "schema": {"type": "string"}},
                ],
            )
        },
        "/json": {
            "post": _op(
                "TFaaS inference: class probabilities in label order",
                "probabilities",
                {"type": "array"},
                (400, 401, 403, 404, 413, 415, 429),
                requestBody=_body(TFAAS_JSON),
            )
        },
        "/status": {"get": _op("server health and models", "status", {"type": "object"}, (401, 403))},
        "/v2": {"get": _op("server metadata", "metadata", {"type": "object"}, ())},
        "/v2/health/live": {"get": _op("liveness probe", "live", {"type": "object"}, ())},
        "/v2/health/ready": {"get": _op("readiness probe", "ready", {"type": "object"}, ())},
        "/v2/repository/index": {
            m: _op("every model version and its state", "the index", {"type": "array"}, (401, 403))
            for m in ("post", "get")
        },
        "/metrics": {"get": _op("Prometheus metrics (text format)", "the metrics", None, (401, 403))},
        "/openapi.json": {"get": _op("this document", "the OpenAPI document", {"type": "object"}, ())},
        "/v2/repository/models/{name}/load": {
            "post": _op(
                "load a model (and set its serving options)",
                "loaded",
                {"type": "object"},
                (400, 401, 403, 404),
                security=admin,
                parameters=[NAME],
                requestBody=_body(LOAD, required=False),
            )
        },
        "/v2/repository/models/{name}/unload": {
            "post": _op(
                "unload a model",
                "unloaded",
                {"type": "object"},
                (400, 401, 403, 404),
                security=admin,
                parameters=[NAME],
            )
        },
    }
    paths["/v2/models/stats"] = {
        "get": _op("Triton's model statistics of every model", "stats", {"type": "object"})
    }
    for base, params in (
        ("/v2/models/{name}", [NAME]),
        ("/v2/models/{name}/versions/{version}", [NAME, VERSION]),
    ):
        paths[base] = {"get": _op("model metadata", "metadata", {"type": "object"}, parameters=params)}
        paths[base + "/ready"] = {
            "get": _op(
                "200 when the model is ready, 400 when unloaded",
                "ready",
                {"type": "object"},
                parameters=params,
            )
        }
        paths[base + "/config"] = {
            "get": _op("a Triton-style model configuration", "config", {"type": "object"}, parameters=params)
        }
        paths[base + "/stats"] = {
            "get": _op(
                "Triton's model statistics (counts and durations)",
                "stats",
                {"type": "object"},
                parameters=params,
            )
        }
        paths[base + "/infer"] = {
            "post": _op(
                "inference: the feature tensor, or one tensor per raw branch (binary tensors with "
                "the Inference-Header-Content-Length header)",
                "the outputs",
                INFER_RESPONSE,
                (400, 401, 403, 404, 413, 415, 429, 503),
                parameters=params,
                requestBody=_body(INFER_REQUEST),
            )
        }
        paths[base + "/predict_root"] = {
            "post": _op(
                "scores for every entry of a ROOT file",
                "the scores (JSON or binary tensors, or a ROOT file)",
                None,
                (400, 401, 403, 404, 413, 429, 503),
                parameters=params,
                requestBody=_body(PREDICT_ROOT),
            )
        }
    if jobs:
        paths.update(jobs_paths())
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mlaas4hep inference server",
            "version": __version__,
            "description": "TFaaS API, Open Inference Protocol v2 (KServe/Triton) with the binary tensor "
            "and model repository extensions, raw inputs and predict_root. Errors are "
            '{"error": "..."} with a 4xx status.',
        },
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
