"""Where the chunk of each unit of an epoch comes from, and where it goes.

A unit's chunk is, in this order of preference:

* read back from the decoded cache, when the cache holds it;
* laid out from the first-use pass's raw unit (see :mod:`mlaas4hep.io.firstuse`):
  in this process when the raw unit is held in memory, on a worker when it is
  in the raw store on disk;
* else decoded by a worker (or in this process, with ``workers: 0``).

A chunk made for the first time is written to the decoded cache while the
cache has room (``cache_max_gb``, an estimate of the decoded size per event):
by the worker that made it when it shares this machine's disk, else by this
process, behind the consumer (:class:`~mlaas4hep.io.chunk.WriteBehind`). Beyond
the room, a worker writes its chunk to a temporary spool the calling process
reads it back from (memory-mapped, no copy).

:func:`plan_sources` makes one task per unit, ``(unit, store, cached,
raw_root)``, for :func:`~mlaas4hep.io.passes.decode_or_lay_out`;
:func:`chunk_of` turns a task and its result into the chunk.
"""

from __future__ import annotations

from typing import Any

from . import firstuse
from .cache import dir_size
from .chunk import Chunk, ChunkStore, Unit
from .reader import UnitReader

#: One unit's task: the unit, the store the worker writes it to (None: returned, or made
#: here), whether the decoded cache holds it, and where its raw unit is (None: decode it).
UnitTask = tuple[Unit, ChunkStore | None, bool, str | None]


def event_bytes(n_features: int) -> int:
    """An estimate of what one decoded event takes in the cache: ``x``, ``mask`` and the rest."""
    return n_features * 5 + 28


def plan_sources(
    units: list[Unit],
    cache: ChunkStore | None,
    memory: firstuse.RawUnits,
    raw: ChunkStore | None,
    spool: ChunkStore | None,
    *,
    here: bool,
    local_fs: bool,
    limit: float,
    per_event: int,
) -> tuple[list[UnitTask], set[Unit]]:
    """The task of every unit, and the units whose chunk this process writes to the cache.

    ``here``: every chunk is made in this process; ``local_fs``: the workers
    share this machine's disk; ``limit``: the cache's size in bytes.
    """
    raw_root = str(raw.root) if raw is not None else None
    budget = limit - (cache.size() if cache else 0) - (raw.size() if raw else 0)
    todo: list[UnitTask] = []
    behind: set[Unit] = set()  # units whose chunk this process writes to the cache
    for u in units:
        # a raw unit kept by the first-use pass is laid out instead of decoded (its room is freed)
        src = firstuse.MEMORY if u in memory else None
        if src is None and raw is not None and raw.has(u):
            src = raw_root
            budget += dir_size(raw.path(u))
        if cache is not None and cache.has(u):
            todo.append((u, cache, True, None))
        elif cache is not None and budget > (u.stop - u.start) * per_event:
            budget -= (u.stop - u.start) * per_event
            made_here = here or src == firstuse.MEMORY or not local_fs
            todo.append((u, None if made_here else cache, False, src))
            if made_here:
                behind.add(u)
        else:
            todo.append((u, None if here or src == firstuse.MEMORY else spool, False, src))
    return todo, behind


def chunk_of(
    task: UnitTask, out: Any, cache: ChunkStore | None, memory: firstuse.RawUnits, reader: UnitReader
) -> Chunk | None:
    """The chunk of a unit, from its task and what the task returned (None: skipped by ``on_error``)."""
    u, store, cached, src = task
    chunk: Chunk  # a ChunkStore reads back what it was given
    if cached and cache is not None:
        chunk = cache.read(u)
        return chunk
    if src == firstuse.MEMORY:
        return memory.lay_out(reader, u)
    if out is None:  # skipped (on_error: skip)
        return None
    if isinstance(out, Chunk):
        return out
    assert store is not None  # the worker wrote the chunk there
    chunk = store.read(u)
    return chunk
