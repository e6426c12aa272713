"""Lanes: bounded pools of daemon threads for blocking work, with a time limit per job.

The event loop must never wait for a request's own work: a health probe, a
metadata read or a small inference should be answered while another request
preprocesses a million events or waits for a remote file server. So work that
may be slow runs in a :class:`Lane`, one per kind of work (preprocessing,
``predict_root``), each with

* a fixed number of threads, so one kind of work cannot take the threads of
  another (the repository's thread pool and onnxruntime's are separate);
* admission control: at most ``threads + backlog`` jobs are accepted at once,
  counting jobs still running after their caller gave up on them; beyond that
  a request is refused at once (:class:`Overloaded`, to retry later) (so a flood of
  requests to an unreachable host cannot queue without bound);
* a time limit per job: the caller gets an answer when it expires, whatever
  the thread is doing (a thread cannot be killed; its slot stays taken until
  the work returns, which the io layer's own timeouts bound);
* daemon threads: a stuck job never delays the process's exit, and
  :meth:`Lane.close` answers every waiting caller at shutdown.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import Overloaded, ShuttingDown

T = TypeVar("T")


class _Job:
    __slots__ = ("args", "cancelled", "fn", "fut", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
    ):
        self.fn, self.args, self.loop, self.fut = fn, args, loop, fut
        self.cancelled = False


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Lane:
    """``threads`` daemon threads running one kind of blocking job, at most ``backlog`` more waiting.

    ``on_timeout(seconds)`` makes the error a caller gets when its job outlives ``timeout``.
    """

    def __init__(
        self,
        name: str,
        threads: int,
        backlog: int,
        timeout: float,
        on_timeout: Callable[[float], Exception],
    ):
        self.name, self.threads, self.backlog, self.timeout = name, max(1, threads), max(0, backlog), timeout
        self._on_timeout = on_timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepted = 0  # jobs queued or running (running ones may have been given up on)
        self._waiting: set[_Job] = set()
        self._closed = False
        for i in range(self.threads):
            threading.Thread(target=self._work, name=f"mlaas4hep-{name}-{i}", daemon=True).start()

    @property
    def busy(self) -> int:
        """Jobs accepted and not finished (queued, running, or running after their caller left)."""
        return self._accepted

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``fn(*args)`` in a thread of the lane; its result, its exception, or the lane's refusal."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        with self._lock:
            if self._accepted >= self.threads + self.backlog:
                raise Overloaded(
                    f"too many {self.name} requests at once ({self._accepted} in progress): retry later",
                    retry_after=1,
                )
            self._accepted += 1
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, loop, loop.create_future())
        self._waiting.add(job)
        self._jobs.put(job)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(job.fut), limit)
        except asyncio.TimeoutError:
            job.cancelled = True  # not started yet: the worker skips it
            raise self._on_timeout(limit) from None
        finally:
            self._waiting.discard(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.cancelled:
                    continue
                result, error = None, None
                try:
                    result = job.fn(*job.args)
                except BaseException as err:  # handed to the caller, which maps it to a response
                    error = err
                try:
                    job.loop.call_soon_threadsafe(_settle, job.fut, result, error)
                except RuntimeError:  # the loop is closed: nobody is waiting
                    pass
            finally:
                with self._lock:
                    self._accepted -= 1

    def close(self) -> None:
        """Refuse new jobs, answer every waiting caller with :class:`ShuttingDown`, let the threads go."""
        self._closed = True
        for job in list(self._waiting):
            job.cancelled = True
            if not job.loop.is_closed():
                job.loop.call_soon_threadsafe(
                    _settle, job.fut, None, ShuttingDown("the server is shutting down")
                )
        for _ in range(self.threads):
            self._jobs.put(None)
