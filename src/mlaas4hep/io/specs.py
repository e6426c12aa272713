"""The specs pass: per-branch statistics that fix the tensor layout.

A first pass over the data records, for every selected branch (and new
variable): min, max, mean and standard deviation of its values, and for jagged
branches the largest multiplicity and its 99th percentile. It also records the
events of every file and each file's fingerprint, so that specs computed for
other data are detected and recomputed rather than silently reused (a known
weakness of MLaaS4HEP).

The JSON keeps MLaaS4HEP's keys (``jdim``, ``minv``, ``maxv``, ``fkeys``,
``jkeys``, ``nans``) and adds ``mean``, ``std``, ``jdim_p99``, ``files`` and the
configuration ``key``.

Partial statistics of chunks merge associatively (Chan et al.'s pairwise
update for mean and variance), so the pass runs as a parallel map over
(file, entry range) units followed by a tree-reduce.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from .preprocess import list_parts


@dataclass
class Stats:
    """Running statistics of one branch's values."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    nans: int = 0
    lengths: np.ndarray | None = None  # histogram of multiplicities (jagged only)

    @classmethod
    def of(cls, values: Any) -> Stats:
        jagged = isinstance(values, ak.Array) and values.ndim > 1
        lengths = None
        if jagged:
            parts = list_parts(values) if values.ndim == 2 else None
            if parts is not None and isinstance(values.layout, ak.contents.ListOffsetArray):
                starts, stops, content = parts  # contiguous lists: the content is the values
                lengths = np.bincount((stops - starts).astype(np.int64))
                values = content[starts[0] : stops[-1]] if len(starts) else content[:0]
            else:
                lengths = np.bincount(ak.to_numpy(ak.num(values, axis=1)).astype(np.int64))
                values = ak.to_numpy(ak.flatten(values, axis=None))
        elif isinstance(values, ak.Array):
            values = ak.to_numpy(values)
        v = _float64(values)
        s = cls(lengths=lengths)
        if not v.size:
            return s
        lo, hi = v.min(), v.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN or inf somewhere: counted, left out
            finite = np.isfinite(v)
            s.nans = int(v.size - finite.sum())
            v = v[finite]
            if not v.size:
                return s
            lo, hi = v.min(), v.max()
        s.count, s.mean = int(v.size), float(v.mean())
        # the deviations overwrite v where v is a copy of ours (no second array of them)
        d = np.subtract(v, s.mean, out=v) if _ours(v, values) else v - s.mean
        np.square(d, out=d)
        s.m2 = float(d.sum())
        s.min, s.max = float(lo), float(hi)
        return s

    def merge(self, other: Stats) -> Stats:
        n = self.count + other.count
        out = Stats(nans=self.nans + other.nans, min=min(self.min, other.min), max=max(self.max, other.max))
        if n:
            delta = other.mean - self.mean
            out.count = n
            out.mean = self.mean + delta * other.count / n
            out.m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        if self.lengths is not None or other.lengths is not None:
            a = self.lengths if self.lengths is not None else np.zeros(1, np.int64)
            b = other.lengths if other.lengths is not None else np.zeros(1, np.int64)
            out.lengths = np.zeros(max(len(a), len(b)), np.int64)
            out.lengths[: len(a)] += a
            out.lengths[: len(b)] += b
        return out

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    @property
    def max_length(self) -> int:
        return int(np.flatnonzero(self.lengths)[-1]) if self.lengths is not None and self.lengths.any() else 0

    def length_quantile(self, q: float) -> int:
        if self.lengths is None or not self.lengths.any():
            return 0
        cdf = np.cumsum(self.lengths) / self.lengths.sum()
        return int(np.searchsorted(cdf, q))


#: Per thread: the float64 array that :func:`_float64` casts a branch's values into, reused
#: from unit to unit (a fresh array of millions of values is faulted in and zeroed anew each
#: time, which costs more than the cast); at most :data:`SCRATCH_VALUES` values are kept.
_scratch = threading.local()
SCRATCH_VALUES = 2**23


def _float64(values: Any) -> np.ndarray:
    """``values`` as float64: the array itself when it is float64, else a cast into this
    thread's scratch array (valid until the next call on this thread)."""
    a = np.asarray(values)
    if a.dtype == np.float64 or a.dtype.kind not in "biuf" or a.size > SCRATCH_VALUES:
        return np.asarray(a, dtype=np.float64)
    buf: np.ndarray | None = getattr(_scratch, "buf", None)
    if buf is None or buf.size < a.size:
        buf = _scratch.buf = np.empty(max(a.size, 2 * (buf.size if buf is not None else 0)), np.float64)
    out = buf[: a.size].reshape(a.shape)
    np.copyto(out, a, casting="unsafe")
    return out


def _ours(v: np.ndarray, values: Any) -> bool:
    """Whether ``v`` may be overwritten: this thread's scratch array, or a copy made here."""
    buf = getattr(_scratch, "buf", None)
    return (buf is not None and np.may_share_memory(v, buf)) or (v.flags.owndata and v is not values)


@dataclass
class Specs:
    """Statistics of a dataset's branches, plus the files they were computed on."""

    flat: list[str] = field(default_factory=list)
    jagged: list[str] = field(default_factory=list)
    stats: dict[str, Stats] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""

    @property
    def nevents(self) -> int:
        return int(sum(f.get("entries", 0) for f in self.files))

    def merge_chunk(self, partial: Mapping[str, Stats]) -> None:
        for name, s in partial.items():
            self.stats[name] = self.stats[name].merge(s) if name in self.stats else s

    def max_length(self, name: str) -> int:
        return self.stats[name].max_length if name in self.stats else 0

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "fkeys": list(self.flat),
            "jkeys": list(self.jagged),
            "jdim": {k: s[k].max_length for k in self.jagged if k in s},
            "jdim_p99": {k: s[k].length_quantile(0.99) for k in self.jagged if k in s},
            "minv": {k: _num(v.min) for k, v in s.items()},
            "maxv": {k: _num(v.max) for k, v in s.items()},
            "mean": {k: v.mean for k, v in s.items()},
            "std": {k: v.std for k, v in s.items()},
            "count": {k: v.count for k, v in s.items()},
            "nans": {k: v.nans for k, v in s.items()},
            "lengths": {k: v.lengths.tolist() for k, v in s.items() if v.lengths is not None},
            "m2": {k: v.m2 for k, v in s.items()},
            "nevents": self.nevents,
            "files": self.files,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Specs:
        stats = {}
        for k in d.get("minv", {}):
            lengths = d.get("lengths", {}).get(k)
            stats[k] = Stats(
                count=int(d["count"][k]),
                mean=float(d["mean"][k]),
                m2=float(d["m2"][k]),
                min=_inf(d["minv"][k], 1),
                max=_inf(d["maxv"][k], -1),
                nans=int(d.get("nans", {}).get(k, 0)),
                lengths=np.asarray(lengths, dtype=np.int64) if lengths is not None else None,
            )
        return cls(
            flat=list(d["fkeys"]),
            jagged=list(d["jkeys"]),
            stats=stats,
            files=list(d["files"]),
            key=d.get("key", ""),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Specs:
        return cls.from_dict(json.loads(Path(path).read_text()))


def chunk_stats(arrays: Mapping[str, Any], names: Iterable[str], keep: np.ndarray | None) -> dict[str, Stats]:
    """Statistics of the named arrays of one chunk, after the event selection."""
    out = {}
    for name in names:
        v = arrays[name]
        if keep is not None:
            v = v[keep]
        out[name] = Stats.of(v)
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else x


def _inf(x: float | None, sign: int) -> float:
    return sign * float("inf") if x is None else float(x)
