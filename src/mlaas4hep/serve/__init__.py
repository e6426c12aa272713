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

import gc
import importlib.util
import json
import os
from typing import Any

from .. import extras

__all__ = ["create_app", "serve"]


def serve(
    repo_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8083,
    log_level: str = "warning",
    workers: int = 1,
    grpc_port: int | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    **options: Any,
) -> None:
    """Run the server with uvicorn until interrupted (``options`` go to :func:`create_app`).

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
    for HTTP and gRPC alike.
    """
    uvicorn = extras.require("uvicorn", "mlaas4hep serve")

    common: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
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
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both tls_cert and tls_key")
    if tls_cert is not None:
        common.update(ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key))
    grpc_opts = None
    if grpc_port is not None:
        grpc_opts = {
            "port": int(grpc_port),
            "host": host,
            "tls_cert": None if tls_cert is None else str(tls_cert),
            "tls_key": None if tls_key is None else str(tls_key),
        }
    if workers > 1:
        env = {"repo_dir": str(repo_dir), **options, "shared": True}
        if grpc_opts is not None:
            env[_GRPC] = {**grpc_opts, "reuse_port": True}
        os.environ[_ENV] = json.dumps(env)
        uvicorn.run("mlaas4hep.serve:_app_from_env", factory=True, workers=workers, **common)
        return
    from .app import create_app

    app = create_app(repo_dir, **options)
    if grpc_opts is not None:
        app = _with_grpc(app, grpc_opts)
    _tune_gc()
    uvicorn.run(app, **common)


_GRPC = "_grpc"


def _with_grpc(app: Any, opts: dict[str, Any]) -> Any:
    from .grpc_server import with_grpc  # grpcio is only needed with a gRPC port

    return with_grpc(app, **opts)


_ENV = "MLAAS4HEP_SERVE_OPTIONS"


def _app_from_env() -> Any:
    """App factory of a worker process (``serve(workers=N)``)."""
    options = json.loads(os.environ[_ENV])
    grpc_opts = options.pop(_GRPC, None)
    from .app import create_app

    app = create_app(options.pop("repo_dir"), **options)
    if grpc_opts is not None:
        app = _with_grpc(app, grpc_opts)
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
