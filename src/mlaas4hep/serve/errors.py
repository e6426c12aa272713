"""What the server refuses, and why: its domain errors, in one place.

Every part below the protocol adapters (the data plane, the repository, the
batcher, the lanes, auth, the tensor codec) raises only these: *what* went
wrong, never *how* a protocol says it. Each front end maps them once: the HTTP
adapters with :data:`mlaas4hep.serve.http.HTTP_STATUS` (``{"error": ...}``
with a 4xx), the gRPC service with ``grpc_server.GRPC_CODES``. A subclass is
answered as its nearest listed base class.

=====================  ===================================================  ======  ===================
error                  meaning                                              HTTP    gRPC
=====================  ===================================================  ======  ===================
InvalidRequest         a malformed request or input                         400     INVALID_ARGUMENT
Unsupported            a content encoding or format the server cannot read  415     INVALID_ARGUMENT
BundleInvalid          an uploaded bundle is incomplete or unsafe           400     INVALID_ARGUMENT
Unauthenticated        no or a wrong bearer token                           401     UNAUTHENTICATED
Forbidden              not allowed here (no token configured, a path)       403     PERMISSION_DENIED
ReadOnlyRepository     the repository cannot be changed                     403     FAILED_PRECONDITION
ModelNotFound          no such model or version                             404     NOT_FOUND
JobNotFound            no such training job (``--jobs``)                    404     NOT_FOUND
VersionConflict        the version exists, or was installed concurrently    409     ALREADY_EXISTS
TooLarge               a body, file or request beyond the server's limits   413     RESOURCE_EXHAUSTED
Overloaded             too much work queued: retry later                    429     RESOURCE_EXHAUSTED
ModelFailed            the model's computation failed on these inputs       400     INVALID_ARGUMENT
ModelTimedOut          the model ran past ``infer_timeout``: cut off        400     DEADLINE_EXCEEDED
ModelUnloaded          unloaded through the repository API                  400     UNAVAILABLE
ModelUnhealthy         cut off before: not served until loaded again        400     UNAVAILABLE
Unavailable            cannot serve now (broken on disk, shutting down,     503     UNAVAILABLE
                       saturated: ``--saturation-queue-ms``)
TimedOut               no result within the time limit                      503     DEADLINE_EXCEEDED
BodyTimedOut           the request body stopped arriving (``body_timeout``) 408     DEADLINE_EXCEEDED
ClientGone             the client went away: nobody to answer               499     CANCELLED
=====================  ===================================================  ======  ===================

What an uploaded model does (fail, loop) is answered as a client error, never a 5xx.
Another :class:`~mlaas4hep.errors.Mlaas4hepError` (a bad raw input, an
unreadable ROOT file) is a client's mistake too: 400, ``INVALID_ARGUMENT``.
Anything else is a bug of ours: logged, answered with 500 / ``INTERNAL``, and
the server keeps running. ``retry_after`` (seconds) becomes HTTP's
``Retry-After``; an :class:`Unauthenticated`'s ``challenge`` its
``WWW-Authenticate``.
"""

from __future__ import annotations

from ..errors import Mlaas4hepError


class ServeError(Mlaas4hepError):
    """A request the server refuses. ``retry_after``: seconds after which trying again may work."""

    retry_after: float | None = None

    def __init__(self, message: str = "", retry_after: float | None = None):
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequest(ServeError, ValueError):
    """A malformed request: JSON, tensor, name, version, serving setting, or a file a bundle may not hold."""


class Unsupported(InvalidRequest):
    """A content encoding or format the server does not read."""


class BundleInvalid(ServeError, ValueError):
    """An uploaded bundle is incomplete, inconsistent, unsafe, or fails its smoke test."""


class Unauthenticated(ServeError):
    """A bearer token is needed and missing or wrong; ``challenge`` says which (HTTP's WWW-Authenticate)."""

    def __init__(self, message: str, challenge: str = "Bearer"):
        super().__init__(message)
        self.challenge = challenge


class Forbidden(ServeError):
    """The operation is not allowed on this server (no token configured, a path outside its data)."""


class ReadOnlyRepository(Forbidden):
    """The repository is read-only (a CVMFS, ConfigMap or read-only volume): it cannot change."""


class ModelNotFound(ServeError, LookupError):
    """No such model, or no such version of it."""


class JobNotFound(ServeError, LookupError):
    """No training job of this id (the jobs API, :mod:`.jobs`)."""


class VersionConflict(ServeError):
    """The version exists already (or was installed concurrently), or no version number is left."""


class TooLarge(ServeError):
    """A request, upload or output beyond the server's limits."""


class Overloaded(ServeError):
    """Too many requests of one kind at once: try again later."""


class Unavailable(ServeError):
    """The server or the model cannot answer now."""


class ModelUnloaded(Unavailable):
    """The model was unloaded (repository extension): it refuses inference until loaded again."""


class ModelBroken(Unavailable):
    """A version on disk cannot be served: its bundle.json or model.onnx does not load."""


class ModelUnhealthy(Unavailable):
    """A call of the model ran past its time limit and was cut off: it is not served until loaded again."""


class Saturated(Unavailable):
    """Requests wait too long in this server's queues: clients that can should use another server."""


class ShuttingDown(Unavailable):
    """The server is stopping."""

    retry_after = 5.0


class TimedOut(ServeError):
    """The work did not finish within its time limit."""


class BodyTimedOut(ServeError):
    """No byte of the request's body arrived for ``--body-timeout`` seconds: its bytes are let go."""


class ModelFailed(InvalidRequest):
    """The model's own computation failed on the request's inputs (onnxruntime's error, not ours)."""


class ModelTimedOut(ModelFailed):
    """The model's computation ran past its time limit and was cut off (a loop that never ends)."""


class ClientGone(ServeError):
    """The client disconnected before its answer: nobody to answer."""
