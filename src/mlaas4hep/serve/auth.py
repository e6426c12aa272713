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

from ..tokens import ENV_VAR as ENV_VAR
from ..tokens import load_token as load_token
from .errors import Forbidden, Unauthenticated


class Auth:
    """Checks the bearer token of a request."""

    def __init__(self, token: str | None, private: bool = False, allow_anonymous_admin: bool = False):
        self._token = token.encode() if token else None
        self.private = private
        self.allow_anonymous_admin = allow_anonymous_admin

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def _check_header(self, header: str | None) -> None:
        assert self._token is not None
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthenticated("this operation needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Unauthenticated("invalid token", 'Bearer error="invalid_token"')

    def require_admin_header(self, authorization: str | None) -> None:
        """For upload, delete, load and unload; ``authorization``: the HTTP header or gRPC metadata."""
        if self._token is None:
            if self.allow_anonymous_admin:
                return
            raise Forbidden(
                "this server has no token configured, so it refuses changes to its repository "
                "(start it with --token-file or MLAAS4HEP_TOKEN)",
            )
        self._check_header(authorization)

    def require_read_header(self, authorization: str | None) -> None:
        """For metadata and inference: only when the server is private."""
        if self.private and self._token is not None:
            self._check_header(authorization)
