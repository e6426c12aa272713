"""Errors the server reports to clients, and how they become HTTP responses.

Every failure that a client can cause ends up as an :class:`ApiError` (or a
:class:`~mlaas4hep.io.Mlaas4hepError`, which the app maps to 400), and is
answered as ``{"error": "message"}`` with a 4xx status, the shape the Open
Inference Protocol prescribes. Anything else is a bug of ours: it is logged and
answered with 500, and the server keeps running.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # imported when a response is made: the client shares ApiError, not Starlette
    from starlette.responses import Response


class ApiError(Exception):
    """A request the server refuses: ``status`` is the HTTP code, ``message`` what went wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)
        self.headers = headers or {}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}`` as ``application/json``."""
    from starlette.responses import Response

    body = orjson.dumps({"error": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)
