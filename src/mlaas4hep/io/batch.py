"""A mini-batch: the flat tensors of a :class:`~mlaas4hep.io.chunk.Chunk`, plus the input groups.

:meth:`mlaas4hep.io.Dataset.batches` yields :class:`Batch` objects::

    for b in ds.batches(batch_size=1024):
        b.x, b.mask, b.y, b.weight, b.event_id   # as a Chunk: x/mask (n, F), y, weight, event_id (n, 2)
        b.inputs["jets"], b.masks["jets"]        # (n, 10, 5) float32 and (n, 10) bool, True = padding
        b.inputs["event"]                        # a flat group: (n, 3), no mask

Without ``inputs:`` in the configuration ``b.inputs`` and ``b.masks`` are empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .chunk import Chunk
from .groups import GroupLayout


@dataclass
class Batch(Chunk):
    """A :class:`~mlaas4hep.io.chunk.Chunk` with the input groups cut out of its ``x``.

    Attributes:
        inputs (dict of str → numpy.ndarray): per group, float32 ``(n, length,
            features)`` (object groups) or ``(n, features)`` (flat groups), in
            the layout's declared order.
        masks (dict of str → numpy.ndarray): per object group, bool ``(n,
            length)``, True where a slot is padding (as ``mask`` for ``x``).
    """

    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, table: tuple[Any, ...], layout: GroupLayout | None) -> Batch:
        """A batch from ``(x, mask, y, weight, event_id)``, with the groups of ``layout`` (if any)."""
        x, mask, y, weight, event_id = table
        if layout is None:
            return cls(x, mask, y, weight, event_id)
        inputs, masks = layout.apply(np.asarray(x), np.asarray(mask))
        return cls(x, mask, y, weight, event_id, inputs, masks)
