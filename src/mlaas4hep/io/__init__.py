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
"""

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
from .specs import Specs

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

from .reader import UnitReader
