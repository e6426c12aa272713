"""Epoch plans and the shuffle buffer.

Shuffling has two stages, both seeded by ``(seed, epoch)`` so that an epoch is
reproducible whatever the number of workers:

1. :func:`plan_epoch` orders the units. Units of each file are permuted, then
   files are *interleaved in proportion to their size* (each unit gets a
   stratified key ``(k + u) / n_units_of_file``). Any window of consecutive
   units therefore holds every file in the share it has in the dataset, which
   is MLaaS4HEP's proportional mixing, without its per-event Python loop.
2. :func:`batches` pools decoded chunks into a buffer of at least
   ``buffer`` events and sends them out in random order, holding ``buffer / 2``
   events drawn from the newest chunks back for the next pool. Each batch is gathered straight
   from the pooled chunks (one copy per event, into small arrays), never from a
   pool-sized concatenation: making that costs more than the copy.

Every event of the plan appears exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from .chunk import Unit


def plan_units(
    entries: list[int],
    chunk_size: int,
    nevts: int = -1,
    boundaries: Sequence[Sequence[int] | None] | None = None,
) -> list[Unit]:
    """Split each file's entries (first ``nevts`` when ``nevts >= 0``) into units.

    ``boundaries[f]``, when given and not None, lists the row groups (Parquet)
    or clusters (RNTuple) of file ``f``: its units then follow them (see
    :func:`mlaas4hep.io.formats.cuts`).
    """
    from .formats import cuts

    units: list[Unit] = []
    for f, n in enumerate(entries):
        n = n if nevts is None or nevts < 0 else min(n, nevts)
        bounds = boundaries[f] if boundaries is not None and f < len(boundaries) else None
        if bounds:
            units.extend(Unit(f, s, e) for s, e in cuts(n, chunk_size, bounds))
        else:
            units.extend(Unit(f, s, min(s + chunk_size, n)) for s in range(0, n, chunk_size))
    return units


def plan_epoch(units: list[Unit], shuffle: bool, seed: int, epoch: int) -> list[Unit]:
    """Order units for an epoch (file order when ``shuffle`` is off)."""
    if not shuffle:
        return list(units)
    rng = np.random.default_rng([seed, epoch, 0])
    by_file: dict[int, list[Unit]] = {}
    for u in units:
        by_file.setdefault(u.file, []).append(u)
    keyed = []
    for f in sorted(by_file):
        us = by_file[f]
        for k, i in enumerate(rng.permutation(len(us))):
            keyed.append(((k + rng.random()) / len(us), us[i]))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [u for _, u in keyed]


def shard(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """Rank ``rank``'s share of an epoch's units (disjoint, balanced by events)."""
    if world <= 1:
        return units
    loads = np.zeros(world)
    mine = []
    for u in units:  # greedy: the least-loaded rank takes the next unit
        r = int(np.argmin(loads))
        loads[r] += u.stop - u.start
        if r == rank:
            mine.append(u)
    return mine


def np_take(a: Any, perm: np.ndarray) -> Any:
    """Rows ``perm`` of a NumPy array (``take`` is about 2x faster than ``a[perm]`` for 2-D rows;
    the method skips ``np.take``'s dispatch, microseconds that add up over tens of thousands of
    gathers an epoch)."""
    return a.take(perm, axis=0) if isinstance(a, np.ndarray) else np.take(a, perm, axis=0)


#: A pooled row is named by one int64: the serial number of its table (in arrival order) in the
#: high bits, its row in the table in the low :data:`ROW_BITS` bits. Sorting these names sorts
#: rows by table, then by row.
ROW_BITS = 32
_ROW_MASK = (1 << ROW_BITS) - 1


def batches(
    tables: Iterable[tuple[Any, ...]],
    batch_size: int,
    buffer: float = 0,
    rng: np.random.Generator | None = None,
    cat: Callable[[list[Any]], Any] = np.concatenate,
    take: Callable[[Any, np.ndarray], Any] = np_take,
    materialize: bool | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Cut tuples of equal-length arrays into batches of ``batch_size`` rows (the last may be smaller).

    Without an ``rng`` order is kept and batches are slices (views) of the
    tables; only a batch that straddles two tables is copied.

    With one, tables are pooled until ``buffer`` rows (and the ``keep`` rows of
    the previous pool) are held. A random draw of ``keep`` rows of the *new*
    tables is held back; every other row of the pool (the held-back rows of the
    previous pool included) goes out, in random order. So the end of one pool
    mixes with the start of the next, the last pool is never left with only the
    few tables that arrived last, and a table is released one pool after it
    arrived: memory holds the tables of two pools at most (``2.5 x buffer`` rows
    and a table). ``keep`` is ``buffer / 2`` (less, ``buffer - 2 * batch_size``,
    for buffers under 4 batches; none under 2).

    The permutations move *blocks* of ``batch_size / 256`` consecutive rows (at
    most 64): each batch still draws from 256 random places of the pool, so its
    class mix varies like a row-by-row draw of 256 events, while gathers read
    memory in runs.

    How rows reach a batch (``materialize``; the batches are the same):

    * ``False`` (the default for NumPy): each batch is gathered from the pooled
      tables: one copy per row, into small arrays that the allocator reuses. No
      pool-sized array is ever made; those cost more than the copy itself (a
      fresh array's pages are faulted in and zeroed by the kernel, worse with
      transparent huge pages).
    * ``True`` (the default when ``take`` is not NumPy's, e.g. for tensors on a
      GPU): the pool's tables are concatenated with ``cat`` and permuted with
      one ``take(a, perm)`` per pool; batches are views of the result. Two
      copies per row, but two kernels per pool, not per batch.

    ``cat`` concatenates a list of arrays and ``take(a, perm)`` gathers rows
    (``perm`` a NumPy int64 array), so the same code serves NumPy arrays and
    (e.g. GPU) tensors.
    """
    if rng is None:
        yield from _in_order(tables, batch_size, cat)
        return
    block = int(min(64, max(1, batch_size // 256)))
    keep = int(min(buffer // 2, buffer - 2 * batch_size)) if 2 * batch_size <= buffer < float("inf") else 0
    pool = _Pool(
        rng, batch_size, block, cat, take, take is not np_take if materialize is None else materialize
    )
    for t in tables:
        if len(t[0]) == 0:
            continue
        pool.add(t)
        if pool.size >= max(buffer, batch_size) + keep:
            yield from pool.cut(keep)
    if pool.size:
        yield from pool.cut(-1)


def block_permutation(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """A permutation of ``range(n)`` that moves runs of ``block`` consecutive indices together."""
    if block <= 1:
        return rng.permutation(n)
    starts = rng.permutation(-(-n // block)) * block
    idx = (starts[:, None] + np.arange(block)[None, :]).ravel()
    return idx[idx < n]


def _by_table(serials: np.ndarray, names: np.ndarray) -> np.ndarray:
    """An order of a batch's rows that groups them by table, in batch order within a table.

    A stable sort of the tables' serial numbers as 16-bit integers, which NumPy does as a
    radix sort (several times faster than sorting the 64-bit names); the names themselves
    are sorted where the batch spans more than 65536 tables. Either order gathers the same
    rows: they are put back in batch order afterwards.
    """
    lo = int(serials.min())
    if int(serials.max()) - lo < 2**16:
        return np.argsort((serials - lo).astype(np.uint16), kind="stable")
    return np.argsort(names)


def _in_order(
    tables: Iterable[tuple[Any, ...]], batch_size: int, cat: Callable[[list[Any]], Any]
) -> Iterator[tuple[Any, ...]]:
    """Batches in table order: views of each table, a concatenation only where a batch straddles tables."""
    carry: list[tuple[Any, ...]] = []  # the start of the next batch: ends of tables, under batch_size rows
    held = 0
    for t in tables:
        n = len(t[0])
        if n == 0:
            continue
        start = 0
        if held:
            start = min(batch_size - held, n)
            carry.append(tuple(a[:start] for a in t))
            held += start
            if held < batch_size:
                continue
            yield tuple(cat([c[i] for c in carry]) for i in range(len(t)))
            carry, held = [], 0
        stop = start + (n - start) // batch_size * batch_size
        for s in range(start, stop, batch_size):
            yield tuple(a[s : s + batch_size] for a in t)
        if stop < n:
            carry, held = [tuple(a[stop:] for a in t)], n - stop
    if held:
        yield carry[0] if len(carry) == 1 else tuple(cat([c[i] for c in carry]) for i in range(len(carry[0])))


class _Pool:
    """The tables of the shuffle buffer, and the names (see :data:`ROW_BITS`) of the rows held back."""

    def __init__(
        self,
        rng: np.random.Generator,
        batch_size: int,
        block: int,
        cat: Callable[[list[Any]], Any],
        take: Callable[[Any, np.ndarray], Any],
        materialize: bool,
    ) -> None:
        self.rng, self.batch_size, self.block = rng, batch_size, block
        self.cat, self.take, self.materialize = cat, take, materialize
        self.tables: dict[int, tuple[Any, ...]] = {}  # serial -> arrays; serials held are consecutive
        self.serial = 0  # of the next table
        self.first_new = 0  # serial of the first table since the last cut
        self.n_new = 0
        self.rest = np.zeros(0, np.int64)  # rows held back from the last cut

    @property
    def size(self) -> int:
        return len(self.rest) + self.n_new

    def add(self, t: tuple[Any, ...]) -> None:
        n = len(t[0])
        if n > _ROW_MASK:
            raise ValueError(f"a table of {n} rows is over the shuffle's limit of {_ROW_MASK}")
        self.tables[self.serial] = t if self.materialize else tuple(np.asarray(a) for a in t)
        self.serial += 1
        self.n_new += n

    def cut(self, keep: int) -> Iterator[tuple[Any, ...]]:
        """The batches of the pool, holding ``keep`` rows (and the remainder) back; ``keep < 0``: all."""
        bs, rng = self.batch_size, self.rng
        new = np.concatenate(
            [np.zeros(0, np.int64)]
            + [
                (s << ROW_BITS) + np.arange(len(self.tables[s][0]))
                for s in range(self.first_new, self.serial)
            ]
        )
        new = new[block_permutation(rng, len(new), self.block)]
        n = len(self.rest) + len(new)
        stop = n if keep < 0 else max(n - keep, 0) // bs * bs
        held = n - stop
        if held <= len(new):  # always, but for buffers under 2 batches: hold back new rows only
            out, self.rest = np.concatenate([self.rest, new[: len(new) - held]]), new[len(new) - held :]
        else:
            out, self.rest = self.rest[:stop], np.concatenate([self.rest[stop:], new])
        out = out[block_permutation(rng, len(out), self.block)]
        self.first_new, self.n_new = self.serial, 0
        if self.materialize:
            yield from self._views(out)
        else:
            for s in range(0, stop, bs):
                yield self._gather(out[s : s + bs])
        first = int(self.rest.min()) >> ROW_BITS if len(self.rest) else self.serial
        for s in [s for s in self.tables if s < first]:  # release the tables nothing is held back from
            del self.tables[s]

    def _gather(self, names: np.ndarray) -> tuple[Any, ...]:
        """Rows ``names`` (in that order), gathered from the tables they are in."""
        take, tables = self.take, self.tables
        serials = names >> ROW_BITS
        first = int(serials[0])
        if (serials == first).all():
            rows = names & _ROW_MASK
            return tuple(take(a, rows) for a in tables[first])
        order = _by_table(serials, names)  # each table's rows are read in one gather
        ordered = names[order]
        edges = np.flatnonzero(np.diff(ordered >> ROW_BITS)) + 1
        bounds = [0, *edges.tolist(), len(names)]
        spans = [(int(ordered[a]) >> ROW_BITS, a, b) for a, b in pairwise(bounds)]
        rows = ordered & _ROW_MASK
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # where each gathered row goes
        if take is not np_take:
            return tuple(
                take(self.cat([take(tables[s][i], rows[a:b]) for s, a, b in spans]), back)
                for i in range(len(tables[first]))
            )
        out = []
        for i, a0 in enumerate(tables[first]):
            grouped = np.empty((len(names), *a0.shape[1:]), a0.dtype)
            for s, a, b in spans:  # mode="clip": with "raise", take copies through a buffer
                tables[s][i].take(rows[a:b], axis=0, out=grouped[a:b], mode="clip")
            out.append(grouped.take(back, axis=0))
        return tuple(out)

    def _views(self, names: np.ndarray) -> Iterator[tuple[Any, ...]]:
        """Rows ``names`` cut into batches, views of one permuted copy of the concatenated tables.

        The rows held back are permuted with them and become the pool's only table,
        so every other table is released before the first batch (as much memory as
        two copies of a pool).
        """
        serials = sorted(self.tables)
        lengths = np.array([len(self.tables[s][0]) for s in serials], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        every = np.concatenate([names, self.rest])
        perm = offsets[(every >> ROW_BITS) - serials[0]] + (every & _ROW_MASK)
        width = len(self.tables[serials[0]])
        if len(serials) == 1:
            big = self.tables[serials[0]]
        else:
            big = tuple(self.cat([self.tables[s][i] for s in serials]) for i in range(width))
        permuted = tuple(self.take(a, perm) for a in big)
        del big
        stop, self.tables = len(names), {}
        if len(self.rest):
            self.tables[self.serial] = tuple(a[stop:] for a in permuted)
            self.rest = (self.serial << ROW_BITS) + np.arange(len(self.rest))
            self.serial += 1
        self.first_new = self.serial
        for s in range(0, stop, self.batch_size):
            yield tuple(a[s : min(s + self.batch_size, stop)] for a in permuted)
