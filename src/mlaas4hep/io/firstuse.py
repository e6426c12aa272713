"""First use in one read: the specs pass keeps what it decodes, epoch 0 lays it out.

Without this module a first run decodes every unit twice: once for the specs
pass (statistics, multiplicities) and once more in epoch 0, because the padded
and normalised tensors depend on the specs (normalisation constants, and the
padding lengths of collections whose ``jagged`` length is not given).

Decoding (reading the baskets, decompressing, deserialising, evaluating new
variables and the selection, casting to float32, gathering lists) is the
expensive part; applying the specs afterwards is a column gather and two
vector operations. So the fused specs pass writes, next to the statistics of
each unit, a :class:`RawChunk`: the unit's selected events as float32 columns
(flat branches, then each jagged branch padded to the unit's own longest list,
or to its configured length), the list multiplicities, labels, weights and
event ids. Epoch 0 turns each raw unit into the final :class:`Chunk` with
:func:`finalize` (on the workers, writing it into the decoded cache) instead
of decoding the unit again.

The raw unit and its layout are in :mod:`mlaas4hep.io.rawunit`;
:func:`~mlaas4hep.io.rawunit.finalize` is bit-identical to a unit decoded
after a separate specs pass: values, masks and (since units keep their plan
order) batches.

The raw unit is made by scattering each value of a jagged branch straight
to its slot (:class:`~mlaas4hep.io.scatter.ScatterPlans`), not by padding each branch and then
assembling the columns; :func:`finalize` copies runs of columns to the
final widths a block of rows at a time. Both allocate their arrays with
small pages (:func:`~mlaas4hep.io.scatter.small_pages`).

Raw units wait for epoch 0 in memory while they fit (:class:`RawMemory`,
a quarter of the memory available by default): the specs pass hands them to
the calling process, and epoch 0 lays them out there (on its threads, with
workers that are threads), in place: a unit whose lengths come from the
specs is widened inside its own buffer (:attr:`RawChunk.room`), and one
whose chunk goes to the decoded cache is laid out straight into the cache's
files (:func:`lay_out_to_store`). With a cache directory, that buffer is
itself a file in the page cache (:class:`~mlaas4hep.io.roomfile.RoomFile`),
which becomes the chunk's ``x.npy``: its pages are written once. With worker processes, the units the calling process decodes
itself while its workers start stay in memory too (:class:`HereOr`); those
the workers decode, and those that do not fit, go to a
:class:`~mlaas4hep.io.chunk.ChunkStore` of :class:`RawChunk`
(``chunks/raw-<key>`` under the cache directory, or a temporary directory
when caching is off), laid out by the workers; a unit is removed once epoch
0 has laid it out. Raw units still in memory when their dataset goes away
(a run that only computed the specs) are written to the cache directory's
store, where the next run finds them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from .chunk import Chunk, ChunkStore, Unit, temp_dir
from .errors import cache_write_error
from .preprocess import PadPlans, Preprocessor, _flat, list_parts, pad_jagged
from .rawunit import RawChunk, finalize
from .reader import UnitReader
from .roomfile import RoomFile
from .scatter import ScatterPlans, small_pages
from .specs import Stats, chunk_stats

#: Bumped whenever the layout of a raw unit changes (it is part of the store's key).
RAW_VERSION = 2
#: Where a specs-pass task sends a unit's raw tensors back to the calling process (not to a store).
MEMORY = "memory"


class HereOr(NamedTuple):
    """Where a specs-pass task with workers keeps a unit's raw tensors: in memory when the
    task runs in process ``pid`` (the calling process, while its workers start), else in
    the store at ``root`` (on a worker: a raw unit would cross a pipe otherwise)."""

    pid: int
    root: str


def raw_store(root: Any) -> ChunkStore:
    """A store of :class:`RawChunk` at ``root``."""
    return ChunkStore(root, RawChunk)


@dataclass
class RawMemory:
    """Raw units held in this process until epoch 0 lays them out, within ``budget`` bytes.

    The specs pass reserves a unit's estimated size before it is decoded
    (:meth:`reserve`: no more than the budget is ever in flight), then keeps
    it at its real size (:meth:`keep`), or drops it if that would exceed the
    budget (epoch 0 then decodes that unit again). :meth:`pop` hands a unit
    over once.
    """

    budget: int
    units: dict[Unit, RawChunk] = field(default_factory=dict)
    used: int = 0
    #: :meth:`pop` may run on several threads at once (epoch 0 on a pool of threads)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy for another process holds no unit (see :meth:`RawUnits.__getstate__`)."""
        return (RawMemory, (self.budget,))

    def reserve(self, nbytes: int) -> bool:
        with self.lock:
            if self.used + nbytes > self.budget:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self.lock:
            self.used -= nbytes

    def keep(self, unit: Unit, raw: RawChunk, reserved: int) -> bool:
        """Hold ``raw`` in place of the ``reserved`` bytes; False (and dropped) past the budget."""
        with self.lock:
            self.used += raw.nbytes - reserved
            if self.used > self.budget:
                self.used -= raw.nbytes
                return False
            self.units[unit] = raw
            return True

    def __contains__(self, unit: object) -> bool:
        return unit in self.units

    def pop(self, unit: Unit) -> RawChunk | None:
        with self.lock:
            raw = self.units.pop(unit, None)
            if raw is not None:
                self.used -= raw.nbytes
        return raw

    def spill(self, root: str | None) -> None:
        """Write the units still held to the store at ``root`` (or just drop them)."""
        store = raw_store(root) if root is not None and self.units else None
        for unit, raw in list(self.units.items()):
            if store is not None:
                try:
                    store.write(unit, raw)
                except OSError:  # a full disk: the next run decodes these units again
                    store = None
            self.pop(unit)


class RawUnits:
    """Where the specs pass's raw units wait for epoch 0: memory first, then a store on disk.

    One per :class:`~mlaas4hep.io.Dataset`. :meth:`plan` says where each
    unit's raw tensors go, :meth:`settle` takes a specs task's result,
    :meth:`lay_out` turns a unit held in memory into its chunk.
    """

    def __init__(self, memory_budget: int):
        self.memory = RawMemory(memory_budget)
        self._tmp: str | None = None
        self._spill: weakref.finalize[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """A copy sent to another process (a spawned DataLoader worker) holds no raw unit:
        they belong to this process, which may lay them out or leave them to the next run;
        the copy decodes its units."""
        return {"memory": RawMemory(self.memory.budget), "_tmp": self._tmp, "_spill": None}

    def store(self, root: Path | None, create: bool = False) -> ChunkStore | None:
        """The store on disk: at ``root`` (under the cache directory, so a later run
        finds it), else a temporary directory that lives as long as this object.
        None, unless ``create``, when nothing was ever kept there."""
        if root is None and self._tmp is None and create:
            self._tmp = tempfile.mkdtemp(prefix="mlaas4hep-raw-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
        path = root if root is not None else (Path(self._tmp) if self._tmp is not None else None)
        if path is None or (not create and not path.is_dir()):
            return None
        return raw_store(path)

    def plan(
        self,
        units: list[Unit],
        per_event: int,
        store: ChunkStore,
        disk_room: float,
        in_memory: bool,
        cached: ChunkStore | None = None,
    ) -> Iterator[tuple[Unit, Any]]:
        """Where each unit's raw tensors go: ``(unit, MEMORY)`` while the memory budget
        allows (``in_memory``: every task runs in this process), then ``(unit, store
        root)`` while ``disk_room`` bytes allow, then ``(unit, None)`` (statistics only:
        epoch 0 decodes that unit). With workers (not ``in_memory``) a unit within both
        budgets gets ``(unit, HereOr(this process, store root))``: memory if this process
        runs the task (while the workers start), else the store.

        A unit the decoded cache ``cached`` already holds keeps no raw copy. A
        unit's width is only known once it is decoded, so each is charged an
        estimate, ``per_event`` bytes an event (:func:`bytes_per_event`).
        """
        for u in units:
            need = (u.stop - u.start) * per_event
            if cached is not None and cached.has(u):
                yield (u, None)
            elif in_memory and self.memory.reserve(need):
                yield (u, MEMORY)
            elif need <= disk_room:
                disk_room -= need
                here = not in_memory and self.memory.reserve(need)
                yield (u, HereOr(os.getpid(), str(store.root)) if here else str(store.root))
            else:
                yield (u, None)

    def settle(self, item: Any, result: tuple[Any, ...] | None, per_event: int) -> None:
        """Hold the raw unit a specs task returned (or free what was reserved for one that
        was skipped, or written to the store by a worker)."""
        if not (isinstance(item, tuple) and (item[1] == MEMORY or isinstance(item[1], HereOr))):
            return
        unit: Unit = item[0]
        reserved = (unit.stop - unit.start) * per_event
        if result is None or result[2] is None:
            self.memory.release(reserved)
        else:
            self.memory.keep(unit, result[2], reserved)

    def leave_to_next_run(self, root: Path | None) -> None:
        """Write what is still held to the store at ``root`` when this object goes
        (a run that stopped after the specs pass); just drop it with no ``root``."""
        if self.memory.units and self._spill is None:
            self._spill = weakref.finalize(self, self.memory.spill, str(root) if root is not None else None)

    def __contains__(self, unit: object) -> bool:
        return unit in self.memory

    def lay_out(self, reader: UnitReader, unit: Unit, into: ChunkStore | None = None) -> Chunk:
        """A raw unit held in memory, laid out in place (decoded again if another pass took it).

        With ``into`` (the decoded cache, which has room for it) the chunk is laid out
        straight into its files there (:func:`lay_out_to_store`): the chunk returned
        maps them, and nothing is left to write.
        """
        raw = self.memory.pop(unit)
        if raw is None:
            return reader.decode(unit)
        if into is not None:
            chunk = lay_out_to_store(raw, reader.preprocessor, into, unit)
            if chunk is not None:
                return chunk
        return finalize(raw, reader.preprocessor, inplace=True)


def lay_out_to_store(raw: RawChunk, pre: Preprocessor, store: ChunkStore, unit: Unit) -> Chunk | None:
    """Lay ``raw`` out straight into the files of ``unit``'s chunk in ``store``; the chunk, mapped.

    ``x`` and ``mask`` are laid out into memory maps of their ``.npy`` files
    (allocated on disk first, so a full disk is an error here, not a signal
    later), then the small fields are written and the folder is renamed into
    place, as :meth:`~mlaas4hep.io.chunk.ChunkStore.write` does. The pages
    are written once, in the page cache: no array in memory first, no copy
    into the cache by ``write``. A raw unit that lives in a
    :class:`~mlaas4hep.io.roomfile.RoomFile` is laid out in place there, and
    that file becomes ``x.npy``: no page of ``x`` is new.

    None (nothing left behind, ``raw`` unchanged) when the store cannot be
    written: the caller lays the unit out in memory, and the cache writer
    reports the failure. A raw unit laid out in place and then refused by the
    store is returned laid out, not stored (the cache writer then reports it).
    """
    tmp = temp_dir(store.root, unit)
    shape = (len(raw), pre.n_features)
    try:
        tmp.mkdir(parents=True)
        mask = _mapped(tmp / "mask.npy", np.bool_, shape)
        if raw.file is None:
            chunk = finalize(raw, pre, out=(_mapped(tmp / "x.npy", np.float32, shape), mask))
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    try:
        if raw.file is not None:  # from here on ``raw`` is used up: laid out in its own file
            chunk = finalize(raw, pre, inplace=True, mask=mask)
            if not raw.file.publish(chunk.x, tmp / "x.npy"):  # not in place after all: written
                np.save(tmp / "x.npy", chunk.x, allow_pickle=False)
        chunk.x.flags.writeable = chunk.mask.flags.writeable = False  # as a chunk read from the cache
        for f in Chunk.FIELDS[2:]:
            np.save(tmp / f"{f}.npy", getattr(chunk, f), allow_pickle=False)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # the maps stay valid after the unlink
        return None if raw.file is None else chunk
    try:
        os.replace(tmp, store.path(unit))
    except OSError:  # another writer won the race: its chunk is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return chunk


def _mapped(path: Path, dtype: Any, shape: tuple[int, int]) -> np.ndarray:
    """A new ``.npy`` file of ``shape``, its blocks allocated (``posix_fallocate``), mapped for writing."""
    from numpy.lib.format import open_memmap

    a = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate") and a.size:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.path.getsize(path))
        finally:
            os.close(fd)
    return a


def bytes_per_event(nflat: int, given: list[int | None]) -> int:
    """An estimate of a raw unit's bytes per event, before it is read: the given
    lengths, else 16 values per jagged branch; counts, label, weight, event id."""
    return (nflat + sum(length or 16 for length in given)) * 4 + len(given) * 4 + 28


def memory_budget() -> int:
    """A quarter of the memory available now (MemAvailable; 1 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 2**30


def decode_raw(
    reader: UnitReader, names: list[str], given: list[int | None], unit: Unit, files: str | None = None
) -> tuple[dict[str, Stats], int, RawChunk]:
    """Statistics and raw tensors of one unit, from one read.

    ``reader``'s preprocessor is the specs pass's (flat and jagged names, new
    variables, selection; no lengths, no constants). ``given`` holds, for each
    jagged branch, its configured length or None (then the unit's longest
    list is kept). Returns ``(stats, selected events, RawChunk)``; the
    statistics are those :func:`mlaas4hep.io.passes.unit_stats` computes.

    ``files``: a directory on the decoded cache's filesystem, where a unit
    without a selection is decoded into a :class:`~mlaas4hep.io.roomfile.RoomFile`
    (memory otherwise, or where that cannot be made).
    """
    pre: Preprocessor = reader.preprocessor
    arrays = pre.add_variables(reader.read_raw(unit))
    keep = pre.select(arrays)
    n_all = unit.stop - unit.start
    n = int(keep.sum()) if keep is not None else n_all
    stats: dict[str, Stats] = chunk_stats(arrays, names, keep)

    counts = [_counts(arrays[name], n_all) for name, _ in pre.jagged]
    widths = [
        int(length) if length is not None else (int(c.max()) if len(c) else 0)
        for c, length in zip(counts, given)
    ]
    width = len(pre.flat) + sum(widths)
    # room for the final widths, which the specs pass decides (pages never written cost nothing)
    room = len(pre.flat) + sum(w if g is not None else max(2 * w, w + ROOM) for w, g in zip(widths, given))
    file = RoomFile.create(files, n_all * room, n_all * width) if files and keep is None else None
    if file is not None:
        buf = file.buffer  # zeros, as a file's holes read
    else:
        with small_pages():
            buf = np.zeros(n_all * room, np.float32)  # padded slots stay 0 (arbitrary)
    x = buf[: n_all * width].reshape(n_all, width)
    for i, name in enumerate(pre.flat):
        x[:, i] = _flat(arrays[name], name)
    col = len(pre.flat)
    plans = PadPlans()  # a collection's branches share their gather indices (exotic layouts)
    scatters = ScatterPlans()  # ... and their scatter indices
    for (name, _), width in zip(pre.jagged, widths):
        values = arrays[name]
        parts = list_parts(values) if isinstance(values, ak.Array) and values.ndim == 2 else None
        if parts is None:  # a regular numpy array, an exotic layout, or an error to report
            block, _ = pad_jagged(values, width, name, plans)
            x[:, col : col + width] = block
        elif width and len(parts[0]):
            starts, stops, data = parts
            src, dst = scatters.plan(starts, stops, width, x.shape[1])
            # every value of the lists (clipped to the width) straight to its slot of x
            first = int(starts[0])
            x.reshape(-1)[col:][dst] = data[src] if src is not None else data[first : first + len(dst)]
        col += width
    cnt = np.empty((len(counts), n_all), np.int32)
    for j, c in enumerate(counts):
        cnt[j] = c
    if keep is not None:
        x, cnt = x[keep], cnt[:, keep]
    raw = RawChunk(x, cnt, np.asarray(widths, np.int64), *reader._targets(unit, arrays, keep))
    raw.room = buf if keep is None and room > width else None
    raw.file = file if keep is None else None
    return stats, n, raw


#: Columns of room a raw unit leaves each jagged branch whose length comes from the specs
#: (at least; twice its own longest list where that is more), to be laid out in place.
ROOM = 8


def _counts(values: Any, n: int) -> np.ndarray:
    if isinstance(values, np.ndarray):  # a regular (n, k) array: every list has k values
        return np.full(n, values.shape[1] if values.ndim == 2 else 0, np.int64)
    parts = list_parts(values) if isinstance(values, ak.Array) and values.ndim == 2 else None
    if parts is not None:
        return np.asarray(parts[1] - parts[0], dtype=np.int64)
    return np.asarray(ak.to_numpy(ak.num(values, axis=1)), dtype=np.int64)


def lay_out_into(raws: ChunkStore, store: ChunkStore, unit: Unit, pre: Preprocessor) -> int:
    """Lay the raw unit of ``raws`` out into the decoded cache ``store``; its events.

    Where the raw unit is stored at its final width (the lengths are given),
    its ``x`` file moves into the chunk's directory (a rename) and is laid out
    there in place: nothing is copied, and only the mask, labels, weights and
    event ids are written. The file leaves the raw store before it changes,
    so an interrupted run never leaves a raw unit half laid out (the next run
    decodes that unit again). Otherwise (other widths, or another
    filesystem) the unit is read, laid out and written as a new chunk. The
    raw unit is removed either way.
    """
    src = raws.path(unit)
    widths = np.load(src / "widths.npy", allow_pickle=False)
    if [int(w) for w in widths] != [length for _, length in pre.jagged]:
        return _copy_into(raws, store, unit, pre)
    tmp = temp_dir(store.root, unit)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise cache_write_error(store.root, err) from None
    try:
        os.replace(src / "x.npy", tmp / "x.npy")
    except OSError:  # another filesystem (or the unit is gone: the caller decodes it)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (src / "x.npy").exists():
            raise FileNotFoundError(src / "x.npy") from None
        return _copy_into(raws, store, unit, pre)
    x = np.load(tmp / "x.npy", mmap_mode="r+", allow_pickle=False)
    rest = {f: np.load(src / f"{f}.npy", allow_pickle=False) for f in RawChunk.FIELDS if f != "x"}
    chunk = finalize(RawChunk(x, **rest), pre, inplace=True)
    try:
        for f in Chunk.FIELDS[1:]:
            np.save(tmp / f"{f}.npy", getattr(chunk, f), allow_pickle=False)
    except OSError as err:  # a full disk: the raw unit is gone with it, the next run decodes it again
        del x, chunk
        shutil.rmtree(tmp, ignore_errors=True)
        raws.remove(unit)
        raise cache_write_error(store.root, err) from None
    n = len(chunk)
    del x, chunk
    try:
        os.replace(tmp, store.path(unit))
    except OSError:  # another writer won the race: its chunk is identical
        shutil.rmtree(tmp, ignore_errors=True)
    raws.remove(unit)
    return n


def _copy_into(raws: ChunkStore, store: ChunkStore, unit: Unit, pre: Preprocessor) -> int:
    chunk = finalize(raws.read(unit), pre)
    store.write(unit, chunk)
    raws.remove(unit)  # a memory map of it stays valid after the unlink
    return len(chunk)
