"""Layer 3: the inference service, successor of TFaaS.

Serve a repository of model bundles over HTTP::

    mlaas4hep serve --repo models/ --token-file token.txt --port 8083

or from Python::

    from mlaas4hep.serve import serve, create_app
    serve("models/", port=8083, token_file="token.txt")   # blocks
    app = create_app("models/", token="s3cret")             # an ASGI app

The server speaks the TFaaS API (:mod:`.tfaas`) and the Open Inference Protocol
v2 with the binary tensor and repository extensions (:mod:`.v2`; over gRPC
:mod:`.grpc_server`, with Triton's model configuration :mod:`.tritonconfig`), scores whole
ROOT files (:mod:`.rootpredict`), merges concurrent requests into batches
(:mod:`.batching`), keeps versioned bundles on disk (:mod:`.repository`,
:mod:`.archive`), and exports Prometheus metrics (:mod:`.metrics`). The Python
client is :class:`mlaas4hep.client.Client`. See ``docs/serve.md``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
from typing import Any

from .. import extras
from . import native

native.install()  # the compiled request path, when built and current (see .native); before any of it loads

from .config import ServeConfig  # noqa: E402

__all__ = ["ServeConfig", "create_app", "serve"]


def serve(
    repo_dir: str | os.PathLike[str] | None = None, config: ServeConfig | None = None, **options: Any
) -> None:
    """Run the server with uvicorn until interrupted.

    ``config`` (a :class:`~mlaas4hep.serve.config.ServeConfig`), or its options
    by name (``serve("models/", port=8083, token_file="token.txt")``).

    Uses uvloop and httptools when installed (about twice the requests per
    second of the pure-Python loop and parser). ``workers`` > 1 starts that
    many processes sharing the port and the repository directory: each has
    its own dynamic batcher and its own ``/metrics``, and they see each other's
    uploads and deletions through the repository (see :mod:`.repository`).
    One process serves HTTP on one core; on a 2-core machine two workers
    answer about twice as many small requests.

    ``grpc_port`` also serves Triton's gRPC service (:mod:`.grpc_server`) on
    ``host:grpc_port``, in the same event loop and over the same models (each
    worker listens on it too). ``tls_cert``/``tls_key`` (PEM files) turn on TLS
    for HTTP and gRPC alike. ``metrics_port`` serves ``/metrics`` on a port of its own.
    """
    uvicorn = extras.require("uvicorn", "mlaas4hep serve")
    if config is None:
        config = ServeConfig(repo=str(repo_dir or ""), **options)
    elif options or repo_dir is not None:
        config = config.replace(**options, **({"repo": str(repo_dir)} if repo_dir is not None else {}))
    config = config.check()
    common: dict[str, Any] = dict(
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # httptools with limits on the request head (see .httpproto), serving the inference
        # routes without ASGI (see .httpfront); h11 has its own limits
        http="mlaas4hep.serve.httpfront:FrontProtocol" if importlib.util.find_spec("httptools") else "h11",
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_keep_alive=30,
        server_header=False,
        date_header=False,
        # on SIGINT/SIGTERM, requests still running after this many seconds are cut
        # (a predict_root waiting on a dead storage server must not hold the shutdown)
        timeout_graceful_shutdown=5,
    )
    if config.tls_cert is not None:
        common.update(ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key)
    if config.workers > 1:
        import tempfile

        from .metricsshare import ENV as SHARE

        os.environ[_ENV] = config.to_json()
        os.environ[SHARE] = share = tempfile.mkdtemp(prefix="mlaas4hep-metrics-")
        if config.metrics_port is not None:  # the supervisor serves every worker's metrics, added up
            from .metricsshare import serve_all

            serve_all(share, config.host, config.metrics_port)
        _run_workers(uvicorn, config.workers, common)
        return
    app = _app(config, worker=False)
    _tune_gc()
    uvicorn.run(app, **common)


_ENV = "MLAAS4HEP_SERVE_OPTIONS"


def _run_workers(uvicorn: Any, workers: int, common: dict[str, Any]) -> None:
    """uvicorn's supervisor of ``workers`` processes (:func:`_app_from_env`), each listening on
    the HTTP port with a socket of its own where the kernel spreads connections (:mod:`.listeners`)."""
    from . import listeners

    app = "mlaas4hep.serve:_app_from_env"
    if not listeners.supported():  # one shared socket, as uvicorn does
        uvicorn.run(app, factory=True, workers=workers, **common)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, factory=True, workers=workers, **common)
    with (
        listeners.held_port(config.host, config.port, config.backlog) as sock,
        contextlib.suppress(KeyboardInterrupt),
    ):
        Multiprocess(config, sockets=[sock]).run()  # type: ignore[list-item]


def _app(config: ServeConfig, worker: bool) -> Any:
    """The app of one server process: HTTP, and gRPC and the metrics port when configured.

    Other processes may always serve the same repository (replicas on a shared volume, or
    the other ``--workers``); workers also share their ports.
    """
    from .app import create_app

    app: Any = create_app(config=config)
    if config.grpc_port is not None:
        from .grpc_server import with_grpc  # grpcio is only needed with a gRPC port

        app = with_grpc(
            app,
            config.grpc_port,
            config.host,
            config.tls_cert,
            config.tls_key,
            reuse_port=worker,
            listeners=config.grpc_listeners,
            frontend=config.grpc_frontend,
        )
    if config.metrics_port is not None and not worker:
        from .metricsport import with_metrics_port

        app = with_metrics_port(app, config.host, config.metrics_port)
    if config.drain_seconds > 0:
        from .drain import with_drain

        app = with_drain(app, config.drain_seconds)
    return app


def _app_from_env() -> Any:
    """App factory of a worker process (``serve(workers=N)``): its metrics are shared with the others'."""
    from .metricsshare import ENV as SHARE
    from .metricsshare import MetricsShare

    app = _app(ServeConfig.from_json(os.environ[_ENV]), worker=True)
    MetricsShare(app.plane.metrics, os.environ[SHARE])
    _tune_gc()
    return app


def _tune_gc() -> None:
    # Everything allocated so far lives as long as the server: keep it out of
    # the collector's generations, and collect young objects less often, so
    # collections do not stall requests (they show up as latency tails).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def __getattr__(name: str) -> Any:
    # ``from mlaas4hep.serve import create_app`` works, but importing the package (as the
    # client does for its tensor and archive formats) does not import Starlette or Prometheus
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
