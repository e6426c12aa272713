"""The ASGI application: assembles the routes over one shared state, maps errors, serves the web page.

:func:`create_app` builds a Starlette app (FastAPI's core, without the
per-request validation layer, which costs more than our whole hot path) that
serves three APIs over one :class:`~mlaas4hep.serve.repository.Repository`:

* the TFaaS API (:mod:`~mlaas4hep.serve.tfaas`): ``/upload``, ``/models``,
  ``/delete/{model}``, ``/json``, ``/status``;
* the Open Inference Protocol v2 (:mod:`~mlaas4hep.serve.v2`) with the binary
  tensor and repository extensions, plus ``predict_root``;
* ``/`` (a web page), ``/metrics`` (Prometheus).

This module only assembles: the state the routes share is
:class:`~mlaas4hep.serve.state.ServerState`, their HTTP helpers are in
:mod:`.http`, and no route module imports this one.

Every error reaches the client as ``{"error": "..."}``: :class:`ApiError` with
its status, a domain error of :mod:`.errors` with the status of
:data:`~.errors.HTTP_STATUS` (unknown model 404, version conflict 409...),
another :class:`~mlaas4hep.errors.Mlaas4hepError` (bad raw inputs, unreadable
ROOT file, ...) as 400, an unknown route as 404, anything else as 500 (a bug:
logged, and the server goes on).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..errors import Mlaas4hepError
from . import openapi, rootpredict, tfaas, v2
from .auth import Auth, load_token
from .errors import ApiError, error_response, http_status
from .fastpath import FastPath
from .http import state_of
from .metrics import Metrics
from .repository import Repository
from .state import MAX_BODY, MAX_CELLS, MAX_UPLOAD, PRE_TIMEOUT, ROOT_TIMEOUT, ServerState

log = logging.getLogger("mlaas4hep.serve")


# ----------------------------------------------------------------- errors
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _library_error(request: Request, exc: Exception) -> Response:
    return error_response(http_status(exc), str(exc) or type(exc).__name__)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = {
        404: f"no route {request.url.path!r}",
        405: f"method {request.method} not allowed on {request.url.path!r}",
    }
    return error_response(exc.status_code, msg.get(exc.status_code, str(exc.detail)), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error: {type(exc).__name__}")


class Instrument:
    """ASGI middleware counting every HTTP request by route template, method and status."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.http_request(getattr(route, "path", "unmatched"), scope["method"], status)


# ----------------------------------------------------------------- misc routes
def _page() -> str:
    return resources.files("mlaas4hep.serve").joinpath("static/index.html").read_text()


async def index_page(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


async def openapi_route(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def metrics_route(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    st.metrics.loaded.set(len(st.repo.loaded()))
    data, ctype = st.metrics.exposition()
    return Response(data, media_type=ctype)


def create_app(
    repo_dir: str | os.PathLike[str],
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    max_batch: int = 256,
    max_delay_ms: float = 2.0,
    max_loaded: int = 16,
    threads: int | None = None,
    infer_threads: int = 2,
    private: bool = False,
    allow_anonymous_admin: bool = False,
    max_body: int = MAX_BODY,
    max_upload: int = MAX_UPLOAD,
    root_prefixes: tuple[str, ...] | list[str] = ("root://", "http://", "https://"),
    allow_remote: tuple[str, ...] | list[str] = (),
    max_cells: int = MAX_CELLS,
    pre_timeout: float = PRE_TIMEOUT,
    root_timeout: float = ROOT_TIMEOUT,
    shared: bool = False,
) -> FastPath:
    """Build the server app (an ASGI callable) over the repository in ``repo_dir``.

    The result is a :class:`~mlaas4hep.serve.fastpath.FastPath` in front of a
    Starlette app (``.app``); ``.state`` is the :class:`ServerState`.

    ``token`` (or ``token_file``, or ``$MLAAS4HEP_TOKEN``) protects upload,
    delete, load and unload; ``private`` protects reads and inference too.
    ``max_batch``/``max_delay_ms`` are the dynamic batcher defaults (a model's
    ``serving.json`` overrides them; ``max_batch=1`` disables batching).
    ``threads`` is onnxruntime's intra-op threads per session (default: all
    cores), ``infer_threads`` how many onnxruntime calls may run at once.
    ``root_prefixes`` lists what ``predict_root`` may open: URL schemes and
    local directories (local paths are refused unless a directory is listed);
    remote URLs are refused too unless their host is in ``allow_remote``
    (``"*"``: any host), so by default no client can make the server connect
    anywhere. ``root_timeout`` bounds one ``predict_root`` request (seconds).
    ``max_cells`` bounds events x features of one request's preprocessing, and
    ``pre_timeout`` its time (it runs off the event loop).
    ``shared`` says that other processes serve the same ``repo_dir`` (workers).
    """
    repo = Repository(repo_dir, max_loaded=max_loaded, threads=threads, shared=shared)
    auth = Auth(load_token(token, token_file), private=private, allow_anonymous_admin=allow_anonymous_admin)
    state = ServerState(
        repo,
        auth,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_body=max_body,
        max_upload=max_upload,
        infer_threads=infer_threads,
        root_prefixes=tuple(_prefix(p) for p in root_prefixes),
        allow_remote=tuple(allow_remote),
        max_cells=max_cells,
        pre_timeout=pre_timeout,
        root_timeout=root_timeout,
    )
    routes = [
        Route("/", index_page, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
        *tfaas.routes(),
        *v2.routes(),
        *rootpredict.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Instrument, metrics=state.metrics)],
        exception_handlers={
            ApiError: _api_error,
            Mlaas4hepError: _library_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=_lifespan(state),
    )
    app.state.server = state
    app.state.page = _page()
    app.state.openapi = orjson.dumps(openapi.document())
    return FastPath(app, state, v2.infer, tfaas.predict_json)


def _lifespan(state: ServerState) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        state.close()

    return lifespan


def _prefix(p: str) -> str:
    if "://" in p:
        return p
    return str(Path(p).resolve()).rstrip("/") + "/"
