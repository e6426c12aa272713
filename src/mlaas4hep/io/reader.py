"""Decoding one unit of work: raw branches from a file, to a :class:`Chunk`.

:class:`UnitReader` is small and picklable, so it is shipped to worker
processes (or Dask workers) once per task. Each process keeps its files open
between units. A read that fails closes the file, and every read of an entry
range of a remote file is retried with back-off through a freshly opened file
(see :func:`mlaas4hep.io.sources.with_retries`), so a transient network error
or a storage restart resumes at the failed range: no event is lost or
duplicated, and nothing read before the fault is served from a stale handle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import sources, urls
from .chunk import Chunk, JaggedChunk, Unit
from .errors import CorruptFileError, FileOpenError, Mlaas4hepError
from .preprocess import Preprocessor

_OPEN: dict[tuple[str, str], tuple[Any, tuple[int, int, int] | None]] = {}  # (tree, stat)
_MAX_OPEN = 64


def get_tree(url: str, tree: str, timeout: float) -> Any:  # uproot TTree or EventsView
    """An open tree, reused between units; a local file replaced on disk is reopened."""
    key = (url, tree)
    stat = _stat(url) if urls.is_local(url) else None
    entry = _OPEN.get(key)
    if entry is not None and entry[1] != stat:
        forget(url, tree)
        entry = None
    if entry is None:
        if len(_OPEN) >= _MAX_OPEN:
            forget(*next(iter(_OPEN)))
        entry = _OPEN[key] = (sources.open_tree(url, tree, timeout), stat)
    return entry[0]


def _stat(url: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(urls.local_path(url))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def forget(url: str, tree: str) -> None:
    entry = _OPEN.pop((url, tree), None)
    if entry is not None:
        try:
            entry[0].file.close()
        except Exception:
            pass


def read_arrays(
    url: str, tree: str, branches: list[str], start: int, stop: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Read ``branches`` of entries ``[start, stop)`` once (no retry)."""
    t = get_tree(url, tree, timeout)
    missing = [b for b in branches if b not in t]
    if missing:
        from .errors import BranchNotFoundError

        raise BranchNotFoundError(url, missing[0], "the file's schema differs from the dataset's")
    try:
        arrays: dict[str, Any] = t.arrays(
            branches, entry_start=start, entry_stop=stop, library="ak", how=dict
        )
        return arrays
    except Mlaas4hepError:
        forget(url, tree)
        raise
    except urls.transient_errors() as err:
        forget(url, tree)
        if urls.is_local(url):  # a local file that cannot be read as described is truncated
            raise CorruptFileError(url, f"entries {start}-{stop}: {err}") from None
        # the server or the network failed (retried), or the server answered that the file is gone
        transient = urls.is_transient(err)
        reason = f"entries {start}-{stop}: {type(err).__name__}: {err}"
        raise FileOpenError(url, reason, transient=transient) from (err if transient else None)
    except Exception as err:  # decompression or deserialisation failure
        forget(url, tree)
        raise CorruptFileError(url, f"entries {start}-{stop}: {type(err).__name__}: {err}") from None


@dataclass
class UnitReader:
    """Everything a worker needs to decode units into chunks."""

    urls: list[str]
    tree: str
    preprocessing: dict[str, Any]
    labels: list[int]
    weights: list[float]
    label_branch: str | None = None
    weight_branch: str | None = None
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    budget: float = 0.0
    _pre: Preprocessor | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_pre"] = None
        return d

    @property
    def preprocessor(self) -> Preprocessor:
        if self._pre is None:
            self._pre = Preprocessor.from_dict(self.preprocessing)
        return self._pre

    @property
    def branches(self) -> list[str]:
        extra = [b for b in (self.label_branch, self.weight_branch) if b]
        return list(dict.fromkeys(self.preprocessor.branches + extra))

    def read_raw(self, unit: Unit, branches: list[str] | None = None) -> dict[str, Any]:
        url = self.urls[unit.file]
        what = f"reading entries {unit.start}-{unit.stop} of {url}"

        def attempt() -> dict[str, Any]:
            try:
                return read_arrays(
                    url, self.tree, branches or self.branches, unit.start, unit.stop, self.timeout
                )
            except FileOpenError:
                forget(url, self.tree)
                raise

        return sources.with_retries(attempt, what, self.retries, self.backoff, url, self.budget)

    def decode(self, unit: Unit) -> Chunk:
        """The unit as padded, normalised tensors."""
        arrays = self.read_raw(unit)
        x, mask, keep = self.preprocessor.transform(arrays)
        return Chunk(x, mask, *self._targets(unit, arrays, keep))

    def decode_jagged(self, unit: Unit) -> JaggedChunk:
        """The unit with jagged features kept as awkward lists (normalised, not padded)."""
        arrays = self.read_raw(unit)
        values, keep = self.preprocessor.normalized(arrays)
        return JaggedChunk(values, *self._targets(unit, arrays, keep))

    def _targets(
        self, unit: Unit, arrays: dict[str, Any], keep: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, weights and event ids of the unit's selected events."""
        n_all = unit.stop - unit.start
        entries = np.arange(unit.start, unit.stop, dtype=np.int64)
        if self.label_branch:
            y = np.asarray(arrays[self.label_branch], dtype=np.int64)
        else:
            y = np.full(n_all, self.labels[unit.file], dtype=np.int64)
        w = np.full(n_all, self.weights[unit.file], dtype=np.float32)
        if self.weight_branch:
            w = w * np.asarray(arrays[self.weight_branch], dtype=np.float32)
        if keep is not None:
            entries, y, w = entries[keep], y[keep], w[keep]
        ids = np.empty((len(entries), 2), dtype=np.int64)
        ids[:, 0] = unit.file
        ids[:, 1] = entries
        return y, w, ids
