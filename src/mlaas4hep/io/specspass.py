"""The specs pass: one read of every unit for the statistics that the tensors depend on.

:meth:`mlaas4hep.io.dataset.Dataset.compute_specs` runs :func:`run_specs_pass`.
Each unit is decoded without lengths or normalisation (every flat branch and
every jagged branch whole), its per-branch statistics are merged into a
:class:`~mlaas4hep.io.specs.Specs`, and the events kept by the selection are
counted per file. On first use the same decode also keeps each unit's raw
tensors (in memory while they fit, else on disk; see :mod:`.firstuse`), so
that epoch 0 lays them out with the specs instead of decoding again. With
Dask, the statistics are tree-reduced on the workers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import progress
from . import catalog, firstuse
from .chunk import Unit, dir_size
from .errors import skippable
from .passes import stats_and_raw, unit_stats
from .preprocess import Preprocessor
from .shuffle import plan_units
from .specs import Specs, Stats

if TYPE_CHECKING:
    from .dataset import Dataset


def run_specs_pass(ds: Dataset) -> Specs:
    """Run the specs pass of ``ds`` over all its units (in parallel, on its executor)."""
    c, sch = ds.config, ds.schema
    names = sch.flat + sch.jagged
    reader = ds._reader(
        Preprocessor(
            flat=sch.flat,
            jagged=[(j, 0) for j in sch.jagged],
            new_variables=c.new_variables,
            selection=c.selection,
            tree=c.tree,
        )
    )
    infos = ds.file_infos
    units = plan_units([f["entries"] for f in infos], c.chunk_size, c.nevts, catalog.boundaries(infos))
    specs = Specs(flat=list(sch.flat), jagged=list(sch.jagged), key=ds._specs_key())
    selected = [0] * len(ds.urls)
    fn: Callable[[Any], tuple[Any, ...]] = partial(unit_stats, reader, names)
    ex = ds._executor()
    items: list[Any] = list(units)
    raw = ds._raw_store(create=True)
    given = [ds._given_length(j) for j in sch.jagged]
    per_event = firstuse.bytes_per_event(len(sch.flat), given)
    if raw is not None:  # one decode for specs and epoch 0: keep each unit's raw tensors
        # with a cache directory, a unit held here is decoded into the page cache, where it
        # becomes its decoded cache file in place (see mlaas4hep.io.roomfile)
        fn = partial(stats_and_raw, reader, names, given, files=str(raw.root) if c.cache_dir else None)
        # the disk's room: cache_max_gb less what the cache directory holds
        room = c.cache_max_gb * 2**30 - (dir_size(raw.root.parent) if c.cache_dir else 0)
        # memory for what this process decodes: with workers, the units it runs while they
        # start (HereOr); from a worker a raw unit would cross a pipe (pickled, copied four
        # times) and be laid out by this process alone, which costs more than the store on
        # disk, where the workers lay their units out in parallel
        # (without specs-dependent tensors the decoded cache may hold a unit already)
        cached = ds.cache if not ds._needs_specs() else None
        items = list(ds._raw.plan(units, per_event, raw, room, ds.in_process, cached))
    with progress.bar("specs", sum(u.stop - u.start for u in units), show=ds.show_progress) as bar:
        if hasattr(ex, "reduce_unit_stats"):  # Dask: a tree-reduce on the workers
            part = ex.reduce_unit_stats(reader, names, units, skip=c.on_error == "skip", advance=bar.advance)
            for unit, err in part.errors:
                if not skippable(err):  # a server that stayed down: never skipped
                    raise err
                ds._skip(ds.urls[unit.file], unit, err)
            specs.merge_chunk(part.stats)
            for f, n in part.selected.items():
                selected[f] += n
            items = []
        for item, result in ds._map(fn, items, ex):
            unit = item if isinstance(item, Unit) else item[0]
            ds._raw.settle(item, result, per_event)
            if result is None:
                continue
            partial_stats, n = result[:2]
            specs.merge_chunk(partial_stats)
            selected[unit.file] += n
            bar.advance(unit.stop - unit.start)
    # a run that stops here leaves what it holds to the next one
    ds._raw.leave_to_next_run(raw.root if raw is not None and c.cache_dir else None)
    for name in names:  # branches with no value at all (an empty file) still get stats
        specs.stats.setdefault(name, _empty_stats(name in sch.jagged))
    specs.files = [dict(f, selected=s) for f, s in zip(ds.file_infos, selected)]
    return specs


def _empty_stats(jagged: bool) -> Stats:
    return Stats(lengths=np.zeros(1, np.int64) if jagged else None)
