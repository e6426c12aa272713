"""Who is calling: the server's bearer token, or an OIDC/JWT access token checked against its issuer's keys.

The jobs API (:mod:`.jobs`) records who submitted each job, and lets users
see and cancel their own jobs only. A caller is a :class:`User`:

* the server's token (``--token-file``, :mod:`.auth`) is the **operator**
  (``"admin"``), who sees and cancels every job;
* an access token of an OpenID Connect issuer (CERN SSO, INDIGO IAM, WLCG
  tokens are JWTs) is the user its ``--oidc-user-claim`` names
  (``preferred_username``, else ``sub``), once PyJWT checked its signature
  against the issuer's published keys (the JWKS at ``--oidc-jwks-url``, else the
  ``jwks_uri`` of ``ISSUER/.well-known/openid-configuration``; cached by
  :class:`jwt.PyJWKClient`), its expiry, its issuer (``--oidc-issuer``) and,
  when given, its audience (``--oidc-audience``);
* with ``--no-auth`` and no token, everyone is ``"anonymous"`` (a laptop).

Anything else is :class:`~.errors.Unauthenticated` (401). The checks block
(the first one fetches the keys): call :meth:`Identity.user` off the event loop.
"""

from __future__ import annotations

import hmac
import json
import urllib.request
from dataclasses import dataclass
from typing import Any

from .. import extras
from ..tokens import load_token
from .config import ServeConfig
from .errors import Unauthenticated

#: Signature algorithms accepted in access tokens (never "none", never HMAC with a public key).
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
OPERATOR = "admin"


@dataclass(frozen=True)
class User:
    """A caller: ``name`` (recorded on jobs and models), ``operator`` (sees every job)."""

    name: str
    operator: bool = False


class Identity:
    """Turns an ``Authorization`` header into a :class:`User` (see the module docstring)."""

    def __init__(self, config: ServeConfig, token: str | None = None):
        token = load_token(token, config.token_file)
        self._token = token.encode() if token else None
        self.anonymous = config.no_auth and self._token is None
        self.issuer = config.oidc_issuer
        self.audience = config.oidc_audience
        self.claim = config.oidc_user_claim
        self._jwks_url = config.oidc_jwks_url
        self._jwks: Any = None
        if self.oidc:  # at start, not at the first request: PyJWT comes with the serve extra
            extras.require("jwt", "--oidc-issuer")

    @property
    def oidc(self) -> bool:
        return bool(self.issuer or self._jwks_url)

    def _keys(self) -> Any:
        if self._jwks is None:
            import jwt

            url = self._jwks_url
            if not url:
                assert self.issuer
                discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    with urllib.request.urlopen(discovery, timeout=10) as r:
                        url = json.loads(r.read())["jwks_uri"]
                except (OSError, ValueError, KeyError) as err:
                    raise Unauthenticated(
                        f"cannot check the access token: the issuer's configuration {discovery!r} "
                        f"is unreadable ({err})"
                    ) from None
            self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
        return self._jwks

    def user(self, authorization: str | None) -> User:
        """The caller of a request; :class:`Unauthenticated` when there is none to trust."""
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            if self.anonymous:
                return User("anonymous", operator=True)
            what = " (the server's token or an access token of its issuer)" if self.oidc else ""
            raise Unauthenticated(f"jobs need 'Authorization: Bearer <token>'{what}")
        if self._token is not None and hmac.compare_digest(given.encode(), self._token):
            return User(OPERATOR, operator=True)
        if not self.oidc or given.count(".") != 2:
            raise Unauthenticated("invalid token", 'Bearer error="invalid_token"')
        return self._from_jwt(given)

    def _from_jwt(self, token: str) -> User:
        import jwt

        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "the access token has expired: get a new one", 'Bearer error="invalid_token"'
            ) from None
        except jwt.PyJWKClientError as err:
            raise Unauthenticated(
                f"cannot check the access token against the issuer's keys: {err}",
                'Bearer error="invalid_token"',
            ) from None
        except jwt.InvalidTokenError as err:
            raise Unauthenticated(f"invalid access token: {err}", 'Bearer error="invalid_token"') from None
        name = claims.get(self.claim) or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise Unauthenticated(f"the access token names no user (no {self.claim!r} or 'sub' claim)")
        return User(name[:100])
