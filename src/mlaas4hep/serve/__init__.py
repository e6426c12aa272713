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

import importlib.util
import os
from typing import Any

from .app import create_app

__all__ = ["create_app", "serve"]


def serve(
    repo_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8083,
    log_level: str = "warning",
    **options: Any,
) -> None:
    """Run the server with uvicorn until interrupted (``options`` go to :func:`create_app`).

    Uses uvloop and httptools when installed (about twice the requests per
    second of the pure-Python loop and parser). One process: the dynamic
    batcher needs every request of a model in the same process to merge them.
    """
    import uvicorn

    app = create_app(repo_dir, **options)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level,
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_keep_alive=30,
    )
