"""Where a bearer token comes from, for the server and the client alike.

The token is given explicitly, or read from a file (its first line, whitespace
stripped), or taken from the ``MLAAS4HEP_TOKEN`` environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

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
