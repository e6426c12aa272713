"""A raw unit, and how it is laid out once the specs are known.

The fused specs pass (:mod:`mlaas4hep.io.firstuse`) decodes each unit once, into
a :class:`RawChunk`: the selected events as float32 columns (flat branches,
then each jagged branch padded to the unit's own longest list, or to its
configured length), the list multiplicities, labels, weights and event ids.
Once the specs pass has decided the final widths and the normalisation,
:func:`finalize` lays it out: pad or clip each jagged branch to its final
length, normalise, and fill the padding mask.

:func:`finalize` performs exactly the float32 operations of
:meth:`Preprocessor.transform <mlaas4hep.io.preprocess.Preprocessor.transform>`
on the same float32 values, element by element, so its output is bit-identical
to a unit decoded after a separate specs pass. It copies runs of columns to the
final widths a block of rows at a time (:data:`BLOCK_BYTES`), into a new array,
into arrays it is given (memory maps of the decoded cache's files), or in place
inside the raw unit's own buffer when that left room (:attr:`RawChunk.room`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .chunk import Chunk
from .preprocess import Preprocessor
from .roomfile import RoomFile
from .scatter import small_pages


@dataclass
class RawChunk:
    """A unit decoded but not yet laid out by the specs.

    Attributes:
        x: float32 ``(n, F_raw)``: flat features, then each jagged branch padded
            to ``widths[j]`` columns (the values of padded slots are arbitrary).
        counts: int32 ``(J, n)``: each event's multiplicity of each jagged branch
            (one contiguous row per branch).
        widths: int64 ``(J,)``: the columns each jagged branch occupies in ``x``.
        y, weight, event_id: as in :class:`~mlaas4hep.io.chunk.Chunk`.
        room: None, or the flat float32 buffer whose start ``x`` is, longer than
            ``x``: :func:`finalize` widens ``x`` to the final widths inside it
            (in memory only; never stored).
        file: None, or the :class:`~mlaas4hep.io.roomfile.RoomFile` whose buffer
            ``x`` starts: the unit lives in the page cache, and its layout can become
            the decoded cache's ``x.npy`` in place (:func:`lay_out_to_store`).
    """

    x: np.ndarray
    counts: np.ndarray
    widths: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    event_id: np.ndarray
    room: np.ndarray | None = field(default=None, repr=False, compare=False)
    file: RoomFile | None = field(default=None, repr=False, compare=False)

    FIELDS = ("x", "counts", "widths", "y", "weight", "event_id")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.FIELDS)


#: Rows handled at once when columns are assembled or laid out: about 1 MiB, so
#: the several passes over a block of rows find it in the CPU cache.
BLOCK_BYTES = 2**20


def _rows(n: int, width: int) -> range:
    step = max(1, BLOCK_BYTES // max(1, 4 * width))
    return range(0, n, step)


def finalize(
    raw: RawChunk,
    pre: Preprocessor,
    inplace: bool = False,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
) -> Chunk:
    """Lay a raw unit out as ``pre`` would have decoded it: pad/clip, normalise, mask.

    Each jagged branch's stored columns are copied to its place in ``x`` (the
    first ``min(width, length)`` of them: clipping), and its slots beyond the
    stored width are padding in every event (no list of the unit is longer
    than the width); then ``(v - offset) * scale`` in float32 on the columns
    that have constants, and ``pad_value`` where the mask is set. All of it
    runs a block of rows at a time (:data:`BLOCK_BYTES`), so the copy, the
    normalisation and the mask of a block find it in the CPU cache.

    When every branch is stored at its final length (the lengths are given)
    nothing is copied; with ``inplace`` the raw unit's own ``x`` (used once,
    if writeable) becomes the chunk's ``x``. Otherwise, with ``inplace``, a raw
    unit that left room in its buffer (:attr:`RawChunk.room`) is widened to the
    final widths inside it. ``out``: the ``(x, mask)`` arrays to lay the unit out
    into (``mask`` all False), e.g. memory maps of the decoded cache's files;
    ``mask`` alone: the mask array to fill (all False), ``x`` chosen as above.
    """
    n, nflat = len(raw), len(pre.flat)
    widths = [int(w) for w in raw.widths]
    if len(widths) != len(pre.jagged) or raw.x.shape[1] != nflat + sum(widths):
        raise ValueError("a raw unit does not match the preprocessing (stale decoded cache?)")
    counts = np.asarray(raw.counts)
    # (raw column, x column, how many) of every run of columns copied; the other columns are padding
    copies = [(0, 0, nflat)] if nflat else []
    r, col = nflat, nflat
    for j, ((name, length), width) in enumerate(zip(pre.jagged, widths)):
        if length > width and n and int(counts[j].max()) > width:
            raise ValueError(f"a raw unit stores {width} values of {name!r}, fewer than its lists hold")
        if min(width, length):
            copies.append((r, col, min(width, length)))
        r, col = r + width, col + length
    copies = _merged(copies)
    gaps = _gaps(copies, pre.n_features)  # x columns no copy writes: padding in every event
    identity = raw.x.shape[1] == pre.n_features and copies in ([(0, 0, pre.n_features)], [])
    src = np.asarray(raw.x)
    widen = out is None and not identity and inplace and _widens_in_place(raw, n, pre.n_features)
    if out is not None:
        x = out[0]
        copies = _merged([(0, 0, raw.x.shape[1])]) if identity and raw.x.shape[1] else copies
        gaps = _gaps(copies, pre.n_features)
    elif identity and inplace and raw.x.flags.writeable:
        x, copies = raw.x, []  # the unit is ours to change (in memory, or a file moved out of the store)
    elif identity:
        with small_pages():
            x = np.array(raw.x, dtype=np.float32)
        copies = []
    elif widen:  # rows move to the final widths inside the raw unit's buffer, last block first
        assert raw.room is not None
        x = raw.room[: n * pre.n_features].reshape(n, pre.n_features)
    else:
        with small_pages():
            x = np.empty((n, pre.n_features), np.float32)
    names = list(pre.flat) + [name for name, length in pre.jagged for _ in range(length)]
    off = np.array([pre.offset.get(k, 0.0) for k in names], np.float32)
    sc = np.array([pre.scale.get(k, 1.0) for k in names], np.float32)
    act = np.array([pre.offset.get(k, 0.0) != 0.0 or pre.scale.get(k, 1.0) != 1.0 for k in names], bool)
    cols = np.flatnonzero(act) if act.any() and not act.all() else None
    runs = _runs(counts, [length for _, length in pre.jagged], nflat)
    if out is not None:
        mask = out[1]
    elif mask is None:
        with small_pages():
            mask = np.zeros((n, pre.n_features), bool)
    pad = np.float32(pre.pad_value)
    rows = _rows(n, pre.n_features)
    # widened in place, a block's raw rows are read before its final rows overwrite them; the
    # blocks after it (done first) lie beyond it in both layouts, the blocks before it below
    tmp = np.empty((rows.step, src.shape[1]), np.float32) if widen else None
    for r in reversed(rows) if widen else rows:  # lay out, normalise, mask and pad a block of rows
        xs, ms = x[r : r + rows.step], mask[r : r + rows.step]  # (while it is in the CPU cache)
        if copies:
            block = src[r : r + rows.step]
            if tmp is not None:
                block = tmp[: len(xs)]
                np.copyto(block, src[r : r + rows.step])
            for a, b in gaps:  # slots beyond a branch's stored width: padding in every event
                xs[:, a:b] = pad
            for a, b, k in copies:
                xs[:, b : b + k] = block[:, a : a + k]
        if cols is None and act.all():
            xs -= off
            xs *= sc
        elif cols is not None:
            xs[:, cols] = (xs[:, cols] - off[cols]) * sc[cols]
        for j, c, slots in runs:
            np.greater_equal(
                slots[None, :], counts[j, r : r + rows.step, None], out=ms[:, c : c + len(slots)]
            )
        np.copyto(xs, pad, where=ms)
    return Chunk(x, mask, np.asarray(raw.y), np.asarray(raw.weight), np.asarray(raw.event_id))


def _widens_in_place(raw: RawChunk, n: int, width: int) -> bool:
    """Whether ``raw.x`` starts a writeable buffer with room for ``n`` rows of ``width`` columns
    (and its rows are no wider: a row never moves back over rows not yet read)."""
    room, x = raw.room, raw.x
    return (
        room is not None
        and (raw.file is None or raw.file.reserve(n * width))  # its blocks, before any page is written
        and room.flags.writeable
        and room.size >= n * width
        and x.shape[1] <= width
        and x.flags.c_contiguous
        and (n == 0 or np.shares_memory(x[:1], room[:1]))
    )


def _gaps(copies: list[tuple[int, int, int]], width: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` runs of the ``width`` columns of ``x`` that none of ``copies`` writes."""
    out, col = [], 0
    for _, b, k in sorted(copies, key=lambda c: c[1]):
        if b > col:
            out.append((col, b))
        col = max(col, b + k)
    if col < width:
        out.append((col, width))
    return out


def _merged(copies: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Runs of copied columns with neighbouring ones joined (``(raw column, x column, how many)``)."""
    out: list[tuple[int, int, int]] = []
    for a, b, k in copies:
        if out and out[-1][0] + out[-1][2] == a and out[-1][1] + out[-1][2] == b:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + k)
        else:
            out.append((a, b, k))
    return out


def _runs(counts: np.ndarray, lengths: list[int], first: int) -> list[tuple[int, int, np.ndarray]]:
    """How to fill the padding mask: ``(j, first column, slots)`` per run of neighbouring
    jagged branches with the same counts and length.

    Slot ``s`` of jagged branch ``j`` is padding where ``s >= counts[j]``.
    Branches of one collection share their multiplicities (every ``Jet_*``
    has ``nJet`` values), so each run is filled by one comparison
    ``(n, 1) >= (1, k * L)`` rather than ``k`` narrow ones (several times
    faster: numpy's inner loop then runs over ``k * L`` columns, not ``L``).
    """
    out = []
    col, j = first, 0
    while j < len(lengths):
        k = j + 1
        while k < len(lengths) and lengths[k] == lengths[j] and np.array_equal(counts[k], counts[j]):
            k += 1
        slots = np.tile(np.arange(lengths[j], dtype=counts.dtype), k - j)
        out.append((j, col, slots))
        col, j = col + len(slots), k
    return out
