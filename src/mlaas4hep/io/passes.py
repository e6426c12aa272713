"""The tasks that run on workers: file information, specs of a unit, decoding a unit.

Every task runs wrapped in :func:`tracked`, which sends the retries it made back
with its value (or its error), for the dataset's report.

The first-use tasks (:func:`stats_and_raw`, :func:`finalize_unit`) let the
specs pass and epoch 0 share one decode (see :mod:`mlaas4hep.io.firstuse`).

Each is a plain module-level function of picklable arguments, so the same code
runs inline, in a local process pool, or on a Dask cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from . import firstuse, schema, sources
from .chunk import Chunk, ChunkStore, JaggedChunk, Unit
from .errors import Mlaas4hepError
from .formats import EventsView
from .preprocess import Preprocessor
from .rawunit import RawChunk, finalize
from .reader import UnitReader, get_tree
from .specs import Stats, chunk_stats


def file_info(url: str, tree: str, timeout: float = 30.0, patterns: Sequence[str] = ()) -> dict[str, Any]:
    """Fingerprint and number of entries of one file; with ``patterns``, also ``types``.

    ``types`` maps each branch matching ``patterns`` to its kind and type name
    (:func:`mlaas4hep.io.schema.describe`): what the per-file schema check
    needs, read from the file's metadata, not its data; ``nbranches`` counts
    all the tree's branches (for the message of a pattern that matches none).
    """
    t = get_tree(url, tree, timeout)
    fp = sources.fingerprint(url, t, timeout)
    fp["entries"] = int(t.num_entries)
    if getattr(t, "boundaries", None):  # Parquet row groups, RNTuple clusters: units follow them
        fp["boundaries"] = list(t.boundaries)
    if patterns:
        fp["types"] = schema.describe(t, list(patterns))
        fp["nbranches"] = len(t.keys()) if isinstance(t, EventsView) else len(schema.leaves(t))
    return fp


def unit_stats(reader: UnitReader, names: list[str], unit: Unit) -> tuple[dict[str, Stats], int]:
    """Statistics of one unit's branches and new variables, after the selection."""
    pre: Preprocessor = reader.preprocessor
    arrays = pre.add_variables(reader.read_raw(unit, pre.branches))
    keep = pre.select(arrays)
    n = int(keep.sum()) if keep is not None else unit.stop - unit.start
    return chunk_stats(arrays, names, keep), n


def decode_unit(reader: UnitReader, root: str | None, unit: Unit) -> Chunk | int:
    """Decode one unit; write it to the store at ``root`` (returning its size) or return it."""
    chunk = reader.decode(unit)
    if root is None:
        return chunk
    ChunkStore(root).write(unit, chunk)
    return len(chunk)


def stats_and_raw(
    reader: UnitReader,
    names: list[str],
    given: list[int | None],
    item: tuple[Unit, Any],
    files: str | None = None,
) -> tuple[dict[str, Stats], int, RawChunk | None]:
    """The specs of one unit, and where the item says so its raw tensors.

    ``item`` is ``(unit, where)``: ``where`` :data:`~mlaas4hep.io.firstuse.MEMORY`
    returns the raw unit (to be held by the calling process), a path writes it
    to the raw store there, a :class:`~mlaas4hep.io.firstuse.HereOr` does the
    first in the process it names and the second elsewhere, None (no room
    left) computes only the statistics, exactly as :func:`unit_stats` does.

    ``files``: where a raw unit that stays in this process is decoded into a
    file in the page cache (see :mod:`mlaas4hep.io.roomfile`).
    """
    unit, where = item
    if where is None:
        return (*unit_stats(reader, names, unit), None)
    here = where == firstuse.MEMORY or (isinstance(where, firstuse.HereOr) and where.pid == os.getpid())
    stats, n, raw = firstuse.decode_raw(reader, names, given, unit, files if here else None)
    if isinstance(where, firstuse.HereOr):
        if where.pid == os.getpid():  # the calling process ran it (its workers were starting)
            return stats, n, raw
        where = where.root
    if where == firstuse.MEMORY:
        return stats, n, raw
    firstuse.raw_store(where).write(unit, raw)
    return stats, n, None


def finalize_unit(reader: UnitReader, raw_root: str, root: str | None, unit: Unit) -> Chunk | int:
    """Lay out a raw unit with ``reader``'s preprocessing, then drop the raw unit.

    Like :func:`decode_unit`: writes the chunk to the store at ``root`` (returning
    its size) or returns it.
    """
    raws = firstuse.raw_store(raw_root)
    if root is not None:
        return firstuse.lay_out_into(raws, ChunkStore(root), unit, reader.preprocessor)
    chunk = finalize(raws.read(unit), reader.preprocessor)
    raws.remove(unit)  # a memory map of it stays valid after the unlink
    return chunk


def decode_or_lay_out(reader: UnitReader, item: tuple[Any, ...]) -> Chunk | int | None:
    """The task of one unit of an epoch; ``item`` is ``(unit, store, cached, raw_root)``.

    Nothing for a cached unit or one held in memory (the caller lays it out); a raw unit
    of the first-use pass's store laid out; else a unit decoded.
    """
    unit, store, cached, raw_root = item
    if cached or raw_root == firstuse.MEMORY:
        return None
    root = str(store.root) if store is not None else None
    if raw_root is not None:
        try:
            return finalize_unit(reader, raw_root, root, unit)
        except FileNotFoundError:  # another process used and removed it: decode after all
            pass
    return decode_unit(reader, root, unit)


def decode_jagged_unit(reader: UnitReader, unit: Unit) -> JaggedChunk:
    """One unit with its jagged features kept as awkward lists (see ``Dataset.jagged_chunks``)."""
    return reader.decode_jagged(unit)


def tracked(fn: Callable[[Any], Any], item: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``fn(item)``; return its value and the retries it made (an error carries them along)."""
    try:
        value = fn(item)
    except Mlaas4hepError as err:
        err.retry_events = sources.drain_retry_events()
        raise
    return value, sources.drain_retry_events()
