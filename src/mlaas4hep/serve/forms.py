"""Multipart forms of bounded size: what ``POST /upload`` (TFaaS) and ``POST /jobs`` read.

A multipart body may come without Content-Length (chunked), or longer than it
announced. Starlette's form parser spools every file part to disk as it
arrives, so the size must be enforced on the stream itself, before the
parser sees it: :func:`limited` gives the request a body stream that raises
:class:`~.errors.TooLarge` once more than the limit (plus
:data:`FORM_OVERHEAD` for part headers and small fields) has arrived; nothing
past it is read, spooled or parsed, and the client gets its 413 at once.
:func:`read_file` reads one part with its own limit.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from .errors import TooLarge

#: What a form may hold beyond its largest file: boundaries, part headers, the small fields.
FORM_OVERHEAD = 2**20


def limited(request: Request, limit: int, what: str = "upload") -> Request:
    """The same request, its body cut with :class:`TooLarge` past ``limit + FORM_OVERHEAD`` bytes."""
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit + FORM_OVERHEAD:
        raise TooLarge(f"the {what} of {cl} bytes exceeds the limit of {limit} bytes")
    received = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal received
        msg = await receive()
        received += len(msg.get("body", b""))
        if received > limit + FORM_OVERHEAD:
            raise TooLarge(f"the {what} exceeds the limit of {limit} bytes")
        return msg

    return Request(request.scope, counted)


async def read_file(f: UploadFile, limit: int, what: str = "file") -> bytes:
    """A file part's bytes; :class:`TooLarge` past ``limit``."""
    data = await f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"the {what} {f.filename!r} exceeds the limit of {limit} bytes")
    return data
