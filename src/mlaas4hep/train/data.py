"""From the streaming layer to training batches: one path, :meth:`Dataset.batches`.

:class:`Source` wraps a :class:`~mlaas4hep.io.Dataset` and gives, per epoch, the
batches of *training* events as :class:`Part` s (``x``, ``y``, ``w``, and for
datasets with ``inputs:`` groups the per-group ``inputs`` and ``masks``):

* Streamed (the default): the batches are those of :meth:`Dataset.batches`
  (the batching that ``mlaas4hep stream`` measures), with a ``select`` that
  drops the validation events (:mod:`.split`) from each decoded chunk before
  the shuffle buffer, so training batches stay full. Epoch 0 decodes the
  chunks (and fills the decoded cache), later epochs read the cache
  memory-mapped. The first pass also gathers the held-out rows into
  :attr:`Source.val`. Memory holds the shuffle buffer, plus the validation set.
* In memory (``in_memory=True``, the traditional path kept for comparison):
  :meth:`Dataset.to_chunk` loads everything first; each epoch permutes all
  training rows (:func:`mlaas4hep.io.shuffle.batches` with an unbounded buffer)
  and cuts batches from them.

Both paths seed their permutations like :meth:`Dataset.batches` (the dataset's
``seed``, the epoch and the rank), so a resumed run continues exactly.
:func:`prefetch` runs a producer in a background thread so reading, cutting and
host-to-device copies overlap the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import Batch, Chunk, Dataset, GroupLayout
from ..io.shuffle import batches as cut_batches
from .split import validation_mask


@dataclass
class Part:
    """Rows of events: features ``x`` ``(n, F)``, labels ``y``, weights ``w``.

    With ``inputs:`` groups in the dataset, ``inputs`` maps each group to its
    array (``(n, length, features)`` for an object group, ``(n, features)`` for
    event-level features) and ``masks`` each object group to ``(n, length)``
    booleans, True on padding (as :attr:`mlaas4hep.io.Batch.masks` and
    PyTorch's ``key_padding_mask``). Arrays are NumPy arrays, or tensors once a
    backend has moved them.
    """

    x: Any
    y: Any
    w: Any
    inputs: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def map(self, fn: Callable[[Any], Any]) -> Part:
        """The same rows with ``fn`` applied to every array (e.g. a device transfer)."""
        return Part(
            fn(self.x),
            fn(self.y),
            fn(self.w),
            {k: fn(v) for k, v in self.inputs.items()},
            {k: fn(v) for k, v in self.masks.items()},
        )

    def take(self, index: Any) -> Part:
        """Rows ``index`` (a slice, a boolean mask or integer positions)."""
        return self.map(lambda a: a[index])

    @classmethod
    def concat(cls, parts: Sequence[Part], n_features: int) -> Part:
        if not parts:
            return cls(np.zeros((0, n_features), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
        if len(parts) == 1:
            return parts[0]

        def cat(arrays: list[Any]) -> Any:
            return np.concatenate(arrays)

        first = parts[0]
        return cls(
            cat([p.x for p in parts]),
            cat([p.y for p in parts]),
            cat([p.w for p in parts]),
            {k: cat([p.inputs[k] for p in parts]) for k in first.inputs},
            {k: cat([p.masks[k] for p in parts]) for k in first.masks},
        )

    @classmethod
    def of_chunk(cls, chunk: Chunk, layout: GroupLayout | None = None) -> Part:
        """A chunk's rows (``layout``: the dataset's :class:`~mlaas4hep.io.groups.GroupLayout`, which cuts the groups)."""
        x, mask = np.asarray(chunk.x), np.asarray(chunk.mask)
        inputs, masks = layout.apply(x, mask) if layout is not None else ({}, {})
        return cls(x, np.asarray(chunk.y), np.asarray(chunk.weight), dict(inputs), dict(masks))

    @classmethod
    def of_batch(cls, b: Batch) -> Part:
        """The rows of a :meth:`Dataset.batches` batch, its groups included."""
        return cls(b.x, b.y, b.weight, dict(b.inputs), dict(b.masks))

    # the arrays as one flat tuple, for mlaas4hep.io.shuffle.batches
    def _fields(self) -> tuple[Any, ...]:
        return (self.x, self.y, self.w, *self.inputs.values(), *self.masks.values())

    def _from_fields(self, t: Sequence[Any]) -> Part:
        k = len(self.inputs)
        return Part(t[0], t[1], t[2], dict(zip(self.inputs, t[3 : 3 + k])), dict(zip(self.masks, t[3 + k :])))


def expected_n_features(ds: Dataset) -> int | None:
    """The number of features, from the branch list and the configured lengths alone.

    Needs only the first file's metadata (no event is read). A jagged branch's
    length is the largest of ``jagged:`` and the ``length`` of the input groups
    holding it. ``None`` when a jagged branch has none: then only the specs
    pass (MLaaS4HEP's ``jdim``) can tell.
    """
    sch = ds.schema
    total = len(sch.flat)
    for name in sch.jagged:
        length = ds.config.physics.length_of(name)
        if length is None:
            return None
        total += int(length)
    return total


class Source:
    """Training batches per epoch, and the validation rows, from a Dataset."""

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

    def held_out(self, chunk: Chunk) -> np.ndarray:
        """True for the rows of ``chunk`` that are validation events."""
        return validation_mask(np.asarray(chunk.event_id), self.fraction, self.seed)

    def selector(self, collect: list[Part] | None = None) -> Callable[[Chunk], np.ndarray]:
        """The ``select`` of :meth:`Dataset.batches`: keeps training rows, appends held-out ones to ``collect``."""
        layout = self.ds.preprocessor.groups

        def select(chunk: Chunk) -> np.ndarray:
            held = self.held_out(chunk)
            if collect is not None and held.any():
                collect.append(Part.of_chunk(chunk.take(np.flatnonzero(held)), layout))
            return ~held

        return select

    def load(self) -> None:
        """In-memory mode: read everything now (the specs pass runs first if needed).

        Under DDP (``world > 1``) a rank loads only its shard of epoch 0's units,
        and keeps it for every epoch.
        """
        if not self.in_memory or self._memory is not None:
            return
        layout = self.ds.preprocessor.groups
        if self.world > 1:
            chunks = [ch for ch in self.ds.chunks(0, self.rank, self.world) if len(ch)]
            all_ = Chunk.concat(chunks) if chunks else Chunk.empty(self.n_features)
        else:
            all_ = self.ds.to_chunk()
        held = self.held_out(all_)
        self._memory = Part.of_chunk(all_.take(np.flatnonzero(~held)), layout)
        self.val = Part.of_chunk(all_.take(np.flatnonzero(held)), layout)

    def batches(self, epoch: int, batch_size: int) -> Iterator[Part]:
        """The training batches of an epoch; the first streamed pass also fills :attr:`val`."""
        if self.in_memory:
            self.load()
            assert self._memory is not None
            mem = self._memory
            c = self.ds.config
            rng = np.random.default_rng([c.seed, epoch, 1, self.rank]) if c.shuffle else None
            for t in cut_batches([mem._fields()], batch_size, float("inf"), rng):
                yield mem._from_fields(t)
            return
        collect: list[Part] | None = [] if self.val is None else None
        batches = self.ds.batches(batch_size, epoch, self.rank, self.world, select=self.selector(collect))
        for b in batches:
            yield Part.of_batch(b)
        if collect is not None:
            self.val = Part.concat(collect, self.n_features)

    def ensure_val(self) -> Part:
        """The validation rows, reading this rank's epoch-0 chunks if no pass has gathered them."""
        if self.val is None:
            if self.in_memory:
                self.load()
            else:
                collect: list[Part] = []
                select = self.selector(collect)
                for chunk in self.ds.chunks(0, self.rank, self.world):
                    select(chunk)
                self.val = Part.concat(collect, self.n_features)
        assert self.val is not None  # set above
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
    try:
        # inside the try: a Ctrl-C that comes while the thread starts (the main thread waits for it
        # there) must stop the thread too, or it would go on reading and waiting to hand over forever
        t.start()
        while True:
            obj = q.get()
            if obj is _END:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj
    finally:
        stop.set()
        if t.is_alive():  # not when Ctrl-C came before it started
            t.join(timeout=5)
