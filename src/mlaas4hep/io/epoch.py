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

:func:`epoch_chunks` (what :meth:`mlaas4hep.io.dataset.Dataset.chunks` runs)
asks :func:`plan_sources` for one task per unit, ``(unit, store, cached,
raw_root)``, runs them with :func:`~mlaas4hep.io.passes.decode_or_lay_out`, and
turns each task and its result into the chunk with :func:`chunk_of`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import progress
from . import firstuse
from .chunk import Chunk, ChunkStore, Unit, WriteBehind, dir_size, wait_for_writers
from .executor import InlineExecutor
from .passes import decode_or_lay_out
from .reader import UnitReader

if TYPE_CHECKING:
    from .dataset import Dataset

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
    task: UnitTask,
    out: Any,
    cache: ChunkStore | None,
    memory: firstuse.RawUnits,
    reader: UnitReader,
    into: ChunkStore | None = None,
) -> Chunk | None:
    """The chunk of a unit, from its task and what the task returned (None: skipped by ``on_error``).

    ``into``: the decoded cache, when a raw unit held in memory is laid out straight into it.
    """
    u, store, cached, src = task
    chunk: Chunk  # a ChunkStore reads back what it was given
    if cached and cache is not None:
        chunk = cache.read(u)
        return chunk
    if src == firstuse.MEMORY:  # laid out by a thread of the pool, or here
        return out if isinstance(out, Chunk) else memory.lay_out(reader, u, into)
    if out is None:  # skipped (on_error: skip)
        return None
    if isinstance(out, Chunk):
        return out
    assert store is not None  # the worker wrote the chunk there
    chunk = store.read(u)
    return chunk


def epoch_chunks(
    ds: Dataset, epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool | None = None
) -> Iterator[Chunk]:
    """The decoded chunks of ``ds``'s epoch, in plan order, made ahead by its workers."""
    wait_for_writers()  # the cache writes of the epoch before (this plan reads what they wrote)
    c, units = ds.config, ds.units(epoch, rank, world, shuffle)
    reader, cache, mem = ds._reader(), ds.cache, ds._raw
    decode = [u for u in units if u not in mem and not (cache is not None and cache.has(u))]
    # threads lay out the raw units held in memory too; worker processes do not (they are
    # this process's), so with only cached and in-memory units no worker process is needed
    threads = ds.in_process and not ds.inline and (bool(decode) or any(u in mem for u in units))
    ex: Executor = ds._executor() if (decode or threads) and not ds.inline else InlineExecutor()
    # Workers on other machines (Dask) send the arrays back; this process writes its cache.
    local_fs = getattr(ex, "shares_filesystem", True)
    here = ds.in_process or not decode  # every chunk is made in this process
    spool = None if here or not local_fs else ChunkStore(tempfile.mkdtemp(prefix="mlaas4hep-spool-"))
    todo, behind = plan_sources(
        units,
        cache,
        mem,
        ds._raw_store(),
        spool,
        here=here,
        local_fs=local_fs,
        limit=c.cache_max_gb * 2**30,
        per_event=event_bytes(ds.n_features),
    )
    # a shuffled epoch holds a buffer's chunks anyway: as many may wait for the writer at no cost
    shuffled = c.shuffle if shuffle is None else shuffle
    depth = 2 + (c.buffer // max(1, c.chunk_size) if shuffled else 0)
    writer = WriteBehind(cache, depth) if cache is not None and behind else None
    try:
        with progress.bar(
            f"epoch {epoch}", sum(u.stop - u.start for u in units), show=ds.show_progress
        ) as bar:
            # a raw unit in memory whose chunk goes to the cache is laid out into the cache's files
            into = cache if writer is not None else None
            fn = (
                partial(_in_process, reader, mem, into, behind)
                if threads
                else partial(decode_or_lay_out, reader)
            )
            for task, out in ds._map(fn, todo, ex):
                u, store = task[0], task[1]
                chunk = chunk_of(task, out, cache, mem, reader, into if u in behind else None)
                if chunk is None:  # skipped (on_error: skip)
                    continue
                if (
                    writer is not None
                    and u in behind
                    and not (task[3] == firstuse.MEMORY and into and into.has(u))
                ):
                    writer.put(u, chunk)
                if store is spool and spool is not None:
                    spool.remove(u)  # the memory map stays valid after the unlink: no copy
                bar.advance(u.stop - u.start)
                yield chunk
    finally:
        if writer is not None:
            writer.finish()  # the last writes go on behind the epoch's last batches
        if spool is not None:
            shutil.rmtree(spool.root, ignore_errors=True)


def _in_process(
    reader: UnitReader,
    memory: firstuse.RawUnits,
    into: ChunkStore | None,
    behind: set[Unit],
    task: UnitTask,
) -> Chunk | int | None:
    """A unit's task on a thread of this process: a raw unit held in memory is laid out
    there (in parallel with the others; into the cache ``into`` when its chunk goes
    there, i.e. it is in ``behind``), anything else as on a worker."""
    if task[3] == firstuse.MEMORY and not task[2]:
        return memory.lay_out(reader, task[0], into if task[0] in behind else None)
    return decode_or_lay_out(reader, task)
