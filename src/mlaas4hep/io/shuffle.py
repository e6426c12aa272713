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

from typing import Iterable, Iterator

import numpy as np

from .chunk import Chunk, Unit


def plan_units(entries: list[int], chunk_size: int, nevts: int = -1) -> list[Unit]:
    """Split each file's entries (first ``nevts`` when ``nevts >= 0``) into units."""
    units = []
    for f, n in enumerate(entries):
        n = n if nevts is None or nevts < 0 else min(n, nevts)
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


def batches(
    chunks: Iterable[Chunk], batch_size: int, buffer: int = 0, rng: np.random.Generator | None = None
) -> Iterator[Chunk]:
    """Cut chunks into batches of ``batch_size`` (the last may be smaller).

    With an ``rng``, chunks are pooled until at least ``buffer`` events are
    held, and each pool is permuted before it is cut; without, order is kept.
    """
    pool: list[Chunk] = []
    n = 0
    for c in chunks:
        pool.append(c)
        n += len(c)
        if n >= max(buffer, batch_size):
            out, pool = _cut(pool, batch_size, rng, final=False)
            n = sum(len(p) for p in pool)
            yield from out
    if n:
        out, _ = _cut(pool, batch_size, rng, final=True)
        yield from out


def _cut(pool: list[Chunk], batch_size: int, rng, final: bool) -> tuple[list[Chunk], list[Chunk]]:
    big = Chunk.concat(pool)
    if rng is not None:
        big = big.take(rng.permutation(len(big)))
    stop = len(big) if final else (len(big) // batch_size) * batch_size
    out = [big.take(slice(s, min(s + batch_size, stop))) for s in range(0, stop, batch_size)]
    rest = [big.take(slice(stop, None))] if stop < len(big) else []
    return out, rest
