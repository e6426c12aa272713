"""Dynamic batching: many small requests, one onnxruntime call.

A small MLP costs about the same for one row as for a hundred: the price is in
the call, not the arithmetic. So concurrent requests for the same model are
queued, and a per-model worker hands them to onnxruntime as one stacked batch:

* the first queued request waits at most ``max_delay_ms`` for company, and
  not at all when every request the server is handling is already queued
  (``in_flight``): a lone client pays no delay;
* a batch is cut as soon as it is full: it holds ``max_batch`` rows, or the
  smallest of the last requests (:data:`SIZES` of them) would not fit beside
  its rows (1000-row requests against ``max_batch=1024``: waiting for company
  cannot make such a batch larger);
* while a batch runs, new requests queue up, and they go together as soon as
  it is done: under load batches grow by themselves, idle a lone request pays
  at most the delay;
* but a batch that is already full starts while others compute, up to ``max_calls``
  calls at once (the server's ``--infer-threads``). Between two calls the
  event loop must take the result and hand the next batch to a thread, which
  waits for the GIL while the loop parses requests: for 1000-row requests on
  2 busy cores, 0.8-1.1 ms of every 5 ms cycle in which onnxruntime sat idle.
  A second call computes through that gap.

onnxruntime runs in a thread executor (it releases the GIL), so the event loop
keeps parsing requests while a batch computes. Handing a call to a thread costs
about a hundred microseconds of wake-ups and GIL hand-overs, though, more than
a small MLP needs for a few dozen rows: so a batch of at most ``inline_rows``
rows runs on the event loop itself *when such batches have been measured to
take less than* ``inline_us``; and a lone request of such a model (nothing
queued, computing or in flight, also after one turn of the event loop, which
lets the requests that arrived with it be counted) skips the queue: no future,
no wake-up of the worker. The measure is the median wall time of the last
calls of at most ``inline_rows`` rows, so a heavy model always goes to the
thread, one call slowed down by a busy machine does not change the choice, and
``inline_us=0`` never inlines. The watchdog's time limit holds inline too (it
cuts the call of whatever thread runs it). Rows of a request are never split
across batches, and a request larger than ``max_batch`` runs alone.
``max_batch=1`` turns batching off: each request is its own call.

A request is a model's named input tensors (:data:`Inputs`, every tensor with
the request's events first), or a single array; a batch concatenates each
tensor along the events. Usage::

    b = Batcher(predict, max_batch=256, max_delay_ms=2, executor=pool)
    scores = await b.infer({"x": x})  # x: float32 (n, F); returns (n, K)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

#: Told of each predict call: rows, seconds its oldest request queued, seconds of the call,
#: requests in it, and their queue seconds summed.
Observer = Callable[[int, float, float, int, float], None]
#: A model's named input tensors, each with the events first.
Inputs = dict[str, np.ndarray]
Batch = Inputs | np.ndarray


def rows(x: Batch) -> int:
    """Events in a request: the first dimension of its (first) tensor."""
    if isinstance(x, np.ndarray):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0])


def concat(xs: list[Batch]) -> Batch:
    """Requests stacked along the events (per tensor)."""
    if len(xs) == 1:
        return xs[0]
    arrays = [x for x in xs if isinstance(x, np.ndarray)]
    if arrays:
        return np.concatenate(arrays, axis=0)
    dicts = [x for x in xs if isinstance(x, dict)]
    return {k: np.concatenate([x[k] for x in dicts], axis=0) for k in dicts[0]}


#: Calls measured to take less than this many microseconds run on the event loop (``inline_us``).
INLINE_US = 150.0
#: How many of the last small calls decide whether the next ones run inline (their median).
COSTS = 9

#: How many of the last queued requests tell the smallest one to expect (whether a batch is full).
SIZES = 16

#: A queued request: its inputs, rows, future and arrival time.
_Item = tuple[Batch, int, asyncio.Future[np.ndarray], float]


class Batcher:
    """Merges concurrent :meth:`infer` calls into batched calls of ``predict``."""

    def __init__(
        self,
        predict: Callable[[Batch], np.ndarray],
        max_batch: int = 256,
        max_delay_ms: float = 2.0,
        executor: Executor | None = None,
        observe: Observer | None = None,
        inline_rows: int = 64,
        inline_us: float | None = None,
        in_flight: Callable[[], int] | None = None,
        max_calls: int = 1,
    ):
        self.predict = predict
        self.max_calls = max(1, int(max_calls))  # calls of predict running at once (full batches only)
        self.in_flight = in_flight  # requests the server is handling now, all models
        self.inline_rows = int(inline_rows)
        self.inline_s = float(INLINE_US if inline_us is None else inline_us) / 1e6
        self._costs: deque[float] = deque(maxlen=COSTS)  # seconds of the last small calls
        self._cheap = False  # their median is below inline_s
        self.max_batch = max(1, int(max_batch))
        self.max_delay = max(0.0, float(max_delay_ms)) / 1000.0
        self.executor = executor
        self.observe = observe
        self._queue: deque[_Item] = deque()
        self._rows = 0
        self._sizes: deque[int] = deque(maxlen=SIZES)  # rows of the last queued requests
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._retired = False
        self._running = 0  # requests in the batches being computed
        self._calls = 0  # batches being computed
        self._tasks: set[asyncio.Task[None]] = set()  # those that run beside the worker (max_calls > 1)
        self.batches = 0  # number of predict calls made (for tests and /status)

    async def infer(self, x: Batch) -> np.ndarray:
        """Scores for ``x``, computed in some batch together with other requests."""
        n = rows(x)
        if self._cheap and n <= self.inline_rows and self._alone():
            # requests that arrived with this one may not be counted yet (their tasks have not run):
            # let them run once; if none of them came here, nobody can join this one
            await asyncio.sleep(0)
            if self._alone():
                return self._now(x, n)  # no queue, no future, no thread
        loop = asyncio.get_running_loop()
        if self.max_batch == 1 or n >= self.max_batch:  # nothing to merge with
            return await self._run_alone(loop, x, n)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._worker())
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((x, n, fut, time.perf_counter()))
        self._rows += n
        self._sizes.append(n)
        assert self._wakeup is not None  # made with the worker task above
        if self._may_start():  # else the worker waits for a call to end, not for this request
            self._wakeup.set()
        return await fut

    def _alone(self) -> bool:
        """Nothing queued or computing, and no other request in flight (or no delay to wait for one)."""
        if self._queue or self._running:
            return False
        return self.max_delay == 0 or (self.in_flight is not None and self.in_flight() <= 1)

    def _now(self, x: Batch, n: int) -> np.ndarray:
        """A lone request of a cheap model, computed on the event loop within its own call."""
        t0 = time.perf_counter()
        out = self._timed(x, n)
        self.batches += 1
        if self.observe:
            self.observe(n, 0.0, time.perf_counter() - t0, 1, 0.0)
        return out

    def _timed(self, x: Batch, n: int) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.predict(x)
        if n <= self.inline_rows:
            costs = self._costs
            costs.append(time.perf_counter() - t0)
            self._cheap = sorted(costs)[len(costs) // 2] < self.inline_s
        return out

    async def _call(self, loop: asyncio.AbstractEventLoop, x: Batch, n: int) -> np.ndarray:
        """One predict call of ``n`` rows: inline when it is known to be cheap, else in the executor."""
        if self._cheap and n <= self.inline_rows:
            return self._timed(x, n)
        return await loop.run_in_executor(self.executor, self._timed, x, n)

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, x: Batch, n: int) -> np.ndarray:
        t0 = time.perf_counter()
        out = await self._call(loop, x, n)
        self.batches += 1
        if self.observe:
            self.observe(n, 0.0, time.perf_counter() - t0, 1, 0.0)
        return out

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._queue or not self._may_start():
                if self._retired and not self._queue:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # give the oldest request up to max_delay to find company (a full batch cannot grow)
            deadline = self._queue[0][3] + self.max_delay
            while not self._full():
                if self.in_flight is not None and self.in_flight() <= len(self._queue) + self._running:
                    break  # nobody else could join: the others are queued or being computed
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            items, n = self._take()
            self._calls += 1
            self._running += len(items)
            if self.max_calls == 1:
                await self._batch(loop, items, n)
            else:  # the next batch may start while this one computes
                task = loop.create_task(self._batch(loop, items, n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _may_start(self) -> bool:
        """Whether the worker may cut a batch now: nothing computing, or the next batch is full
        (waiting for the running ones cannot make it larger) and fewer than ``max_calls`` calls
        are running."""
        return self._calls == 0 or (self._calls < self.max_calls and self._full())

    def _full(self) -> bool:
        """The queued rows cannot grow: the smallest of the last requests would not fit beside them
        (with single rows: ``max_batch`` rows are queued)."""
        return self._rows + min(self._sizes, default=1) > self.max_batch

    async def _batch(self, loop: asyncio.AbstractEventLoop, items: list[_Item], n: int) -> None:
        """One batched call: its requests get their rows of the output, or the call's exception."""
        now = time.perf_counter()
        queued = now - items[0][3]
        try:
            x = concat([it[0] for it in items])
            t0 = time.perf_counter()
            out = await self._call(loop, x, n)
        except BaseException as err:  # hand the failure (or the cancellation) to every waiting request
            for _, _, fut, _ in items:
                if not fut.done():
                    fut.cancel() if isinstance(err, asyncio.CancelledError) else fut.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        finally:
            self._calls -= 1
            self._running -= len(items)
            if self._wakeup is not None:
                self._wakeup.set()
        self.batches += 1
        if self.observe:
            waited = len(items) * now - sum(it[3] for it in items)
            self.observe(n, queued, time.perf_counter() - t0, len(items), waited)
        start = 0
        for _, ni, fut, _ in items:
            stop = start + ni
            if not fut.done():  # the client may have gone away
                fut.set_result(out[start:stop])
            start = stop

    def _take(self) -> tuple[list[_Item], int]:
        """Pop whole requests up to ``max_batch`` rows (at least one request); and their rows."""
        items = [self._queue.popleft()]
        n = items[0][1]
        while self._queue and n + self._queue[0][1] <= self.max_batch:
            it = self._queue.popleft()
            n += it[1]
            items.append(it)
        self._rows -= n
        return items, n

    def never_inline(self) -> None:
        """Run every call in the executor from now on (a model whose run time the last calls do not tell)."""
        self.inline_s = 0.0
        self._cheap = False

    def retire(self) -> None:
        """Finish what is queued, then stop the worker (the batcher is being replaced)."""
        self._retired = True
        if self._wakeup is not None:
            self._wakeup.set()

    def close(self) -> None:
        """Stop the worker; queued requests fail with :class:`asyncio.CancelledError`."""
        if self._task is not None:
            self._task.cancel()
        for task in list(self._tasks):
            task.cancel()
        while self._queue:
            _, _, fut, _ = self._queue.popleft()
            if not fut.done():
                fut.cancel()
        self._rows = 0
