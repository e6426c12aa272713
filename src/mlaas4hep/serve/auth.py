"""Bearer-token authentication for the operations that change the repository.

Upload, delete, load and unload need ``Authorization: Bearer <token>``; reading
and inference are open unless the server runs with ``private=True``
(``--private``), in which case every route but the health probes needs it.

The token comes from a file (``--token-file``, first line, whitespace stripped)
or from the ``MLAAS4HEP_TOKEN`` environment variable, and is compared with
:func:`hmac.compare_digest` so the answer time does not leak how many leading
characters were right. A server started without a token refuses every
modifying request (403) unless it was explicitly started with
``allow_anonymous_admin=True`` (``--no-auth``, for a laptop).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from starlette.requests import Request

from .errors import ApiError

ENV_VAR = "MLAAS4HEP_TOKEN"


def load_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The configured token: explicit value, else the file, else ``$MLAAS4HEP_TOKEN``, else None."""
    if token:
        return token
    if token_file:
        try:
            lines = Path(token_file).read_text().strip().splitlines()
        except OSError as err:
            raise SystemExit(f"cannot read the token file {str(token_file)!r}: {err}") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise SystemExit(f"the token file {str(token_file)!r} is empty")
        return value
    return os.environ.get(ENV_VAR) or None


class Auth:
    """Checks the bearer token of a request."""

    def __init__(self, token: str | None, private: bool = False, allow_anonymous_admin: bool = False):
        self._token = token.encode() if token else None
        self.private = private
        self.allow_anonymous_admin = allow_anonymous_admin

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def _check(self, request: Request) -> None:
        self._check_header(request.headers.get("authorization"))

    def _check_header(self, header: str | None) -> None:
        assert self._token is not None
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401, "this operation needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise ApiError(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def require_admin(self, request: Request) -> None:
        """For upload, delete, load and unload."""
        self.require_admin_header(request.headers.get("authorization"))

    def require_admin_header(self, authorization: str | None) -> None:
        """:meth:`require_admin` given the ``Authorization`` value (HTTP header or gRPC metadata)."""
        if self._token is None:
            if self.allow_anonymous_admin:
                return
            raise ApiError(
                403,
                "this server has no token configured, so it refuses changes to its repository "
                "(start it with --token-file or MLAAS4HEP_TOKEN)",
            )
        self._check_header(authorization)

    def require_read(self, request: Request) -> None:
        """For metadata and inference: only when the server is private."""
        if self.private and self._token is not None:
            self._check(request)

    def require_read_header(self, authorization: str | None) -> None:
        """:meth:`require_read` given the ``Authorization`` header value (for the fast path)."""
        if self.private and self._token is not None:
            self._check_header(authorization)
