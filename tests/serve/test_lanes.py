"""The lanes that keep slow request work off the event loop (:mod:`mlaas4hep.serve.lanes`).

In-process, with real threads: a job that blocks does not block the event loop, a job past
its time limit answers the caller with the lane's error, a full lane refuses at once
(Overloaded, to retry after a second), and closing the lane answers every waiting caller.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from mlaas4hep.serve.errors import Overloaded, ShuttingDown, TimedOut
from mlaas4hep.serve.lanes import Lane


def _lane(threads=1, backlog=1, timeout=30.0) -> Lane:
    return Lane("test", threads, backlog, timeout, lambda t: TimedOut(f"longer than {t:g} s"))


def test_blocking_job_leaves_the_loop_free_and_times_out():
    release = threading.Event()
    lane = _lane(timeout=0.5)

    async def main():
        job = asyncio.ensure_future(lane.run(release.wait))
        ticks = 0
        while not job.done():  # the loop keeps running while the job blocks its thread
            await asyncio.sleep(0.01)
            ticks += 1
        with pytest.raises(TimedOut) as err:
            job.result()
        return ticks, err.value

    ticks, err = asyncio.run(main())
    assert ticks > 1 and str(err) == "longer than 0.5 s"
    assert lane.busy == 1  # the thread is still held by the job the caller gave up on
    release.set()


def test_full_lane_refuses_at_once_and_close_answers_the_waiting():
    release = threading.Event()
    lane = _lane(threads=1, backlog=1)

    async def main():
        running = asyncio.ensure_future(lane.run(release.wait))
        queued = asyncio.ensure_future(lane.run(lambda: 42))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as full:
            await lane.run(lambda: 1)
        lane.close()
        results = await asyncio.gather(running, queued, return_exceptions=True)
        return full.value, results

    full, results = asyncio.run(main())
    assert full.retry_after == 1 and "too many test requests at once" in str(full)
    assert all(isinstance(r, ShuttingDown) and r.retry_after == 5 for r in results)
    release.set()


def test_results_and_exceptions_come_back():
    lane = _lane()

    async def main():
        ok = await lane.run(sum, [1, 2, 3])
        with pytest.raises(ZeroDivisionError):
            await lane.run(lambda: 1 / 0)
        return ok

    assert asyncio.run(main()) == 6
    lane.close()
