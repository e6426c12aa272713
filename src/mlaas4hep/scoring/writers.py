"""Score files, written chunk by chunk: a ROOT friend tree or a Parquet file.

Both writers take the columns of one chunk at a time (``entry``, the event
identifiers, the score columns), so a file of any size is written with the
memory of one chunk. Each writes to ``NAME.part`` beside the output and renames
it when :meth:`close` succeeds: an interrupted run never leaves a file that
looks complete, and :meth:`abort` removes the part.

* :class:`FriendTreeWriter`: a TTree (default name ``scores``) with one entry
  per entry of the input tree, in the same order, so ROOT's ``AddFriend``
  (and uproot, reading both) lines them up entry by entry; a ``TObjString``
  ``mlaas4hep`` beside it records the bundle and the input file;
* :class:`ParquetScoresWriter`: one row group per chunk, the same record in the
  file's key-value metadata.

:func:`score_columns` names the score columns: ``score`` when the model has one
output (a binary classifier's probability of label 1), else ``score_<label>``
per class, as the server's ``predict_root`` friend tree names them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import extras

#: Output formats, and the suffix of the files each writes.
SUFFIXES = {"root": ".root", "parquet": ".parquet"}


def score_columns(labels: Sequence[str], n_outputs: int) -> list[str]:
    """``["score"]`` for one output, ``["score_<label>", ...]`` (label made a plain name) for several."""
    if n_outputs == 1:
        return ["score"]
    names = [f"score_{''.join(c if c.isalnum() else '_' for c in label)}" for label in labels]
    if len(labels) != n_outputs or len(set(names)) != len(names):
        return [f"score_{i}" for i in range(n_outputs)]
    return names


class _PartFile:
    """An output written as ``NAME.part`` and renamed to ``NAME`` on success."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.entries = 0

    def _finish(self) -> None:
        os.replace(self.part, self.path)

    def abort(self) -> None:
        """Remove the part file (after an error or an interruption)."""
        self.part.unlink(missing_ok=True)


class FriendTreeWriter(_PartFile):
    """A ROOT file holding one TTree, extended chunk by chunk (one basket per branch and chunk)."""

    def __init__(self, path: str | os.PathLike[str], tree: str, provenance: Mapping[str, Any]):
        super().__init__(path)
        import uproot

        self.tree_name = tree
        self._file = uproot.recreate(self.part)
        self._file["mlaas4hep"] = json.dumps(dict(provenance), sort_keys=True)  # a TObjString
        self._tree: Any = None

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        if self._tree is None:
            self._tree = self._file.mktree(self.tree_name, {k: v.dtype for k, v in columns.items()})
        n = len(next(iter(columns.values())))
        if n:
            self._tree.extend(dict(columns))
        self.entries += n

    def close(self) -> None:
        self._file.close()
        self._finish()

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            super().abort()


class ParquetScoresWriter(_PartFile):
    """A Parquet file, one row group per chunk."""

    def __init__(self, path: str | os.PathLike[str], tree: str, provenance: Mapping[str, Any]):
        super().__init__(path)
        self._pa = extras.require("pyarrow", "writing scores as Parquet")
        self._pq = extras.require("pyarrow.parquet", "writing scores as Parquet")
        self._meta = {b"mlaas4hep": json.dumps(dict(provenance), sort_keys=True).encode()}
        self._writer: Any = None

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        table = self._pa.table({k: np.asarray(v) for k, v in columns.items()})
        if self._writer is None:
            schema = table.schema.with_metadata(self._meta)
            self._writer = self._pq.ParquetWriter(str(self.part), schema)
        self._writer.write_table(table.replace_schema_metadata(self._meta))
        self.entries += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._finish()

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            super().abort()


def open_writer(
    fmt: str, path: str | os.PathLike[str], tree: str, provenance: Mapping[str, Any]
) -> FriendTreeWriter | ParquetScoresWriter:
    """The writer of ``fmt`` (``"root"`` or ``"parquet"``) for ``path``."""
    if fmt == "root":
        return FriendTreeWriter(path, tree, provenance)
    if fmt == "parquet":
        return ParquetScoresWriter(path, tree, provenance)
    raise ValueError(f"unknown format {fmt!r}: choose from {sorted(SUFFIXES)}")
