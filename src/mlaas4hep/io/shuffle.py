"""Epoch plans and the shuffle buffer.

Shuffling has two stages, both seeded by ``(seed, epoch)`` so that an epoch is
reproducible whatever the number of workers:

1. :func:`plan_epoch` orders the units. Units of each file are permuted, then
   files are *interleaved in proportion to their size* (each unit gets a
   stratified key ``(k + u) / n_units_of_file``). Any window of consecutive
   units therefore holds every file in the share it has in the dataset, which
   is MLaaS4HEP's proportional mixing, without its per-event Python loop.
2. :func:`batches` pools decoded chunks into a buffer of at least
   ``buffer`` events, permutes it, and cuts batches from it.

Every event of the plan appears exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """Rows ``perm`` of a NumPy array (``np.take`` is about 2x faster than ``a[perm]`` for 2-D rows)."""
    return np.take(a, perm, axis=0)


def batches(
    tables: Iterable[tuple[Any, ...]],
    batch_size: int,
    buffer: float = 0,
    rng: np.random.Generator | None = None,
    cat: Callable[[list[Any]], Any] = np.concatenate,
    take: Callable[[Any, np.ndarray], Any] = np_take,
) -> Iterator[tuple[Any, ...]]:
    """Cut tuples of equal-length arrays into batches of ``batch_size`` rows (the last may be smaller).

    Without an ``rng`` order is kept. With one, tuples are pooled until at least
    ``buffer`` new rows are held and the pool is permuted; batches are cut from
    all but ``buffer / 2`` rows, which stay to mix with the next ``buffer`` new
    rows (so the end of one pool and the start of the next are mixed too, and no
    stretch of the epoch is left with the few chunks that arrived last). ``cat`` concatenates a
    list of arrays and ``take(a, perm)`` gathers rows, so the same code serves
    NumPy arrays and (e.g. GPU) tensors. Batches are slices (views) of the pool.

    The permutation moves *blocks* of ``batch_size / 256`` consecutive rows (at
    most 64): each batch still draws from 256 random places of the pool, so its
    class mix varies like a row-by-row draw of 256 events, while the gather reads
    memory in runs, up to twice as fast.
    """
    block = int(min(64, max(1, batch_size // 256)))
    keep = int(buffer // 2) if rng is not None and 2 * batch_size <= buffer < float("inf") else 0
    pool: list[tuple[Any, ...]] = []
    n = 0
    for t in tables:
        if len(t[0]) == 0:
            continue
        pool.append(t)
        n += len(t[0])
        if n >= max(buffer, batch_size) + keep:
            out, pool, n = _cut(pool, batch_size, rng, cat, take, keep, block)
            yield from out
    if n:
        out, _, _ = _cut(pool, batch_size, rng, cat, take, -1, block)
        yield from out


def block_permutation(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """A permutation of ``range(n)`` that moves runs of ``block`` consecutive indices together."""
    if block <= 1:
        return rng.permutation(n)
    starts = rng.permutation(-(-n // block)) * block
    idx = (starts[:, None] + np.arange(block)[None, :]).ravel()
    return idx[idx < n]


def _cut(
    pool: list[tuple[Any, ...]],
    batch_size: int,
    rng: np.random.Generator | None,
    cat: Callable[[list[Any]], Any],
    take: Callable[[Any, np.ndarray], Any],
    keep: int,
    block: int = 1,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """Batches from a pool, keeping ``keep`` rows (and the remainder) back; ``keep < 0``: flush all."""
    big = pool[0] if len(pool) == 1 else tuple(cat([t[i] for t in pool]) for i in range(len(pool[0])))
    n = len(big[0])
    if rng is not None:
        perm = block_permutation(rng, n, block)
        big = tuple(take(a, perm) for a in big)
    stop = n if keep < 0 else (max(n - keep, 0) // batch_size) * batch_size
    out = [tuple(a[s : min(s + batch_size, stop)] for a in big) for s in range(0, stop, batch_size)]
    rest = [tuple(a[stop:] for a in big)] if stop < n else []
    return out, rest, n - stop
