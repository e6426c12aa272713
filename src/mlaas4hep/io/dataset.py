"""The :class:`Dataset`: a training dataset streamed from native ROOT files.

Typical use::

    from mlaas4hep.io import Dataset
    ds = Dataset.from_config("config.yaml")
    ds.feature_names                       # flat features, then Jet_pt[0] ... Jet_pt[5] ...
    for b in ds.batches(batch_size=1024, epoch=0):
        b.x, b.mask, b.y, b.weight, b.event_id
    X, y = ds.to_numpy()                   # everything in memory (the traditional path)

Nothing is read until it is needed: ``file_infos`` opens every file and
checks its branch types against the dataset's reference schema (from
metadata, see :mod:`mlaas4hep.io.schema`), ``specs`` runs (or validates) the
specs pass, and ``batches`` streams units of ``chunk_size`` events through a
pool of decoding workers. Epoch 0 writes the
decoded chunks to a cache keyed by the configuration, the specs and the files'
fingerprints; later epochs read them back memory-mapped.

First use decodes every unit once: the specs pass also keeps each unit's
raw tensors (in memory while they fit, see :mod:`mlaas4hep.io.firstuse`),
and epoch 0 lays them out with the specs instead of decoding again, writing
the decoded cache behind it from a thread. With every jagged length given and
``normalize: none`` nothing depends on the specs, and epoch 0 starts at once.

Remote reads that fail for a transient reason (a storage restart, a timeout)
are retried for up to ``retry_budget`` seconds and never skipped; ``on_error:
skip`` skips bad files only. :attr:`Dataset.report` lists what was skipped
and counts the retries.

The class joins parts that each have a module: the files and their schema
checks (:mod:`.catalog`), the specs pass (:mod:`.specspass`), the
Preprocessor made from the specs (:mod:`.tensors`), the cache's keys and
folders (:mod:`.cache`), an epoch's chunks and where each comes from
(:mod:`.epoch`), the tasks the workers run (:mod:`.passes`) and the
:class:`~mlaas4hep.io.report.Report`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from . import cache as cache_mod
from . import catalog, firstuse, sources
from . import schema as schema_mod
from .batch import Batch
from .cache import CHUNK_FIELDS, SPECS_FIELDS
from .chunk import Chunk, ChunkStore, JaggedChunk, Unit, wait_for_writers
from .config import DatasetConfig
from .epoch import epoch_chunks
from .errors import ConfigError, GroupError, Mlaas4hepError, StaleSpecsError, skippable
from .executor import LOCAL_THREADS, default_workers, get_executor, ordered_map
from .groups import check_kinds
from .passes import decode_jagged_unit, tracked
from .preprocess import Preprocessor
from .reader import UnitReader
from .report import Report
from .shuffle import batches as cut_batches
from .shuffle import plan_epoch, plan_units, shard
from .specs import Specs
from .specspass import run_specs_pass
from .tensors import build_preprocessor

#: The dataset, and the names that moved to :mod:`.cache` and :mod:`.report` but are still imported from here.
__all__ = ["CHUNK_FIELDS", "SPECS_FIELDS", "Dataset", "Report"]

log = logging.getLogger(__name__)


class Dataset:
    """A streamed dataset described by a :class:`DatasetConfig`: ROOT files in,
    fixed-size tensors out, chunk by chunk, with bounded memory.

    Usually made with :meth:`from_config` (a YAML path, a dict or a config) or
    :meth:`from_mlaas4hep` (MLaaS4HEP's files.txt, labels.txt and params.json).
    Nothing is read when it is made: the files are opened on first use
    (:attr:`file_infos`), the specs pass runs when :attr:`specs` is first needed.

    Args:
        config (:class:`DatasetConfig`): what to read and how (see the README's keys).
        specs (None, :class:`Specs`, str or path, default None): specs to reuse
            instead of a specs pass; a path is loaded and checked against the
            files' fingerprints (stale specs are recomputed, with a warning).
            None takes ``specs:`` from the configuration, else computes them.
        show_progress (None or bool, default None): progress bars; None shows
            them on a terminal only.
        fused (bool, default True): the specs pass keeps its decoded units for
            epoch 0 (False: epoch 0 decodes every unit again, as before).
        raw_memory (None or int, default None): bytes of raw units the specs
            pass may hold in memory for epoch 0 (beyond them, units go to a
            store on disk); None: a quarter of the memory available.

    The main entry points: :meth:`batches` (shuffled mini-batches of ``x``,
    ``mask``, ``y``, ``weight``, ``event_id``), :meth:`chunks` (decoded units in
    plan order), :meth:`to_numpy` (everything in memory), :meth:`jagged_chunks`
    (awkward lists for set models), :attr:`feature_names`, :attr:`report`
    (what ``on_error: skip`` left out, and the retries).
    """

    def __init__(
        self,
        config: DatasetConfig,
        specs: Specs | str | os.PathLike[str] | None = None,
        show_progress: bool | None = None,
        fused: bool = True,
        raw_memory: int | None = None,
    ):
        self.config = config
        self.show_progress = show_progress
        #: Whether the specs pass keeps its decoded units for epoch 0 (False: decode twice, as before).
        self.fused = fused
        budget = firstuse.memory_budget() if raw_memory is None else int(raw_memory)
        #: The specs pass's raw units until epoch 0 lays them out (see :mod:`.firstuse`).
        self._raw = firstuse.RawUnits(budget)
        self._files = config.resolve_files()
        self.urls = [u for u, _ in self._files]
        self._specs_arg = specs if specs is not None else config.extra.get("specs")
        #: What ``on_error: skip`` left out (dicts with file, entries and error), and the retries.
        self.report = Report()
        #: The files whose branch types define the dataset's schema (set by ``file_infos``).
        self.reference_files: list[str] = []
        self._selected: schema_mod.Schema | None = None

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_config(
        cls, config: str | os.PathLike[str] | dict[str, Any] | DatasetConfig, **kw: Any
    ) -> Dataset:
        if isinstance(config, DatasetConfig):
            return cls(config, **kw)
        if isinstance(config, dict):
            return cls(DatasetConfig.from_dict(config), **kw)
        return cls(DatasetConfig.from_yaml(config), **kw)

    @classmethod
    def from_mlaas4hep(cls, files: Any, labels: Any, params: Any, **kw: Any) -> Dataset:
        return cls(DatasetConfig.from_mlaas4hep(files, labels, params), **kw)

    # ------------------------------------------------------------ structure
    @property
    def workers(self) -> int:
        return default_workers() if self.config.workers is None else int(self.config.workers)

    @property
    def inline(self) -> bool:
        """Whether units are decoded in this process (``workers: 0``, no Dask)."""
        c = self.config
        return self.workers <= 0 and c.executor == "local" and not c.scheduler

    @property
    def in_process(self) -> bool:
        """Whether every task runs in this process: inline, or on a pool of threads."""
        return self.inline or self.executor_kind == "threads"

    @property
    def executor_kind(self) -> str:
        """Where tasks run: ``executor:``, except that ``local`` with 1 to :data:`LOCAL_THREADS`
        workers means threads of this process (see :mod:`mlaas4hep.io.executor`)."""
        c = self.config
        if c.executor == "local" and not c.scheduler and 0 < self.workers <= LOCAL_THREADS:
            return "threads"
        return "dask" if c.scheduler else c.executor

    def _executor(self) -> Executor:
        c = self.config
        return get_executor(self.executor_kind, c.workers, c.scheduler)

    def _slots(self, executor: Executor) -> int:
        """Tasks the executor runs at once: a Dask cluster knows its own size."""
        return getattr(executor, "nworkers", self.workers)

    @cached_property
    def file_infos(self) -> list[dict[str, Any]]:
        """Fingerprint and entries of every file (``entries`` 0 for skipped files).

        Every file's branch types are checked here against the reference schema,
        before any data is read: a file that does not fit raises, or with
        ``on_error: skip`` is skipped (listed in :attr:`report`).
        """
        c = self.config
        patterns = catalog.branch_patterns(c)
        fn = partial(
            catalog.file_info_task, c.tree, c.timeout, c.retries, c.retry_backoff, c.retry_budget, patterns
        )
        infos = [
            info if info is not None else {"url": url, "entries": 0, "skipped": True}
            for url, info in self._map(fn, self.urls)
        ]
        self._selected, self.reference_files, self.report.dropped_branches = catalog.reference_schema(
            c, infos, self._skip
        )
        return infos

    @cached_property
    def schema(self) -> schema_mod.Schema:
        """Selected branches and new variables, classified as flat or jagged."""
        c = self.config
        self.file_infos  # noqa: B018  (checks every file, sets the reference schema)
        if self._selected is None:
            raise Mlaas4hepError(f"no readable file in the dataset; skipped: {list(self.report)}")
        sch = schema_mod.Schema(list(self._selected.flat), list(self._selected.jagged))
        if c.new_variables:
            catalog.add_new_variables(c, sch, self.reference_files[0])
        catalog.check_jagged_keys(c, sch)
        try:
            check_kinds(c.inputs, sch.flat, sch.jagged)
        except GroupError as err:
            raise c.source.error(str(err), "inputs", *err.key) from None
        return sch

    @cached_property
    def specs(self) -> Specs:
        """The specs pass: loaded when valid for these files and this configuration, else computed."""
        path = self._specs_path()
        if isinstance(self._specs_arg, Specs):
            return self._specs_arg
        if path.exists():
            try:
                specs = Specs.load(path)
                self._check_specs(specs)
                return specs
            except StaleSpecsError as err:
                log.warning("specs %s are stale (%s): recomputing", path, err)
            except (ValueError, KeyError) as err:
                log.warning("specs %s unreadable (%s): recomputing", path, err)
        specs = self.compute_specs()
        specs.save(path)
        return specs

    def _specs_key(self) -> str:
        return cache_mod.specs_key(self.config, self.urls)

    def _specs_path(self) -> Path:
        if self._specs_arg is not None and not isinstance(self._specs_arg, Specs):
            return Path(self._specs_arg).expanduser()
        return cache_mod.specs_path(self._cache_root(), self._specs_key(), self.file_infos)

    def _check_specs(self, specs: Specs) -> None:
        cache_mod.check_specs(specs, self._specs_key(), self.file_infos)

    def compute_specs(self) -> Specs:
        """Run the specs pass over all units in parallel (see :mod:`.specspass`)."""
        return run_specs_pass(self)

    # ------------------------------------------------------------ first use
    def _given_length(self, name: str) -> int | None:
        """The configured length of a jagged branch (by name, else by collection), or None."""
        return self.config.physics.length_of(name)

    @property
    def needs_specs(self) -> bool:
        """Whether the tensors depend on the specs pass: ``normalize`` is not ``none``, or a
        jagged collection has no length in the configuration. When False, epoch 0 starts at
        once and no step of a run (:attr:`n_features`, :attr:`nevents`) needs the pass."""
        return self._needs_specs()

    def _needs_specs(self) -> bool:
        """Whether the tensors depend on the specs (normalisation, or a length from the data)."""
        if isinstance(self._specs_arg, Specs) or self.config.normalize != "none":
            return True
        return any(self._given_length(j) is None for j in self.schema.jagged)

    def _fusable(self) -> bool:
        c = self.config
        return self.fused and c.executor != "dask" and not c.scheduler

    def _raw_store(self, create: bool = False) -> ChunkStore | None:
        """Where the first-use pass keeps raw units on disk (None when fusing is off, or,
        unless ``create``, when none was kept): ``chunks/raw-<key>`` under the cache
        directory, else a temporary directory."""
        if not self._fusable():
            return None
        root = self._cache_root() / "chunks" / self._raw_name() if self.config.cache_dir else None
        return self._raw.store(root, create)

    def _raw_name(self) -> str:
        return cache_mod.raw_name(self.config, self.file_infos, [g for _, g in self._files])

    @cached_property
    def preprocessor(self) -> Preprocessor:
        """How raw branches become ``x``: lengths, pad value and normalisation constants."""
        sch = self.schema
        specs = self.specs if self._needs_specs() else None
        return build_preprocessor(self.config, sch, specs)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-event shape of each input group (``{"jets": (10, 5), "event": (3,)}``); {} without groups."""
        groups = self.preprocessor.groups
        return groups.shapes() if groups is not None else {}

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    @property
    def n_features(self) -> int:
        return self.preprocessor.n_features

    @property
    def label_names(self) -> list[str]:
        return self.config.label_list()

    @property
    def nevents(self) -> int:
        """Events after the selection (as counted by the specs pass).

        Without a selection, and with nothing depending on the specs (every
        jagged length given, ``normalize: none``), the events are those of the
        planned units: no specs pass runs just to count them.
        """
        if "specs" not in self.__dict__ and not self.config.selection and not self._needs_specs():
            return sum(u.stop - u.start for u in self.units(0, shuffle=False))
        return int(sum(f.get("selected", 0) for f in self.specs.files))

    # ------------------------------------------------------------ streaming
    def _reader(self, pre: Preprocessor | None = None) -> UnitReader:
        c = self.config
        groups = [g for _, g in self._files]
        labels = [int(g.label) if g.label is not None else -1 for g in groups]
        if c.label_branch is None and any(lab < 0 for lab in labels) and pre is None:
            raise ConfigError("every file group needs a 'label' (or set 'label_branch')")
        pre = pre or self.preprocessor
        return UnitReader(
            urls=self.urls,
            tree=c.tree,
            preprocessing=pre.to_dict(),
            labels=labels,
            weights=[float(g.weight) for g in groups],
            label_branch=c.label_branch,
            weight_branch=c.weight_branch,
            timeout=c.timeout,
            retries=c.retries,
            backoff=c.retry_backoff,
            budget=c.retry_budget,
        )

    def units(self, epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool | None = None) -> list[Unit]:
        """The units that rank ``rank`` of ``world`` reads in ``epoch``, in order."""
        c = self.config
        shuffle = c.shuffle if shuffle is None else shuffle
        files = self.specs.files if self._needs_specs() else self.file_infos  # the same entries
        units = plan_units([f["entries"] for f in files], c.chunk_size, c.nevts, catalog.boundaries(files))
        return shard(plan_epoch(units, shuffle, c.seed, epoch), rank, world)

    def _cache_root(self) -> Path:
        return cache_mod.cache_root(self.config.cache_dir)

    @cached_property
    def cache(self) -> ChunkStore | None:
        """The decoded cache for this configuration, specs and files (None when disabled)."""
        if not self.config.cache_dir:
            return None
        key = cache_mod.chunk_key(
            self.config, self.preprocessor, self.file_infos, [g for _, g in self._files]
        )
        root = self._cache_root() / "chunks"
        keep = {key, self._raw_name()} if self._fusable() else {key}
        cache_mod.evict(root, keep=keep, limit=self.config.cache_max_gb * 2**30)
        return ChunkStore(root / key)

    def chunks(
        self, epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool | None = None
    ) -> Iterator[Chunk]:
        """Decoded chunks of an epoch, in plan order, decoded ahead by the workers.

        Units the decoded cache holds are read back; raw units the specs pass
        holds in memory are laid out here (no worker needed); the others are
        decoded by the workers (which write the cache, or a spool the chunk is
        read back from), or in this process with ``workers: 0``. Chunks made in
        this process are written to the cache behind the consumer, by a thread.
        """
        return epoch_chunks(self, epoch, rank, world, shuffle)

    def jagged_chunks(
        self, epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool | None = None
    ) -> Iterator[JaggedChunk]:
        """Units with jagged features kept as awkward lists (normalised, not padded), for set/graph models.

        Same units, order, selection and labels as :meth:`chunks`; events are
        permuted within each unit when shuffling. Not cached.
        """
        c = self.config
        shuffle = c.shuffle if shuffle is None else shuffle
        rng = np.random.default_rng([c.seed, epoch, 3, rank])
        fn = partial(decode_jagged_unit, self._reader())
        for _, ch in self._map(fn, self.units(epoch, rank, world, shuffle)):
            if ch is not None:
                yield ch.take(rng.permutation(len(ch))) if shuffle else ch

    def batches(
        self,
        batch_size: int = 1024,
        epoch: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool | None = None,
        select: Callable[[Chunk], np.ndarray] | None = None,
    ) -> Iterator[Batch]:
        """Batches of an epoch (:class:`~mlaas4hep.io.batch.Batch`).

        Each has ``b.x``, ``b.mask``, ``b.y``, ``b.weight``, ``b.event_id``, and
        the input groups ``b.inputs[name]`` / ``b.masks[name]`` (empty dicts
        without ``inputs:``).

        Args:
            batch_size (int, default 1024): events per batch (the last may be smaller).
            epoch (int, default 0): seeds the order (with ``seed``).
            rank, world (int, default 0 and 1): this process's share of the units.
            shuffle (None or bool, default None): None follows the configuration.
            select (None or callable, default None): called on every decoded
                chunk, it returns one bool per event; events where it is False are
                dropped *before* batching, so batches stay full (e.g. to hold a
                validation set out by ``event_id``).
        """
        c = self.config
        shuffle = c.shuffle if shuffle is None else shuffle
        tables = (_rows(ch, select) for ch in self.chunks(epoch, rank, world, shuffle))
        if not shuffle:
            out = cut_batches(tables, batch_size)
        else:
            out = cut_batches(tables, batch_size, c.buffer, np.random.default_rng([c.seed, epoch, 1, rank]))
        layout = self.preprocessor.groups
        return (Batch.of(t, layout) for t in out)

    def to_chunk(self, epoch: int = 0) -> Chunk:
        """Everything in memory as one :class:`Chunk` (shuffled when the config says so)."""
        chunks = list(self.chunks(epoch))
        wait_for_writers()  # everything is here: so is the decoded cache
        if not chunks:
            return Chunk.empty(self.n_features)
        all_ = Chunk.concat([Chunk(*(np.asarray(getattr(ch, f)) for f in Chunk.FIELDS)) for ch in chunks])
        if self.config.shuffle:
            all_ = all_.take(np.random.default_rng([self.config.seed, epoch, 2]).permutation(len(all_)))
        return all_

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of the whole dataset in memory: the traditional path."""
        ch = self.to_chunk()
        return ch.x, ch.y

    # ------------------------------------------------------------ errors
    def _map(
        self, fn: Callable[[Any], Any], items: list[Any], ex: Executor | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """``(item, fn(item))`` in order, run ahead on the executor; a failure follows ``on_error``.

        Items are URLs, units, or tuples starting with a unit. A skipped item
        yields ``(item, None)`` and is listed in :attr:`report`.
        """
        ex = ex or self._executor()
        task = partial(tracked, fn)
        for item, fut in ordered_map(ex, task, items, prefetch=2 * max(1, self._slots(ex)) + 1):
            try:
                value, retried = fut.result()
                self._note_retries(retried)
                yield item, value
            except Mlaas4hepError as err:
                self._note_retries(getattr(err, "retry_events", []))
                if self.config.on_error == "raise" or not skippable(err):
                    raise
                unit = item[0] if isinstance(item, tuple) and isinstance(item[0], Unit) else item
                if isinstance(unit, Unit):
                    self._skip(self.urls[unit.file], unit, err)
                else:
                    self._skip(str(item), None, err)
                yield item, None

    def _note_retries(self, events: list[dict[str, Any]]) -> None:
        """Count a task's retries in the report (and, when a worker made them, in this process)."""
        if events:
            self.report.add_retries(events)
            sources.RETRIES.add(retries=sum(e.get("pid") != os.getpid() for e in events))

    def _skip(self, url: str, unit: Unit | None, err: Exception) -> None:
        entry: dict[str, Any] = {"file": url, "error": str(err), "type": type(err).__name__}
        if unit is not None:
            entry["entries"] = [unit.start, unit.stop]
        if self.report.add_skip(entry):  # each epoch meets it again: said and listed once
            where = url if unit is None else f"{url} entries {unit.start}-{unit.stop}"
            log.warning("skipped %s: %s", where, err)


def _rows(ch: Chunk, select: Callable[[Chunk], np.ndarray] | None) -> tuple[Any, ...]:
    """A chunk's arrays, less the events where ``select(ch)`` is False."""
    if select is None:
        return tuple(getattr(ch, f) for f in Chunk.FIELDS)
    keep = np.asarray(select(ch))
    if keep.dtype != bool or keep.shape != (len(ch),):
        raise ValueError(
            f"select must return one bool per event of the chunk, shape ({len(ch)},); "
            f"got {keep.dtype} of shape {keep.shape}"
        )
    return tuple(np.asarray(getattr(ch, f))[keep] for f in Chunk.FIELDS)
