"""The ASGI application: assembles the routes over one data plane, maps errors, serves the web page.

:func:`create_app` builds a Starlette app (FastAPI's core, without the
per-request validation layer, which costs more than our whole hot path) that
serves three APIs over one :class:`~mlaas4hep.serve.dataplane.DataPlane`:

* the TFaaS API (:mod:`~mlaas4hep.serve.tfaas`): ``/upload``, ``/models``,
  ``/delete/{model}``, ``/json``, ``/status``;
* the Open Inference Protocol v2 (:mod:`~mlaas4hep.serve.v2`) with the binary
  tensor and repository extensions, plus ``predict_root`` (:mod:`.rootpredict`);
* ``/`` (a web page), ``/metrics`` (Prometheus);
* with ``--jobs``, the training jobs API (:mod:`.jobs`): ``/jobs``...

This module only assembles: the routes' handlers take the data plane and a
:class:`~mlaas4hep.serve.http.Call`, and no route module imports this one.

Every error reaches the client as ``{"error": "..."}``: a domain error of
:mod:`.errors` or another :class:`~mlaas4hep.errors.Mlaas4hepError` with the
status of :data:`~mlaas4hep.serve.http.HTTP_STATUS` (unknown model 404,
version conflict 409, bad input 400...), an unknown route as 404, anything
else as 500 (a bug: logged, and the server goes on).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

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
from .config import ServeConfig
from .dataplane import DataPlane
from .fastpath import FastPath
from .http import error_reply, http_status, plane_of, reply_for
from .metrics import Metrics
from .repository import Repository

if TYPE_CHECKING:
    from .jobs.manager import JobManager

log = logging.getLogger("mlaas4hep.serve")


# ----------------------------------------------------------------- errors
async def _library_error(request: Request, exc: Exception) -> Response:
    return reply_for(exc).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = {
        404: f"no route {request.url.path!r}",
        405: f"method {request.method} not allowed on {request.url.path!r}",
    }
    return error_reply(exc.status_code, msg.get(exc.status_code, str(exc.detail)), exc.headers).response()


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_reply(500, f"internal server error: {type(exc).__name__}").response()


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
    plane = plane_of(request)
    plane.check_read(request.headers.get("authorization"))
    data, ctype = plane.metrics_exposition()
    return Response(data, media_type=ctype)


def create_app(
    repo_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    config: ServeConfig | None = None,
    **options: Any,
) -> FastPath:
    """Build the server app (an ASGI callable) over the repository in ``repo_dir``.

    The result is a :class:`~mlaas4hep.serve.fastpath.FastPath` in front of a
    Starlette app (``.app``); ``.plane`` is the :class:`DataPlane`.

    ``config`` (a :class:`~mlaas4hep.serve.config.ServeConfig`) holds every
    option; ``options`` are the same by name, for a config made here
    (``create_app("models/", max_batch=64, data_dir=["/data"])``). ``token``
    (else the config's ``token_file``, else ``$MLAAS4HEP_TOKEN``) protects
    upload, delete, load and unload; ``private`` protects reads and inference
    too. Other processes (workers, replicas) may serve the same directory: the
    repository sees their changes (see :mod:`.repository`).
    """
    if config is None:
        config = ServeConfig(repo=str(repo_dir or ""), **options).check()
    elif options or repo_dir is not None:
        config = config.replace(**options, **({"repo": str(repo_dir)} if repo_dir is not None else {}))
    repo = Repository(
        config.repo,
        max_loaded=config.max_loaded,
        threads=config.threads,
        spin=config.spin,
        read_only=True if config.read_only else None,  # None: detected
        smoke_seconds=config.smoke_seconds,
    )
    auth = Auth(
        load_token(token, config.token_file), private=config.private, allow_anonymous_admin=config.no_auth
    )
    plane = DataPlane(repo, auth, config, Metrics(http_status))
    routes = [
        Route("/", index_page, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
        *tfaas.routes(),
        *v2.routes(),
        *rootpredict.routes(),
    ]
    jobs = None
    if config.jobs:
        from .identity import Identity
        from .jobs.manager import JobManager
        from .jobs.routes import routes as job_routes

        jobs = JobManager(config, repo)
        routes += job_routes()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Instrument, metrics=plane.metrics)],
        exception_handlers={
            Mlaas4hepError: _library_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=_lifespan(plane, jobs),
    )
    app.state.plane = plane
    if jobs is not None:
        app.state.jobs, app.state.identity = jobs, Identity(config, token)
    app.state.page = _page()
    app.state.openapi = orjson.dumps(openapi.document(jobs=jobs is not None))
    return FastPath(app, plane, v2.infer, tfaas.predict_json)


def _lifespan(plane: DataPlane, jobs: JobManager | None = None) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if jobs is not None:
            jobs.start()
        yield
        if jobs is not None:
            await jobs.stop()
        plane.close()

    return lifespan
