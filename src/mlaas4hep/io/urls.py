"""What a URL is, and which errors of reading it are worth retrying.

The lowest piece of the I/O layer: :mod:`mlaas4hep.io.sources` (opening
files, retries) and :mod:`mlaas4hep.io.formats` (Parquet, RNTuple) both ask it,
and it imports neither.

The errors that say "the network or a server hiccupped" include those of
fsspec's HTTP filesystem, which raises aiohttp's errors (not ``OSError``s).
aiohttp alone takes about a fifth of a second to import, so the tuple is built
on first use (:func:`transient_errors`), never for local files that read
without an error.
"""

from __future__ import annotations

from functools import cache

from .errors import Mlaas4hepError, ServerUnavailableError


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def is_xrootd(url: str) -> bool:
    return url.startswith(("root://", "roots://"))


@cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth retrying: the network or a server hiccupped (``except transient_errors():``)."""
    import http.client

    errs: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError, http.client.HTTPException]
    try:  # fsspec's HTTP filesystem raises aiohttp's errors, which are not OSErrors
        import aiohttp

        errs.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        errs.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(errs)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` says the network or the server failed (worth retrying), not the file.

    A missing file (``FileNotFoundError``: the server answered) and anything
    mlaas4hep already classified as a bad file are not transient; neither is a
    :class:`ServerUnavailableError` (its retries are already spent).
    """
    if isinstance(err, ServerUnavailableError):
        return False
    if isinstance(err, Mlaas4hepError):
        return bool(getattr(err, "transient", False))
    return isinstance(err, transient_errors()) and not isinstance(err, FileNotFoundError)
