"""Layer 3: the inference service, successor of TFaaS.

Serve a repository of model bundles over HTTP::

    mlaas4hep serve --repo models/ --token-file token.txt --port 8083

or from Python::

    from mlaas4hep.serve import serve, create_app
    serve("models/", port=8083, token_file="token.txt")   # blocks
    app = create_app("models/", token="s3cret")             # an ASGI app

The server speaks the TFaaS API (:mod:`.tfaas`) and the Open Inference Protocol
v2 with the binary tensor and repository extensions (:mod:`.v2`), scores whole
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

from .app import create_app

__all__ = ["create_app", "serve"]


def serve(
    repo_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8083,
    log_level: str = "warning",
    workers: int = 1,
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
    """
    import uvicorn

    common = dict(
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
    if workers > 1:
        os.environ[_ENV] = json.dumps({"repo_dir": str(repo_dir), **options, "shared": True})
        uvicorn.run("mlaas4hep.serve:_app_from_env", factory=True, workers=workers, **common)
        return
    app = create_app(repo_dir, **options)
    _tune_gc()
    uvicorn.run(app, **common)


_ENV = "MLAAS4HEP_SERVE_OPTIONS"


def _app_from_env() -> Any:
    """App factory of a worker process (``serve(workers=N)``)."""
    options = json.loads(os.environ[_ENV])
    app = create_app(options.pop("repo_dir"), **options)
    _tune_gc()
    return app


def _tune_gc() -> None:
    # Everything allocated so far lives as long as the server: keep it out of
    # the collector's generations, and collect young objects less often, so
    # collections do not stall requests (they show up as latency tails).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
