"""Errors the server reports to clients, and how they become HTTP responses.

Two kinds:

* **domain errors** (:class:`ServeError` and its subclasses), raised by the
  protocol-neutral parts (the repository, the serving state): *what* went
  wrong, e.g. :class:`ModelNotFound` or :class:`VersionConflict`. Each front
  end maps them to its own codes: :data:`HTTP_STATUS` here for the HTTP APIs,
  ``grpc_server.CODES`` for gRPC (``NOT_FOUND``, ``ALREADY_EXISTS``...);
* :class:`ApiError`: a refusal that is already an HTTP answer (a body too
  large, a malformed protocol message, a missing token), with its status.

Everything else a client can cause is a :class:`~mlaas4hep.errors.Mlaas4hepError`
(bad inputs, an unreadable ROOT file: 400). Every error is answered as
``{"error": "message"}``, the shape the Open Inference Protocol prescribes.
Anything else is a bug of ours: logged, answered with 500, and the server
keeps running.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from ..errors import Mlaas4hepError

if TYPE_CHECKING:  # imported when a response is made: the client shares ApiError, not Starlette
    from starlette.responses import Response


class ServeError(Mlaas4hepError):
    """A request the server refuses for what it asks of the repository."""


class InvalidRequest(ServeError, ValueError):
    """A malformed model name or version, an unknown serving setting, a file a bundle may not hold."""


class ModelNotFound(ServeError, LookupError):
    """No such model, or no such version of it."""


class VersionConflict(ServeError):
    """The version exists already (or was installed concurrently), or no version number is left."""


class BundleInvalid(ServeError, ValueError):
    """An uploaded bundle is incomplete, inconsistent or unsafe."""


class ModelUnloaded(ServeError):
    """The model was unloaded (repository extension): it refuses inference until loaded again."""


class ModelBroken(ServeError):
    """A version on disk cannot be served: its bundle.json or model.onnx does not load."""


#: Domain error -> HTTP status (a subclass of :class:`Mlaas4hepError` not listed: 400).
HTTP_STATUS: dict[type[Exception], int] = {
    InvalidRequest: 400,
    ModelNotFound: 404,
    VersionConflict: 409,
    BundleInvalid: 400,
    ModelUnloaded: 400,
    ModelBroken: 503,
}


class ApiError(Exception):
    """A request the server refuses: ``status`` is the HTTP code, ``message`` what went wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)
        self.headers = headers or {}


def http_status(err: Exception) -> int:
    """The HTTP status of an :class:`ApiError` or a library error (400 unless listed in :data:`HTTP_STATUS`)."""
    if isinstance(err, ApiError):
        return err.status
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}`` as ``application/json``."""
    from starlette.responses import Response

    body = orjson.dumps({"error": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)
