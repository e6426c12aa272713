"""A time limit on every onnxruntime call: a model that runs too long is cut off, not waited for.

An uploaded ONNX graph may hold a ``Loop`` of 2**62 iterations, or take its
trip count from the input: once running, such a call never returns by itself.
:class:`Watchdog` runs each call with its thread's onnxruntime ``RunOptions``, and
one daemon thread sets ``terminate`` on every call past its deadline;
onnxruntime then stops between two kernels (also inside a ``Loop``) and the
call raises. The caller gets :class:`~mlaas4hep.serve.errors.ModelTimedOut`, and
``on_cut(key)`` is told, so the data plane marks that model unhealthy.

A call that fails by itself (onnxruntime's own error on these inputs) becomes
:class:`~mlaas4hep.serve.errors.ModelFailed`: what an uploaded model computes is
never a 500 of the server.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ..errors import Mlaas4hepError
from .errors import ModelFailed, ModelTimedOut

T = TypeVar("T")


class Watchdog:
    """Cuts off calls past their time; ``on_cut(key, seconds)`` is told of each (from the watchdog's thread)."""

    def __init__(self, on_cut: Callable[[Hashable, float], None], tick: float = 0.05):
        self.on_cut, self.tick = on_cut, tick
        self._calls: dict[int, tuple[float, Any, Hashable, float]] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def run(self, fn: Callable[[Any], T], key: Hashable, timeout: float, what: str) -> T:
        """``fn(run_options)`` with a time limit (blocking: called in an inference thread).

        ``what`` names the model in the errors (``model 'tth' version 2``).
        """
        ro = getattr(self._local, "ro", None)
        if ro is None or ro.terminate:  # a RunOptions per thread, new after a cut
            import onnxruntime as ort

            ro = self._local.ro = ort.RunOptions()
        call = next(self._ids)
        self._calls[call] = (time.monotonic() + timeout, ro, key, timeout)
        if self._thread is None:
            self._start()
        try:
            return fn(ro)
        except Mlaas4hepError:
            raise
        except Exception as err:
            if ro.terminate:
                raise ModelTimedOut(
                    f"{what} ran longer than {timeout:g} s and was cut off; it is marked unhealthy "
                    "until it is loaded again (its serving.json 'timeout_s' or --infer-timeout sets the limit)"
                ) from None
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelFailed(f"{what} failed on these inputs: {first[:500]}") from None
        finally:
            del self._calls[call]

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="mlaas4hep-watchdog", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while not self._closed:
            now = time.monotonic()
            for deadline, ro, key, timeout in list(self._calls.values()):
                if now > deadline and not ro.terminate:
                    ro.terminate = True
                    self.on_cut(key, timeout)
            self._wake.wait(self.tick)

    @property
    def running(self) -> int:
        """Calls in progress."""
        return len(self._calls)

    def close(self) -> None:
        """Cut every call in progress and stop the thread."""
        self._closed = True
        for _, ro, _, _ in list(self._calls.values()):
            ro.terminate = True
        self._wake.set()
