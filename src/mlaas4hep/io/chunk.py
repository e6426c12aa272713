"""Decoded chunks, and the units of work that produce them.

A :class:`Unit` is a (file, entry range) pair: the grain of parallelism, of
retries, of the decoded cache and of shuffling. A :class:`Chunk` is what a unit
decodes to: model-ready arrays plus labels, weights and event ids.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import cache_write_error

log = logging.getLogger(__name__)


class Unit(NamedTuple):
    file: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.file}_{self.start}_{self.stop}"


@dataclass
class Chunk:
    """Arrays of ``n`` events: ``x``/``mask`` ``(n, F)``, ``y``, ``weight``, ``event_id`` ``(n, 2)``."""

    x: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    event_id: np.ndarray

    FIELDS = ("x", "mask", "y", "weight", "event_id")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.FIELDS)

    def take(self, index: slice | np.ndarray) -> Chunk:
        """Rows ``index`` (a slice gives views; an integer array gathers, with the fast ``np.take``)."""
        if isinstance(index, slice):
            return Chunk(*(getattr(self, f)[index] for f in self.FIELDS))
        return Chunk(*(np.take(getattr(self, f), index, axis=0) for f in self.FIELDS))

    @classmethod
    def concat(cls, chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return cls(*(np.concatenate([getattr(c, f) for c in chunks]) for f in cls.FIELDS))

    @classmethod
    def empty(cls, n_features: int) -> Chunk:
        return cls(
            np.zeros((0, n_features), np.float32),
            np.zeros((0, n_features), bool),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros((0, 2), np.int64),
        )


@dataclass
class JaggedChunk:
    """A unit with jagged features kept as awkward lists, for set and graph models.

    ``arrays`` maps each feature (flat or jagged) to its normalised values;
    ``y``, ``weight`` and ``event_id`` are as in :class:`Chunk`.
    """

    arrays: dict[str, Any]  # awkward arrays (jagged) or numpy arrays (flat)
    y: np.ndarray
    weight: np.ndarray
    event_id: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: slice | np.ndarray) -> JaggedChunk:
        return JaggedChunk(
            {k: v[index] for k, v in self.arrays.items()},
            self.y[index],
            self.weight[index],
            self.event_id[index],
        )


def dir_size(root: Path) -> int:
    """Bytes of the arrays (``*.npy``) below ``root``; 0 when it does not exist.

    Other writers may work below ``root`` meanwhile (a write-behind thread,
    another process sharing the cache): a file renamed or removed while it is
    counted is left out, never an error.
    """
    total = 0
    for folder, _, files in os.walk(root):  # a folder renamed or removed meanwhile is skipped
        for name in files:
            if name.endswith(".npy"):
                try:
                    total += (Path(folder) / name).stat().st_size
                except FileNotFoundError:
                    pass
    return total


def temp_dir(root: Path, unit: Unit) -> Path:
    """Where this process writes ``unit``'s chunk before renaming it into ``root`` (emptied first).

    Named ``.tmp-<unit>-<pid>``: :func:`clean_stale` removes those whose process is gone.
    """
    tmp = root / f".tmp-{unit.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def clean_stale(root: Path) -> list[str]:
    """Remove the temporary chunk folders (:func:`temp_dir`) of processes that died; their names.

    A process killed mid-write (or one that met a full disk before this
    version) leaves its ``.tmp-*-<pid>`` folder behind; one whose process is
    alive is being written and is kept.
    """
    removed: list[str] = []
    try:
        entries = list(root.glob(".tmp-*-*"))
    except OSError:
        return removed
    for d in entries:
        pid = d.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return sorted(removed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


class ChunkStore:
    """A directory of decoded chunks, one sub-directory of ``.npy`` files per unit.

    Writes are atomic (a temporary directory renamed into place), so a crash
    mid-write never leaves a partial chunk that a later epoch would trust.
    Reads are memory-mapped: workers hand chunks to the trainer through the page
    cache instead of a pipe, and later epochs read them back without decoding.
    ``chunk_type`` is the dataclass stored (its ``FIELDS`` name the files):
    :class:`Chunk`, or the first-use pass's raw units
    (:class:`mlaas4hep.io.rawunit.RawChunk`).
    """

    def __init__(self, root: str | os.PathLike[str], chunk_type: Any = Chunk):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_type = chunk_type

    def path(self, unit: Unit) -> Path:
        return self.root / unit.name

    def has(self, unit: Unit) -> bool:
        return (self.path(unit) / "event_id.npy").exists()

    def write(self, unit: Unit, chunk: Any) -> int:
        """Store ``chunk`` as ``unit``'s; its size in bytes.

        Raises :class:`~mlaas4hep.io.errors.CacheWriteError` naming this store's
        directory when it cannot be written (a full disk), after removing the
        partial files.
        """
        final = self.path(unit)
        tmp = temp_dir(self.root, unit)
        try:
            tmp.mkdir(parents=True)
            for f in self.chunk_type.FIELDS:
                np.save(tmp / f"{f}.npy", getattr(chunk, f), allow_pickle=False)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise cache_write_error(self.root, err) from None
        try:
            os.replace(tmp, final)
        except OSError:  # another writer won the race: its chunk is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return int(chunk.nbytes)

    def read(self, unit: Unit) -> Any:
        d = self.path(unit)
        fields = self.chunk_type.FIELDS
        return self.chunk_type(*(np.load(d / f"{f}.npy", mmap_mode="r", allow_pickle=False) for f in fields))

    def remove(self, unit: Unit) -> None:
        shutil.rmtree(self.path(unit), ignore_errors=True)

    def size(self) -> int:
        return dir_size(self.root)


class WriteBehind:
    """Writes chunks into a :class:`ChunkStore` from a background thread.

    The consumer hands a chunk over with :meth:`put` and goes on at once (the
    file writes release the GIL); at most ``depth`` chunks wait, which bounds
    the memory they hold. :meth:`finish` says no more chunks come and returns
    at once: the last writes go on behind the consumer (an epoch's last
    batches need not wait for them), and :func:`wait_for_writers` (called
    before the next epoch is planned, and at exit) waits for them. :meth:`close`
    is both. The chunk's arrays are made read-only, as chunks read back from a
    store are, so nothing changes them while they are written. A write that
    fails (a full disk) is logged and ends the writing: the cache is only a
    shortcut, and later epochs decode what is missing.
    """

    def __init__(self, store: ChunkStore, depth: int = 2):
        self.store = store
        self._queue: queue.Queue[tuple[Unit, Any] | None] = queue.Queue()
        self._room = threading.Semaphore(max(1, depth))  # chunks that may wait
        self._thread: threading.Thread | None = None
        self._finished = False
        self.failed: OSError | None = None

    def put(self, unit: Unit, chunk: Any) -> None:
        if self.failed is not None or self._finished:
            return
        for f in chunk.FIELDS:
            getattr(chunk, f).flags.writeable = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlaas4hep-cache-writer", daemon=True)
            self._thread.start()
        self._room.acquire()
        self._queue.put((unit, chunk))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.failed is None:
                try:
                    self.store.write(*item)
                except OSError as err:
                    self.failed = err
                    log.warning("%s; writing stopped (later epochs decode what is missing)", err)
            del item  # the chunk's memory goes as soon as it is written
            self._room.release()

    def finish(self) -> None:
        """No more chunks: the writes still queued go on; :func:`wait_for_writers` waits for them."""
        if self._finished:
            return
        self._finished = True
        if self._thread is not None:
            self._queue.put(None)
            with _WRITERS_LOCK:
                _WRITERS.append(self)

    def close(self) -> None:
        """Wait until every chunk put is written (or dropped after a failure)."""
        self.finish()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


#: Writers finished but maybe still writing (see :meth:`WriteBehind.finish`).
_WRITERS: list[WriteBehind] = []
_WRITERS_LOCK = threading.Lock()


def wait_for_writers() -> None:
    """Wait until every finished :class:`WriteBehind` of this process has written its last chunk."""
    with _WRITERS_LOCK:
        writers, _WRITERS[:] = list(_WRITERS), []
    for w in writers:
        w.close()


# before the interpreter stops its threads: a run that ends after its last batch keeps its cache
threading._register_atexit(wait_for_writers)  # type: ignore[attr-defined]
