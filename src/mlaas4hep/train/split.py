"""The validation split: a hash of the event id, not a position in the stream.

Each event's id is ``(file index, entry)`` (``Chunk.event_id``). It is mixed with
the seed by the *splitmix64* finaliser and the event goes to validation when the
hash falls below ``fraction * 2**64``. So the split

* is deterministic: the same events are held out in every epoch and every run;
* does not depend on chunking, shuffling, the number of workers or ranks, and is
  the same for the streamed and the in-memory paths;
* costs a few vectorised integer operations per event.

The file index is the position of the file in the configuration's expanded file
list, so adding files at the end keeps the split of the existing ones.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def event_hash(event_id: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uniform 64-bit hash of each ``(file, entry)`` row of ``event_id``."""
    eid = np.asarray(event_id)
    with np.errstate(over="ignore"):
        z = (eid[:, 0].astype(np.uint64) << np.uint64(40)) ^ eid[:, 1].astype(np.uint64)
        z = z + _GOLD * np.uint64(seed + 1)
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def validation_mask(event_id: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask, True for the events held out for validation."""
    if fraction <= 0:
        return np.zeros(len(event_id), bool)
    threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    return event_hash(event_id, seed) < threshold
