"""ASGI wrappers that start and stop something with the app: gRPC, the metrics port, the drain.

:class:`WithLifespan` passes every request to the wrapped app, and calls
:meth:`~WithLifespan.startup` and :meth:`~WithLifespan.shutdown` when the ASGI
server (uvicorn) starts and stops the app, in its event loop. Anything else
(``.plane``, ``.app``...) is the wrapped app's, so wrappers stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WithLifespan:
    """Wraps ``app``; subclasses say what to do at :meth:`startup` and :meth:`shutdown`."""

    def __init__(self, app: Any):
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def startup(self) -> None:
        """Called before the app starts; an exception fails the start (uvicorn exits)."""

    async def shutdown(self) -> None:
        """Called when the server stops, before the app's own shutdown."""

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def lifespan_receive() -> dict[str, Any]:
            msg: dict[str, Any] = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
            return msg

        await self.app(scope, lifespan_receive, send)
