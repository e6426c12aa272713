"""From the streaming layer to training batches, the same way for every framework.

:class:`Source` wraps a :class:`~mlaas4hep.io.Dataset` and yields, per epoch, the
*training* rows of each decoded chunk as a :class:`Part` (``x``, ``y``, ``w``),
holding the validation rows back (:mod:`.split`). The first pass of a run also
gathers the validation rows into :attr:`Source.val`.

* Streamed (the default): chunks come from :meth:`Dataset.chunks`; epoch 0
  decodes them (and fills the decoded cache), later epochs read the cache
  memory-mapped. Memory holds a few chunks, plus the validation set.
* In memory (``in_memory=True``, the traditional path kept for comparison):
  :meth:`Dataset.to_chunk` loads everything first and every epoch yields one
  Part holding all training rows.

:func:`mlaas4hep.io.shuffle.batches` then pools Parts into a buffer and draws batches
from it in random order: NumPy batches are gathered from the Parts (one copy per
event), tensor batches are views of one permuted copy of the pool (on the GPU, the
permutation runs there). :func:`prefetch` runs a producer in a background thread so reading,
splitting and host-to-device copies overlap the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io import Chunk, Dataset
from ..io.schema import collection
from .split import validation_mask


@dataclass
class Part:
    """Rows of training (or validation) events: features, labels, weights."""

    x: Any
    y: Any
    w: Any

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def concat(cls, parts: Sequence[Part], n_features: int) -> Part:
        if not parts:
            return cls(np.zeros((0, n_features), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "w")))


def split_chunk(chunk: Chunk, fraction: float, seed: int, need_val: bool = True) -> tuple[Part, Part | None]:
    """Training rows and (when ``need_val``) validation rows of one chunk (copies, not views)."""
    held = validation_mask(np.asarray(chunk.event_id), fraction, seed)
    keep = ~held
    train = Part(np.asarray(chunk.x)[keep], np.asarray(chunk.y)[keep], np.asarray(chunk.weight)[keep])
    val = None
    if need_val:
        val = Part(np.asarray(chunk.x)[held], np.asarray(chunk.y)[held], np.asarray(chunk.weight)[held])
    return train, val


def expected_n_features(ds: Dataset) -> int | None:
    """The number of features, from the branch list and ``jagged`` lengths alone.

    Needs only the first file's metadata (no event is read). ``None`` when a
    jagged collection has no length in the configuration: then only the specs
    pass (MLaaS4HEP's ``jdim``) can tell.
    """
    c, sch = ds.config, ds.schema
    total = len(sch.flat)
    for name in sch.jagged:
        length = c.jagged.get(name, c.jagged.get(collection(name)))
        if length is None:
            return None
        total += int(length)
    return total


class Source:
    """Training rows per epoch, and the validation rows, from a Dataset."""

    def __init__(
        self,
        ds: Dataset,
        validation_fraction: float,
        seed: int,
        in_memory: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.ds = ds
        self.fraction = float(validation_fraction)
        self.seed = int(seed)
        self.in_memory = in_memory
        self.rank, self.world = rank, world
        self.val: Part | None = None
        self._memory: Part | None = None

    @property
    def n_features(self) -> int:
        return self.ds.n_features

    def kind(self, epoch: int) -> str:
        """``memory``, ``cache`` (every unit of the epoch is in the decoded cache) or ``stream``."""
        if self.in_memory:
            return "memory"
        cache = self.ds.cache
        if cache is not None and all(cache.has(u) for u in self.ds.units(epoch, self.rank, self.world)):
            return "cache"
        return "stream"

    def load(self) -> None:
        """In-memory mode: read everything now (the specs pass runs first if needed).

        Under DDP (``world > 1``) a rank loads only its shard of epoch 0's units,
        and keeps it for every epoch.
        """
        if self.in_memory and self._memory is None:
            if self.world > 1:
                pairs = list(self.pairs(0, self.rank, self.world))
                self._memory = Part.concat([t for t, _ in pairs], self.n_features)
                self.val = Part.concat([v for _, v in pairs if v is not None], self.n_features)
                return
            train, val = split_chunk(self.ds.to_chunk(), self.fraction, self.seed)
            self._memory, self.val = train, val

    def pairs(
        self, epoch: int, rank: int = 0, world: int = 1, need_val: bool = True
    ) -> Iterator[tuple[Part, Part | None]]:
        """(training, validation) rows of each chunk that ``rank`` of ``world`` reads, in plan order."""
        for chunk in self.ds.chunks(epoch, rank, world):
            if len(chunk):
                yield split_chunk(chunk, self.fraction, self.seed, need_val)

    def epoch(self, epoch: int) -> Iterator[Part]:
        """Training Parts of an epoch; the first complete pass also fills :attr:`val`."""
        if self.in_memory:
            self.load()
            assert self._memory is not None
            yield self._memory
            return
        collect = self.val is None
        vals: list[Part] = []
        for train, val in self.pairs(epoch, self.rank, self.world, need_val=collect):
            if collect and val is not None and len(val):
                vals.append(val)
            if len(train):
                yield train
        if collect:
            self.val = Part.concat(vals, self.n_features)

    def ensure_val(self) -> Part:
        """The validation rows, reading an epoch's worth of chunks if no pass has gathered them."""
        if self.val is None:
            for _ in self.epoch(0):
                pass
        assert self.val is not None  # set by the pass above
        return self.val


_END = object()


def prefetch(items: Iterable, depth: int = 2, transform: Callable[[Any], Any] | None = None) -> Iterator:
    """Iterate ``items`` (optionally mapped by ``transform``) in a background thread.

    At most ``depth`` items wait in the queue. An exception in the producer is
    re-raised in the consumer; a consumer that stops early stops the producer.
    """
    if depth <= 0:
        yield from (map(transform, items) if transform else items)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for it in items:
                if not put(transform(it) if transform else it):
                    return
            put(_END)
        except BaseException as err:  # handed to the consumer
            put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=run, name="mlaas4hep-prefetch", daemon=True)
    t.start()
    try:
        while True:
            obj = q.get()
            if obj is _END:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj
    finally:
        stop.set()
        t.join(timeout=5)
