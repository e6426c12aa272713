"""Where work runs: in the calling process, a local process pool, or Dask.

Every parallel pass of mlaas4hep (specs, decoding) is a map of a picklable
function over units. :func:`ordered_map` runs it with a bounded number of tasks
in flight and yields results in submission order, so memory stays bounded and
the output is deterministic whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


class InlineExecutor(Executor):
    """Runs each task when its result is asked for (``workers: 0``)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        f: Future = _LazyFuture(fn, args, kwargs)
        return f


class _LazyFuture(Future):
    def __init__(self, fn, args, kwargs):
        super().__init__()
        self._call = (fn, args, kwargs)

    def result(self, timeout=None):
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


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A shared pool of ``workers`` processes (``forkserver``: safe with threads).

    Pools are kept for the life of the program, so later epochs reuse warm
    workers that still hold their files open. All workers are started at once.
    """
    pool = _POOLS.get(workers)
    if pool is None:
        ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        # start every worker now (each imports uproot and awkward once, about a second),
        # rather than one by one inside the first pass
        for f in [pool.submit(_warm_up) for _ in range(workers)]:
            f.result()
    return pool


def _warm_up() -> None:
    from . import reader  # noqa: F401  (imports uproot, awkward, numpy)


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    _POOLS.clear()


def get_executor(kind: str = "local", workers: int | None = None, scheduler: str | None = None) -> Executor:
    """``local`` (processes, or inline when ``workers == 0``), ``processes``, or ``dask``."""
    if kind == "dask" or scheduler:
        from ..dist.dask import dask_executor

        return dask_executor(scheduler, workers)
    n = default_workers() if workers is None else int(workers)
    if n <= 0:
        return InlineExecutor()
    return process_pool(n)


def ordered_map(
    executor: Executor, fn: Callable, items: Iterable, prefetch: int = 4
) -> Iterator[tuple[Any, Future]]:
    """Yield ``(item, future)`` in order, keeping at most ``prefetch`` tasks in flight.

    The caller calls ``future.result()``, so it decides what to do on error
    (raise, or skip and report).
    """
    pending: deque = deque()
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
