"""The specs pass as a tree-reduce: per-unit statistics merged on the workers.

Each leaf computes the statistics of one (file, entry range) unit; internal
nodes merge groups of ``split_every`` consecutive partials, in unit order. The
shape of the tree depends only on the number of units, so the result is the
same, to the last bit, whatever the number of workers and whatever order the
tasks finish in. Only the root's small result travels back to the client.

With ``on_error: skip`` a leaf that fails on a bad file records the error in
its partial instead of failing, so one corrupt file does not lose the rest of
the reduction; with ``on_error: raise`` the error propagates to the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import Mlaas4hepError
from ..io.chunk import Unit
from ..io.passes import unit_stats
from ..io.reader import UnitReader
from ..io.specs import Stats


@dataclass
class StatsPartial:
    """Merged statistics of some units, the events they selected per file, and their errors."""

    stats: dict[str, Stats] = field(default_factory=dict)
    selected: dict[int, int] = field(default_factory=dict)
    errors: list[tuple[Unit, Exception]] = field(default_factory=list)
    #: per worker: [tasks, events, busy seconds]
    workers: dict[str, list[float]] = field(default_factory=dict)


def detached(err: Mlaas4hepError) -> Mlaas4hepError:
    """A copy of ``err`` without traceback, cause or context: what may safely cross the wire.

    The chain of a read error can hold uproot objects that view a memory-mapped
    file which was closed since; pickling them (as Dask does with a failed
    task's exception and its causes, through tblib) crashed the worker with
    SIGSEGV. The message already names the file, the entries and the original
    error. (Not ``copy.copy``: once Dask's tblib has registered the class, a
    copy keeps the traceback and the context.)
    """
    from ..errors import _rebuild

    return _rebuild(type(err), err.args, dict(err.__dict__))


def worker_name() -> str:
    """The name of the Dask worker running the current task (``"client"`` outside one)."""
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.name if w.name is not None else w.address)
    except (ImportError, ValueError):
        return "client"


def stats_leaf(reader: UnitReader, names: list[str], skip: bool, unit: Unit) -> StatsPartial:
    """Statistics of one unit (errors recorded when ``skip``, raised otherwise)."""
    t0 = time.perf_counter()
    out, error = StatsPartial(), None
    try:
        out.stats, n = unit_stats(reader, names, unit)
        out.selected[unit.file] = n
    except Mlaas4hepError as err:
        error = detached(err)
    if error is not None:
        if not skip:
            raise error  # outside the except block: no chain of causes to pickle
        out.errors.append((unit, error))
    out.workers[worker_name()] = [1, unit.stop - unit.start, time.perf_counter() - t0]
    return out


def combine(parts: Sequence[StatsPartial]) -> StatsPartial:
    """Merge partials in the order given (the order fixes the floating-point result)."""
    out = StatsPartial()
    for p in parts:
        for name, s in p.stats.items():
            out.stats[name] = out.stats[name].merge(s) if name in out.stats else s
        for f, n in p.selected.items():
            out.selected[f] = out.selected.get(f, 0) + n
        out.errors.extend(p.errors)
        for w, v in p.workers.items():
            acc = out.workers.setdefault(w, [0, 0, 0.0])
            for i in range(3):
                acc[i] += v[i]
    return out


def tree_reduce(submit: Callable[..., Any], leaves: list[Any], split_every: int = 8) -> Any:
    """Submit ``combine`` over groups of ``split_every`` futures, level by level; return the root future."""
    level = list(leaves)
    if not level:
        return submit(combine, [])
    while len(level) > 1:
        level = [submit(combine, level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]
