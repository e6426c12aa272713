"""The dynamic batcher in isolation: merging, limits, delays and failures."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlaas4hep.serve.batching import Batcher


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return x.sum(axis=1, keepdims=True) * 2


@pytest.fixture
def pool():
    p = ThreadPoolExecutor(2)
    yield p
    p.shutdown()


def _rows(n: int, start: int) -> np.ndarray:
    return np.arange(start, start + 3 * n, dtype=np.float32).reshape(n, 3)


def test_merges_and_returns_each_its_rows(pool):
    rec = Recorder(delay=0.01)
    b = Batcher(rec, max_batch=1000, max_delay_ms=5, executor=pool, inline_us=0)

    async def main():
        xs = [_rows(i % 3 + 1, 100 * i) for i in range(40)]
        outs = await asyncio.gather(*(b.infer(x) for x in xs))
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)

    asyncio.run(main())
    assert sum(rec.calls) == sum(i % 3 + 1 for i in range(40))
    assert len(rec.calls) <= 3  # 40 requests in at most a few calls


def test_max_batch_is_respected_and_requests_never_split(pool):
    rec = Recorder(delay=0.005)
    b = Batcher(rec, max_batch=10, max_delay_ms=50, executor=pool, inline_us=0)

    async def main():
        xs = [_rows(3, 10 * i) for i in range(10)] + [_rows(25, 0)]
        outs = await asyncio.gather(*(b.infer(x) for x in xs))
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)

    asyncio.run(main())
    assert sorted(rec.calls) == [3] + [9] * 3 + [25]  # 3+3+3 per batch; the 25-row request alone


def test_lone_request_waits_at_most_the_delay(pool):
    rec = Recorder()
    b = Batcher(rec, max_batch=100, max_delay_ms=30, executor=pool, inline_us=0)

    async def main():
        t0 = time.perf_counter()
        await b.infer(_rows(1, 0))
        return time.perf_counter() - t0

    dt = asyncio.run(main())
    # it waited for company (at least the delay), then ran alone instead of waiting for a full
    # batch; the upper bound only tells "ran" from "waits forever", never a slow machine
    assert dt >= 0.025 and rec.calls == [1]
    assert dt < 30


def test_batching_off(pool):
    rec = Recorder()
    b = Batcher(rec, max_batch=1, executor=pool)

    async def main():
        await asyncio.gather(*(b.infer(_rows(1, i)) for i in range(8)))

    asyncio.run(main())
    assert rec.calls == [1] * 8


def test_failure_reaches_every_waiter_and_worker_survives(pool):
    rec = Recorder(fail=True)
    b = Batcher(rec, max_batch=100, max_delay_ms=5, executor=pool, inline_us=0)

    async def main():
        res = await asyncio.gather(*(b.infer(_rows(1, i)) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in res)
        rec.fail = False
        y = await b.infer(_rows(2, 0))
        np.testing.assert_array_equal(y, _rows(2, 0).sum(axis=1, keepdims=True) * 2)

    asyncio.run(main())


def test_cheap_models_run_inline(pool):
    """Small batches of a model measured to be fast skip the thread hop; slow models never do."""
    import threading

    threads: list[str] = []

    def fast(x):
        threads.append(threading.current_thread().name)
        return x[:, :1]

    b = Batcher(fast, max_batch=100, max_delay_ms=0, executor=pool, inline_us=10_000)

    async def main():
        for i in range(3):
            await b.infer(_rows(1, i))

    asyncio.run(main())
    assert threads[0] != "MainThread" and threads[-1] == "MainThread"
    threads.clear()

    def slow(x):
        threads.append(threading.current_thread().name)
        time.sleep(0.002)
        return x[:, :1]

    b = Batcher(slow, max_batch=100, max_delay_ms=0, executor=pool, inline_us=500)
    asyncio.run(main())
    assert "MainThread" not in threads


def test_no_delay_when_nobody_else_is_in_flight(pool):
    """With in_flight telling that the queued request is the only one, the delay is skipped."""
    rec = Recorder()
    in_flight = [1]
    b = Batcher(
        rec, max_batch=100, max_delay_ms=200, executor=pool, inline_us=0, in_flight=lambda: in_flight[0]
    )

    async def one():
        t0 = time.perf_counter()
        await b.infer(_rows(1, 0))
        return time.perf_counter() - t0

    assert asyncio.run(one()) < 0.15
    in_flight[0] = 5  # others are being parsed: wait for them (up to the delay)
    assert asyncio.run(one()) >= 0.19


def _warm(b: Batcher, calls: int = 9) -> None:
    """Enough calls of one row for the batcher to have measured the model."""

    async def main():
        for i in range(calls):
            await b.infer(_rows(1, i))

    asyncio.run(main())


def test_a_lone_request_of_a_cheap_model_is_answered_after_one_turn_of_the_loop(pool):
    """Nothing queued, computing or in flight: no future to wait for, no worker, no thread.

    The request lets the event loop turn once (others that arrived with it are counted then),
    and is answered when it resumes.
    """
    b = Batcher(Recorder(), max_batch=1024, max_delay_ms=2, executor=pool, in_flight=lambda: 1)
    _warm(b)

    async def main():
        coro = b.infer(_rows(1, 7))
        assert coro.send(None) is None  # a bare yield: nothing to wait for
        with pytest.raises(StopIteration) as done:
            coro.send(None)
        return done.value.value

    y = asyncio.run(main())
    np.testing.assert_array_equal(y, _rows(1, 7).sum(axis=1, keepdims=True) * 2)


def test_one_slow_call_does_not_stop_inlining(pool):
    """A call slowed down once (the machine was busy) leaves a cheap model on the event loop."""
    import threading

    threads: list[str] = []
    hiccup = [False]

    def model(x):
        threads.append(threading.current_thread().name)
        if hiccup[0]:
            hiccup[0] = False
            time.sleep(0.01)
        return x[:, :1]

    b = Batcher(model, max_batch=100, max_delay_ms=0, executor=pool, inline_us=5000)
    _warm(b, 20)
    assert threads[-1] == "MainThread"
    hiccup[0] = True
    _warm(b, 3)
    assert threads[-4:] == ["MainThread"] * 4


def test_a_model_turning_slow_leaves_the_event_loop(pool):
    """Inline calls that take longer than inline_us send the next ones back to the thread."""
    import threading

    threads: list[str] = []
    delay = [0.0]

    def model(x):
        threads.append(threading.current_thread().name)
        time.sleep(delay[0])
        return x[:, :1]

    # inline_us far above what a call of no work takes on a loaded machine (a test once saw one
    # such call over 1 ms under load 11), and the slow calls five times it
    b = Batcher(model, max_batch=100, max_delay_ms=0, executor=pool, inline_us=20_000)
    _warm(b)
    assert threads[-1] == "MainThread"
    delay[0] = 0.1  # five times inline_us
    _warm(b, 9)
    assert threads[-9:-4] == ["MainThread"] * 5  # the median of the last 9 calls turns with the fifth
    assert "MainThread" not in threads[-4:]


def test_concurrent_requests_of_a_cheap_model_still_merge(pool):
    """Requests arriving together are merged even when each is counted in flight only once its
    task runs (as a front end counts them): a cheap model does not make every one run alone."""
    rec = Recorder()
    in_flight = [0]
    b = Batcher(rec, max_batch=1024, max_delay_ms=50, executor=pool, in_flight=lambda: in_flight[0])

    async def request(x):
        in_flight[0] += 1
        try:
            return await b.infer(x)
        finally:
            in_flight[0] -= 1

    async def main():
        for i in range(9):  # one by one: measured cheap, run alone
            await request(_rows(1, i))
        assert rec.calls == [1] * 9
        rec.calls.clear()
        xs = [_rows(1, 10 * i) for i in range(40)]
        outs = await asyncio.gather(*(request(x) for x in xs))
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)

    asyncio.run(main())
    assert sum(rec.calls) == 40 and len(rec.calls) <= 3


class Overlap:
    """A model that records how many of its calls run at once. With ``meet``, no call returns before
    ``meet`` calls have been running together (a call that waits ``timeout`` seconds for that fails)."""

    def __init__(self, meet: int = 0, delay: float = 0.0, timeout: float = 10.0):
        import threading

        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.calls: list[int] = []
        self.met = threading.Event()
        self.meet, self.delay, self.timeout = meet, delay, timeout

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.calls.append(x.shape[0])
            if self.now >= self.meet:
                self.met.set()
        try:
            if not self.met.wait(self.timeout):
                raise RuntimeError(f"{self.meet} calls never ran at once")
            time.sleep(self.delay)
            return x.sum(axis=1, keepdims=True) * 2
        finally:
            with self.lock:
                self.now -= 1


def test_full_batches_run_at_once_up_to_max_calls(pool):
    """A full batch (max_batch rows queued: waiting cannot make it larger) starts while another
    computes, up to max_calls calls at once; each request still gets its own rows. (Requests of
    max_batch rows or more would run alone, beside the batches, whatever max_calls.)"""
    model = Overlap(meet=2)  # two calls must be running together, or the barrier breaks
    b = Batcher(model, max_batch=15, max_delay_ms=50, executor=pool, inline_us=0, max_calls=2)

    async def main():
        xs = [_rows(10, 100 * i) for i in range(4)]
        outs = await asyncio.gather(*(b.infer(x) for x in xs))
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)

    asyncio.run(main())
    assert model.calls == [10] * 4 and model.peak == 2


def test_one_call_at_a_time_by_default(pool):
    """max_calls=1 (the default): full batches wait for the running call."""
    model = Overlap(delay=0.01)
    b = Batcher(model, max_batch=15, max_delay_ms=50, executor=pool, inline_us=0)

    async def main():
        await asyncio.gather(*(b.infer(_rows(10, 100 * i)) for i in range(4)))

    asyncio.run(main())
    assert model.calls == [10] * 4 and model.peak == 1


def test_a_batch_that_may_grow_waits_for_the_running_call(pool):
    """With max_calls=2, requests arriving while a call runs and not filling a batch wait for it,
    and go together in the next call, as with one call at a time."""
    model = Overlap(delay=0.05)
    b = Batcher(model, max_batch=100, max_delay_ms=0, executor=pool, inline_us=0, max_calls=2)

    async def main():
        first = asyncio.ensure_future(b.infer(_rows(3, 0)))
        await asyncio.sleep(0.02)  # the first call is running
        xs = [_rows(3, 10 * i) for i in range(1, 4)]
        outs = await asyncio.gather(*(b.infer(x) for x in xs))
        for x, y in zip(xs, outs):
            np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)
        await first

    asyncio.run(main())
    assert model.calls == [3, 9] and model.peak == 1


def test_a_request_nothing_can_join_does_not_wait_for_company(pool):
    """Requests of 1000 rows with max_batch=1024: no request seen lately would fit beside one, so
    it runs at once instead of waiting the delay (30 s here) for company."""
    rec = Recorder()
    b = Batcher(rec, max_batch=1024, max_delay_ms=30_000, executor=pool, inline_us=0)

    async def main():
        for i in range(3):
            x = _rows(1000, 10_000 * i)
            np.testing.assert_array_equal(await b.infer(x), x.sum(axis=1, keepdims=True) * 2)

    t0 = time.perf_counter()
    asyncio.run(main())
    assert rec.calls == [1000] * 3 and time.perf_counter() - t0 < 25


def test_a_batch_nothing_can_join_runs_beside_the_running_call(pool):
    """With max_calls=2, a queued 1000-row request (max_batch=1024) starts beside the running call:
    waiting for it could not make its batch larger. The model's barrier breaks unless both run at once."""
    model = Overlap(meet=2)
    b = Batcher(model, max_batch=1024, max_delay_ms=30_000, executor=pool, inline_us=0, max_calls=2)

    async def main():
        first = asyncio.ensure_future(b.infer(_rows(1000, 0)))
        await asyncio.sleep(0.05)  # the first call is running, and waits for a second one
        x = _rows(1000, 5000)
        np.testing.assert_array_equal(await b.infer(x), x.sum(axis=1, keepdims=True) * 2)
        await first

    asyncio.run(main())
    assert model.calls == [1000, 1000] and model.peak == 2


def test_small_requests_still_wait_for_company_after_large_ones(pool):
    """Once single rows arrive again, a queued batch below max_batch may grow: it waits."""
    rec = Recorder()
    b = Batcher(rec, max_batch=1024, max_delay_ms=30, executor=pool, inline_us=0)

    async def main():
        await b.infer(_rows(1000, 0))
        await asyncio.gather(*(b.infer(_rows(1, i)) for i in range(16)))
        t0 = time.perf_counter()
        await b.infer(_rows(1, 0))
        return time.perf_counter() - t0

    assert asyncio.run(main()) >= 0.025 and rec.calls == [1000, 16, 1]


def test_a_failing_call_beside_another_reaches_only_its_requests(pool):
    """Two calls at once, one fails: its requests get the error, the other's their scores."""

    def model(x: np.ndarray) -> np.ndarray:
        time.sleep(0.01)
        if x[0, 0] < 0:
            raise RuntimeError("model exploded")
        return x.sum(axis=1, keepdims=True) * 2

    b = Batcher(model, max_batch=15, max_delay_ms=50, executor=pool, inline_us=0, max_calls=2)

    async def main():
        good, bad = _rows(10, 0), -_rows(10, 1)
        return await asyncio.gather(b.infer(good), b.infer(bad), return_exceptions=True)

    ok, err = asyncio.run(main())
    np.testing.assert_array_equal(ok, _rows(10, 0).sum(axis=1, keepdims=True) * 2)
    assert isinstance(err, RuntimeError) and "exploded" in str(err)
