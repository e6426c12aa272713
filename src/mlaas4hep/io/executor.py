"""Where work runs: in the calling process, a local process pool, or Dask.

Every parallel pass of mlaas4hep (specs, decoding) is a map of a picklable
function over units. :func:`ordered_map` runs it with a bounded number of tasks
in flight and yields results in submission order, so memory stays bounded and
the output is deterministic whatever the number of workers.

Worker processes need no ceremony from the caller:

* a script that starts workers without ``if __name__ == "__main__":`` (each
  worker re-runs the script's top level while it starts) stops at once with a
  short message saying to add the guard or set ``workers: 0``, instead of a
  hundred lines of tracebacks from every worker;
* workers exit when their parent dies, even by ``kill -9``: they watch the
  parent's pipe from a thread, and on Linux the kernel also sends them SIGTERM
  (``PR_SET_PDEATHSIG``) when the process that forked them goes;
* Ctrl-C on a terminal (SIGINT to every process of the command) ends the
  workers silently; the parent alone reports the interruption, and a pool
  broken that way is replaced on next use.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")


class InlineExecutor(Executor):
    """Runs each task when its result is asked for (``workers: 0``)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        f: Future[T] = _LazyFuture(fn, args, kwargs)
        return f


class _LazyFuture(Future[T]):
    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self._call: tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]] | None = (fn, args, kwargs)

    def result(self, timeout: float | None = None) -> T:
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as err:
                self.set_exception(err)
        return super().result(timeout)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


UNGUARDED_MESSAGE = """\
mlaas4hep: worker processes re-run this script from the top, so they cannot start.
Put the script's code under `if __name__ == "__main__":`, or set `workers: 0`
in the dataset configuration (decoding then runs in this process)."""

#: names the file through which a worker tells its parent "your script is unguarded"
_MARKER_ENV = "MLAAS4HEP_UNGUARDED_MARKER"


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A shared pool of ``workers`` processes (``forkserver``: safe with threads).

    Pools are kept for the life of the program, so later epochs reuse warm
    workers that still hold their files open. All workers are started at once.
    """
    if _starting_as_worker():
        # We are a worker importing the user's script, which asks for workers again at
        # its top level. Leave quietly; the parent explains (see _start).
        marker = os.environ.get(_MARKER_ENV)
        if marker:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
        raise SystemExit(1)
    pool = _POOLS.get(workers)
    if pool is None or getattr(pool, "_broken", False):  # e.g. its workers were interrupted
        pool = _start(workers)
        _POOLS[workers] = pool
    return pool


def _starting_as_worker() -> bool:
    """True while a freshly started worker (or the forkserver) imports the main script."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _start(workers: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    marker = os.path.join(tempfile.gettempdir(), f"mlaas4hep-unguarded-{os.getpid()}")
    os.environ[_MARKER_ENV] = marker  # inherited by the forkserver and the workers
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_guard_worker)
    try:
        # start every worker now (each imports uproot and awkward once, about a second),
        # rather than one by one inside the first pass
        for f in [pool.submit(_warm_up) for _ in range(workers)]:
            f.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        if os.path.exists(marker):
            os.unlink(marker)
            # a message, not a traceback: nothing the caller could catch would help
            raise SystemExit(UNGUARDED_MESSAGE) from None
        raise
    return pool


def _warm_up() -> None:
    from . import reader  # noqa: F401  (imports uproot, awkward, numpy)


def _guard_worker() -> None:
    """In each worker: exit when the parent process dies, however it dies; exit quietly on Ctrl-C."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # no traceback per worker
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGTERM when the process that forked us exits
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if not parent.is_alive():  # died before we got here
        os._exit(1)
    threading.Thread(target=_exit_with, args=(parent,), name="mlaas4hep-parent-watch", daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of our pipe closes: the parent is gone
    os._exit(1)


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    _POOLS.clear()


def get_executor(kind: str = "local", workers: int | None = None, scheduler: str | None = None) -> Executor:
    """``local`` (processes, or inline when ``workers == 0``), ``processes``, or ``dask``."""
    if kind == "dask" or scheduler:
        from ..scale.dask import dask_executor

        return dask_executor(scheduler, workers)
    n = default_workers() if workers is None else int(workers)
    if n <= 0:
        return InlineExecutor()
    return process_pool(n)


def ordered_map(
    executor: Executor, fn: Callable[[Item], T], items: Iterable[Item], prefetch: int = 4
) -> Iterator[tuple[Item, Future[T]]]:
    """Yield ``(item, future)`` in order, keeping at most ``prefetch`` tasks in flight.

    The caller calls ``future.result()``, so it decides what to do on error
    (raise, or skip and report).
    """
    pending: deque[tuple[Item, Future[T]]] = deque()
    it = iter(items)
    for item in it:
        pending.append((item, executor.submit(fn, item)))
        if len(pending) >= max(1, prefetch):
            break
    while pending:
        item, fut = pending.popleft()
        for nxt in it:
            pending.append((nxt, executor.submit(fn, nxt)))
            break
        yield item, fut
