"""Layer 1, streaming: native ROOT files into training-ready tensors.

* :class:`Dataset` (``dataset.py``): the user-facing API;
* :class:`DatasetConfig` (``config.py``): the YAML / MLaaS4HEP trio contract, its two
  checked parts in ``settings.py``, the trio's reading in ``trio.py``;
* :class:`Preprocessor` (``preprocess.py``): raw branches to ``x``/``mask``, shared with bundles;
* :class:`GroupLayout` (``groups.py``): input groups, objects as sets ``(n, length, features)``
  with masks, cut out of ``x``; :class:`Batch` (``batch.py``): what ``Dataset.batches`` yields;
* :class:`Specs` (``specs.py``): the statistics of the specs pass;
* ``sources.py``, ``reader.py``, ``passes.py``, ``executor.py``, ``shuffle.py``,
  ``chunk.py``: opening, decoding, parallelism, shuffling and the decoded cache;
* the parts of a :class:`Dataset`: ``catalog.py`` (the files, checked against the
  reference schema), ``tensors.py`` (the Preprocessor from the specs), ``cache.py``
  (keys, folders, eviction), ``epoch.py`` (where each unit's chunk comes from),
  ``report.py`` (what was skipped, and the retries).

The names below are imported on first use (:pep:`562`), so that a process that needs one
light module of the layer (the server: the errors, the preprocessing) does not import uproot
and the readers with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import Batch
    from .chunk import Chunk, Unit
    from .config import DatasetConfig, FileGroup
    from .dataset import Dataset
    from .errors import (
        BranchNotFoundError,
        ConfigError,
        CorruptFileError,
        FileOpenError,
        Mlaas4hepError,
        SchemaMismatchError,
        ServerUnavailableError,
        StaleSpecsError,
        TreeNotFoundError,
        UnsupportedBranchError,
    )
    from .groups import GroupLayout, InputGroup
    from .preprocess import Preprocessor
    from .reader import UnitReader
    from .specs import Specs

#: Each public name and the module of this package that defines it.
_WHERE = {
    "Batch": "batch",
    "Chunk": "chunk",
    "Unit": "chunk",
    "DatasetConfig": "config",
    "FileGroup": "config",
    "Dataset": "dataset",
    "GroupLayout": "groups",
    "InputGroup": "groups",
    "Preprocessor": "preprocess",
    "UnitReader": "reader",
    "Specs": "specs",
    **dict.fromkeys(
        [
            "BranchNotFoundError",
            "ConfigError",
            "CorruptFileError",
            "FileOpenError",
            "Mlaas4hepError",
            "SchemaMismatchError",
            "ServerUnavailableError",
            "StaleSpecsError",
            "TreeNotFoundError",
            "UnsupportedBranchError",
        ],
        "errors",
    ),
}

__all__ = [
    "Batch",
    "BranchNotFoundError",
    "Chunk",
    "ConfigError",
    "CorruptFileError",
    "Dataset",
    "DatasetConfig",
    "FileGroup",
    "FileOpenError",
    "GroupLayout",
    "InputGroup",
    "Mlaas4hepError",
    "Preprocessor",
    "SchemaMismatchError",
    "ServerUnavailableError",
    "Specs",
    "StaleSpecsError",
    "TreeNotFoundError",
    "Unit",
    "UnitReader",
    "UnsupportedBranchError",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
