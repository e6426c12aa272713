"""Placing arrays in memory cheaply: jagged values scattered to their slots, small pages.

Two helpers of the first-use layout (:mod:`mlaas4hep.io.firstuse`):

* :class:`ScatterPlans` says where each value of a jagged branch goes in a
  row-major ``(n, F)`` array, so a branch is written into its columns in one
  scatter of its values, instead of a ``(n, width)`` padded block gathered first
  and copied into place afterwards.
* :func:`small_pages` allocates arrays without NumPy's request for transparent
  huge pages, which costs dearly on kernels that compact memory on the fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class ScatterPlans:
    """Where each value of a jagged branch goes in a row-major ``(n, F)`` array, shared by the
    branches of a collection (equal list offsets, compared value by value, as :class:`PadPlans`).

    :meth:`plan` returns ``(src, dst)``: value ``src[k]`` of the content goes to flat
    position ``dst[k]`` (``event * F + slot``, for the branch's first column at 0),
    slots at or beyond the width left out (clipped). ``src`` is None when the values
    kept are one run of the content from ``starts[0]`` (no list is clipped and the
    lists follow each other): the content is then written without a gather.
    Scattering the values (as many as the lists hold) costs less than gathering the
    ``(n, width)`` padded block and copying it into ``x``.
    """

    def __init__(self) -> None:
        self._key: tuple[np.ndarray, np.ndarray, int, int] | None = None
        self._plan: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros(0, np.int64))

    def plan(
        self, starts: np.ndarray, stops: np.ndarray, width: int, row: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        key = self._key
        if (
            key is not None
            and key[2:] == (width, row)
            and np.array_equal(key[0], starts)
            and np.array_equal(key[1], stops)
        ):
            return self._plan
        starts64, stops64 = starts.astype(np.int64), stops.astype(np.int64)
        counts = stops64 - starts64
        kept = np.minimum(counts, width)
        first = np.cumsum(kept) - kept  # where each event's values start among those kept
        # value k of event e (k from first[e]) goes to e * row + (k - first[e])
        shift = np.repeat(np.arange(len(kept), dtype=np.int64) * row - first, kept)
        dst = np.arange(len(shift), dtype=np.int64)
        dst += shift
        contiguous = len(starts64) == 0 or bool(np.array_equal(starts64[1:], stops64[:-1]))
        if contiguous and bool((kept == counts).all()):
            src = None
        else:  # value k of event e is content[starts[e] + k - first[e]]
            src = np.arange(len(shift), dtype=np.int64)
            src += np.repeat(starts64 - first, kept)
        self._key, self._plan = (starts, stops, width, row), (src, dst)
        return src, dst


def _madvise_switch() -> Any:
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    return getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)


@contextmanager
def small_pages() -> Iterator[None]:
    """Allocate the arrays made inside without asking the kernel for transparent huge pages.

    NumPy asks for them (``madvise(MADV_HUGEPAGE)``) on every array of 4 MiB or more.
    Where the kernel then compacts memory on the page fault (``defrag: madvise``, the
    default of many distributions) and memory is fragmented, each fault of a fresh
    array costs tens of microseconds: laying out one 100k-event unit took 80-100 ms,
    of which 50-80 ms in the kernel, against 33-45 ms with small pages (measured here).
    The arrays made here are written once, front to back, and read in row blocks:
    huge pages gain them nothing. NumPy's switch is process-wide, so it is set back on
    leaving (an allocation of another thread meanwhile just gets small pages too).
    """
    switch = _madvise_switch()
    if switch is None:
        yield
        return
    before = switch(False)
    try:
        yield
    finally:
        switch(before)
