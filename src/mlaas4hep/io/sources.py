"""Opening ROOT files wherever they live, with timeouts, retries and fingerprints.

* local paths use :class:`uproot.MemmapSource` (the fastest local source);
* ``root://`` uses :class:`uproot.XRootDSource` (faster than the fsspec
  default, and it avoids the string ``step_size`` pitfall of uproot 5.7);
* ``http(s)://`` uses :class:`uproot.HTTPSource` (multi-range requests);
* any other fsspec URL (``s3://``, ``gs://``, ...) uses uproot's fsspec source.

A *fingerprint* identifies a file's content cheaply (URL, size, modification
time when known, and the ROOT file UUID), so specs and caches computed for one
version of a file are never silently reused for another.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import uproot

from .errors import CorruptFileError, FileOpenError, Mlaas4hepError, TreeNotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient_errors() -> tuple[type[BaseException], ...]:
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


#: Errors worth retrying: the network or a server hiccupped.
TRANSIENT = _transient_errors()


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def open_options(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Keyword arguments for :func:`uproot.open` suited to the URL's scheme."""
    if is_local(url):
        return {"handler": uproot.MemmapSource}
    if url.startswith(("root://", "roots://")):
        return {"handler": uproot.XRootDSource, "timeout": timeout}
    if url.startswith(("http://", "https://")):
        # uproot's own source: multi-range requests, and errors that surface as
        # exceptions (the fsspec source hands aiohttp errors back as values)
        return {"handler": uproot.HTTPSource, "timeout": timeout}
    return {"timeout": timeout}


def open_file(url: str, timeout: float = 30.0) -> uproot.ReadOnlyDirectory:
    """Open a ROOT file, turning every failure into a :class:`FileOpenError`."""
    path = local_path(url) if is_local(url) else url
    if is_local(url) and not os.path.exists(path):
        raise FileOpenError(url, "no such file")
    try:
        return uproot.open(path, **open_options(url, timeout))
    except FileNotFoundError as err:
        raise FileOpenError(url, f"no such file ({err})") from None
    except TRANSIENT as err:
        raise FileOpenError(url, f"{type(err).__name__}: {err}") from err
    except Exception as err:  # uproot raises ValueError etc. for non-ROOT content
        raise CorruptFileError(url, f"{type(err).__name__}: {err}") from None


def open_tree(url: str, tree: str, timeout: float = 30.0):
    """Open ``tree`` (a path such as ``boostedAk8/events`` is fine) in a file."""
    f = open_file(url, timeout)
    try:
        obj = f[tree]
    except KeyError:
        trees = [k.split(";")[0] for k, c in f.classnames().items() if c.startswith("TTree")]
        f.close()
        raise TreeNotFoundError(url, tree, trees) from None
    except TRANSIENT as err:
        f.close()
        raise FileOpenError(url, f"{type(err).__name__}: {err}") from err
    except Exception as err:
        f.close()
        raise CorruptFileError(url, f"{type(err).__name__}: {err}") from None
    if not isinstance(obj, uproot.behaviors.TTree.TTree):
        f.close()
        raise TreeNotFoundError(url, tree, [f"{tree} is a {type(obj).__name__}, not a TTree"])
    return obj


def fingerprint(url: str, tree_obj=None, timeout: float = 30.0) -> dict[str, Any]:
    """Identify a file's content: URL, size, mtime (local files) and ROOT UUID."""
    fp: dict[str, Any] = {"url": url}
    if is_local(url):
        st = os.stat(local_path(url))
        fp.update(size=st.st_size, mtime=int(st.st_mtime_ns))
    close = tree_obj is None
    f = tree_obj.file if tree_obj is not None else open_file(url, timeout)
    try:
        fp["uuid"] = str(f.uuid)
        fp.setdefault("size", int(f.source.num_bytes) if f.source.num_bytes is not None else None)
    finally:
        if close:
            f.close()
    return fp


def with_retries(fn: Callable[[], T], what: str, retries: int = 3, backoff: float = 0.5, url: str = "") -> T:
    """Call ``fn``; on a transient error wait (exponential back-off with jitter) and retry.

    The callable must be idempotent: here it always re-reads one fixed entry
    range, so a retry neither loses nor duplicates events.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Mlaas4hepError as err:
            transient = isinstance(err, FileOpenError) and isinstance(err.__cause__, TRANSIENT)
            if not transient or attempt >= retries:
                raise
            last: Exception = err
        except TRANSIENT as err:
            if attempt >= retries:
                raise FileOpenError(
                    url or what, f"{what} failed after {retries + 1} attempts: {err}"
                ) from err
            last = err
        attempt += 1
        delay = backoff * (2 ** (attempt - 1)) * (1 + random.random() * 0.25)
        log.warning("%s failed (%s); retry %d/%d in %.1fs", what, last, attempt, retries, delay)
        time.sleep(delay)
