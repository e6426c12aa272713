"""Opening ROOT files wherever they live, with timeouts, retries and fingerprints.

* local paths use :class:`uproot.MemmapSource` (the fastest local source);
* ``root://`` uses :class:`uproot.XRootDSource` (faster than the fsspec
  default, and it avoids the string ``step_size`` pitfall of uproot 5.7);
* ``http(s)://`` uses :class:`uproot.HTTPSource` (multi-range requests);
* any other fsspec URL (``s3://``, ``gs://``, ...) uses uproot's fsspec source.

A *fingerprint* identifies a file's content cheaply (URL, size, modification
time when known, and the ROOT file UUID), so specs and caches computed for one
version of a file are never silently reused for another.

Storage restarts. :func:`with_retries` retries *transient* errors (a refused,
reset or expired connection, a timeout, an HTTP 5xx) with exponential back-off
until the dataset's ``retry_budget`` (seconds) is spent, opening the file anew
for every attempt; errors that say the *file* is bad (missing, corrupt) are not
retried. Before the XRootD client library is first used, :func:`configure_xrootd`
sets its timeouts from the dataset's ``timeout``: by default the client would
refuse a host for 120 s after one failed connection (``XRD_CONNECTIONWINDOW``)
and for 30 minutes after a fatal one (``XRD_STREAMERRORWINDOW``), and check its
timeouts only every 15 s. Retries are counted in :data:`RETRIES`::

    >>> from mlaas4hep.io.sources import RETRIES
    >>> RETRIES.total, RETRIES.gave_up       # this process (and its decoding workers)
    (0, 0)
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import (
    CorruptFileError,
    FileOpenError,
    ServerUnavailableError,
    TreeNotFoundError,
)
from .urls import is_local, is_transient, is_xrootd, local_path, transient_errors

if TYPE_CHECKING:
    import uproot

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------- XRootD client settings
_XRD_APPLIED: dict[str, int] = {}
_XRD_OWN = "MLAAS4HEP_XRD_SET"  # names we set (inherited by worker processes)
#: ``XRD_*`` variables the operator set: their values win over ours.
_XRD_USER = {k for k in os.environ if k.startswith("XRD_")} - set(os.environ.get(_XRD_OWN, "").split(","))


def xrootd_settings(timeout: float) -> dict[str, int]:
    """The XRootD client settings (``XRD_*`` without the prefix) for a read ``timeout``.

    One connection attempt per request, no memory of failed connections, and
    timeouts checked every second: the retry loop of :func:`with_retries` owns
    the waiting, with back-off and a budget, and each attempt takes at most
    about ``timeout`` seconds.
    """
    t = max(1, math.ceil(timeout))
    return {
        "ConnectionWindow": t,  # one connection attempt may take this long
        "ConnectionRetry": 1,  # ... and is not repeated inside the client
        "StreamErrorWindow": 0,  # a failed host may be tried again at once (default 1800 s)
        "RequestTimeout": t,
        "StreamTimeout": t,
        "TimeoutResolution": 1,  # default 15 s: a 10 s timeout took 14 s
    }


def configure_xrootd(timeout: float) -> None:
    """Apply :func:`xrootd_settings` in this process (call before opening ``root://`` files).

    Before the client library is loaded the settings go into the environment,
    where the library reads them at start-up (this also reaches processes
    started later); once loaded, through ``XRootD.client.EnvPutInt``. A
    connection already open to a host keeps the settings it was made with.
    ``XRD_*`` variables set by the operator are left alone.
    """
    settings = {k: v for k, v in xrootd_settings(timeout).items() if f"XRD_{k.upper()}" not in _XRD_USER}
    if settings == _XRD_APPLIED:
        return
    if "XRootD.client" in sys.modules:
        from XRootD import client

        for key, value in settings.items():
            client.EnvPutInt(key, value)
    else:
        os.environ.update({f"XRD_{k.upper()}": str(v) for k, v in settings.items()})
        os.environ[_XRD_OWN] = ",".join(f"XRD_{k.upper()}" for k in settings)
    _XRD_APPLIED.clear()
    _XRD_APPLIED.update(settings)


def open_options(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Keyword arguments for :func:`uproot.open` suited to the URL's scheme.

    Remote files get no ``array_cache``: every read goes to the server, so
    nothing read before a fault is served from memory afterwards. (The cost:
    epoch 0 re-reads from the server the ranges that the specs pass read; with
    the cache, up to 100 MB of them came from memory.)
    """
    import uproot  # here, not above: the server counts RETRIES without loading uproot

    if is_local(url):
        return {"handler": uproot.MemmapSource}
    if is_xrootd(url):
        return {"handler": uproot.XRootDSource, "timeout": timeout, "array_cache": None}
    if url.startswith(("http://", "https://")):
        # uproot's own source: multi-range requests, and errors that surface as
        # exceptions (the fsspec source hands aiohttp errors back as values)
        return {"handler": uproot.HTTPSource, "timeout": timeout, "array_cache": None}
    return {"timeout": timeout, "array_cache": None}


def open_file(url: str, timeout: float = 30.0) -> uproot.ReadOnlyDirectory:
    """Open a ROOT file, turning every failure into a :class:`FileOpenError`.

    The error is ``transient`` when the server or the network failed (see
    :func:`is_transient`): a missing file is not.
    """
    path = local_path(url) if is_local(url) else url
    if is_local(url) and not os.path.exists(path):
        raise FileOpenError(url, "no such file")
    if is_xrootd(url):
        configure_xrootd(timeout)
    import uproot

    try:
        return uproot.open(path, **open_options(url, timeout))
    except FileNotFoundError as err:
        raise FileOpenError(url, f"no such file ({err})") from None
    except transient_errors() as err:
        raise FileOpenError(url, f"{type(err).__name__}: {err}", transient=not is_local(url)) from err
    except Exception as err:  # uproot raises ValueError etc. for non-ROOT content
        raise CorruptFileError(url, f"{type(err).__name__}: {err}") from None


def open_tree(url: str, tree: str, timeout: float = 30.0) -> Any:  # uproot TTree or EventsView
    """Open ``tree`` (a path such as ``boostedAk8/events`` is fine) in a file.

    A TTree comes back as uproot's; an RNTuple, or a Parquet file (``tree`` is
    then ignored), as a :class:`mlaas4hep.io.formats.EventsView` that reads
    like one (see :mod:`mlaas4hep.io.formats`).
    """
    import uproot

    from . import formats

    if formats.is_parquet(url):
        return formats.open_parquet(url, timeout)
    f = open_file(url, timeout)
    try:
        obj = f[tree]
    except KeyError:
        trees = [
            k.split(";")[0] for k, c in f.classnames().items() if c.startswith(("TTree", "ROOT::RNTuple"))
        ]
        f.close()
        raise TreeNotFoundError(url, tree, trees) from None
    except transient_errors() as err:
        f.close()
        raise FileOpenError(url, f"{type(err).__name__}: {err}", transient=is_transient(err)) from err
    except Exception as err:
        f.close()
        raise CorruptFileError(url, f"{type(err).__name__}: {err}") from None
    rntuple = formats.view(obj, url)
    if rntuple is not None:
        return rntuple
    if not isinstance(obj, uproot.behaviors.TTree.TTree):
        f.close()
        raise TreeNotFoundError(url, tree, [f"{tree} is a {type(obj).__name__}, not a TTree"])
    return obj


def fingerprint(url: str, tree_obj: Any = None, timeout: float = 30.0) -> dict[str, Any]:
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


class RetryCounter:
    """Retries made in this process, and by the decoding workers that reported to it.

    ``total`` counts retries (attempts after a transient failure), ``gave_up``
    the reads that spent their whole retry budget. Thread-safe; the server's
    metrics read it as a counter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.gave_up = 0

    def add(self, retries: int = 0, gave_up: int = 0) -> None:
        with self._lock:
            self.total += retries
            self.gave_up += gave_up


#: Retries of this process (see :class:`RetryCounter`).
RETRIES = RetryCounter()
#: Longest wait between two attempts, in seconds.
MAX_BACKOFF = 10.0
_EVENTS = threading.local()


def retry_events() -> deque[dict[str, Any]]:
    """This thread's log of retries since it was last drained (bounded)."""
    if not hasattr(_EVENTS, "log"):
        _EVENTS.log = deque(maxlen=1000)
    log_: deque[dict[str, Any]] = _EVENTS.log
    return log_


def drain_retry_events() -> list[dict[str, Any]]:
    """Take this thread's retry records: what a task reports back with its result."""
    log_ = retry_events()
    out = list(log_)
    log_.clear()
    return out


def with_retries(
    fn: Callable[[], T],
    what: str,
    retries: int = 3,
    backoff: float = 0.5,
    url: str = "",
    budget: float = 0.0,
) -> T:
    """Call ``fn``; on a transient error wait (exponential back-off with jitter) and retry.

    It retries at least ``retries`` times, and goes on while less than
    ``budget`` seconds have passed since the first failure; then it raises
    :class:`ServerUnavailableError`. Waits start at ``backoff`` seconds and
    double up to :data:`MAX_BACKOFF`; the last one is cut to end with the
    budget. Non-transient errors (a missing or corrupt file) propagate at once.
    Each retry logs one warning with the attempt, the error and the time left,
    counts in :data:`RETRIES` and is recorded for :func:`drain_retry_events`.

    The callable must be idempotent and open what it reads anew (here: it
    re-reads one fixed entry range through a fresh file handle), so a retry
    neither loses nor duplicates events.
    """
    if url and is_local(url):  # a local file that fails is bad, not unreachable
        return fn()
    attempt, first = 0, None
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            now = time.monotonic()
            first = now if first is None else first
            left = budget - (now - first)
            if attempt >= retries and left <= 0:
                RETRIES.add(gave_up=1)
                raise ServerUnavailableError(
                    url or what,
                    f"{what} failed after {attempt + 1} attempts: {_describe(err)} "
                    f"({now - first:.1f} s of retries; retry_budget {budget:g} s)",
                    attempts=attempt + 1,
                    seconds=now - first,
                ) from err
            delay = min(backoff * 2**attempt, MAX_BACKOFF) * (1 + random.random() * 0.25)
            if attempt >= retries:
                delay = max(0.0, min(delay, left))
            attempt += 1
            error = _describe(err)
            log.warning(
                "retry %d of %s after %s; next attempt in %.1f s, %.1f s left of the %g s retry budget",
                attempt,
                what,
                error,
                delay,
                max(left, 0.0),
                budget,
            )
            RETRIES.add(retries=1)
            retry_events().append(
                {
                    "file": url or what,
                    "what": what,
                    "attempt": attempt,
                    "error": error,
                    "wait": round(delay, 3),
                    "pid": os.getpid(),
                }
            )
            time.sleep(delay)


def _describe(err: BaseException) -> str:
    """``Type: message`` of the error that the network or the server raised."""
    cause = err.__cause__ if isinstance(err, FileOpenError) and err.__cause__ is not None else err
    if isinstance(cause, FileOpenError):
        return cause.reason
    return f"{type(cause).__name__}: {cause}"
