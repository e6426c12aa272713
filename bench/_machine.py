"""Helpers shared by the bench scripts: what machine they ran on, and a timer."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn: Callable[..., int], *a: Any) -> tuple[int, float]:
    """``fn(*a)`` (a count of events) and the seconds it took."""
    t0 = time.perf_counter()
    n = fn(*a)
    return n, time.perf_counter() - t0
