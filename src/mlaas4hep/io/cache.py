"""Where a dataset keeps what it computed, and the keys that say when it is still good.

A dataset writes three things under its cache directory (``cache_dir``, else a
folder of this user's under the system's temporary directory)::

    specs/<specs key>-<files>.json     the specs pass (statistics, multiplicities)
    chunks/<chunk key>/                the decoded cache: one ChunkStore of final chunks
    chunks/raw-<raw key>/              the first-use pass's raw units, waiting for epoch 0

Each key is a digest of only what changes the thing it names: the settings in
:data:`SPECS_FIELDS`, :data:`CHUNK_FIELDS` or :data:`RAW_FIELDS` (never the
runtime settings, so ``workers: 0`` and ``workers: 16`` share one cache), the
files' fingerprints, and the labels and weights of the file groups. Specs read
back from a file are checked against the files they were computed on
(:func:`check_specs`); the decoded cache is kept within ``cache_max_gb`` by
:func:`evict`, least recently used first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..jsonutil import digest
from . import firstuse
from .chunk import clean_stale, dir_size
from .config import DatasetConfig, FileGroup
from .errors import StaleSpecsError
from .preprocess import Preprocessor
from .specs import Specs

#: Fields of the configuration that change what the specs pass computes.
SPECS_FIELDS = (
    "tree",
    "branches",
    "exclude",
    "identifier",
    "new_variables",
    "inputs",
    "selection",
    "nevts",
    "branches_policy",
)
#: Fields that change what a decoded chunk holds.
CHUNK_FIELDS = SPECS_FIELDS + (
    "jagged",
    "pad_value",
    "normalize",
    "label_branch",
    "weight_branch",
    "chunk_size",
)
#: Fields that change what a raw unit of the first-use pass holds (not the specs' constants).
RAW_FIELDS = SPECS_FIELDS + ("jagged", "label_branch", "weight_branch", "chunk_size")


def cache_root(cache_dir: str | None) -> Path:
    """The cache directory: ``cache_dir``, else ``mlaas4hep-<uid>`` under the temporary directory."""
    if cache_dir:
        return Path(os.path.expanduser(cache_dir))
    # one folder per user: on a shared machine (lxplus) another user's would not be writable
    return Path(tempfile.gettempdir()) / f"mlaas4hep-{os.getuid()}"


def specs_key(config: DatasetConfig, urls: list[str]) -> str:
    """What the specs of a configuration and a file list are stored (and checked) under."""
    return config.digest(*SPECS_FIELDS) + digest(urls)[:8]


def specs_path(root: Path, key: str, file_infos: list[dict[str, Any]]) -> Path:
    """Where the specs of ``key`` for files with these fingerprints are kept under the cache ``root``."""
    return root / "specs" / f"{key}-{digest(file_infos)[:12]}.json"


def check_specs(specs: Specs, key: str, file_infos: list[dict[str, Any]]) -> None:
    """Raise :class:`StaleSpecsError` unless ``specs`` were computed for ``key`` and these very files."""
    if specs.key != key:
        raise StaleSpecsError("the configuration or the file list changed")
    now = {f["url"]: f for f in file_infos}
    for f in specs.files:
        cur = now.get(f["url"])
        if cur is None:
            raise StaleSpecsError(f"file {f['url']} is no longer in the dataset")
        for k in ("size", "mtime", "uuid", "entries"):
            if f.get(k) != cur.get(k):
                raise StaleSpecsError(f"file {f['url']} changed ({k}: {f.get(k)} -> {cur.get(k)})")


def chunk_key(
    config: DatasetConfig,
    preprocessor: Preprocessor,
    file_infos: list[dict[str, Any]],
    groups: list[FileGroup],
) -> str:
    """The decoded cache's key: the settings, the constants, the files, the labels and weights."""
    return digest(
        [
            config.digest(*CHUNK_FIELDS),
            {k: v for k, v in preprocessor.to_dict().items() if k != "groups"},  # cut per batch
            file_infos,
            [(g.label, g.weight) for g in groups],
        ]
    )[:20]


def raw_name(config: DatasetConfig, file_infos: list[dict[str, Any]], groups: list[FileGroup]) -> str:
    """The folder of the first-use pass's raw units: ``raw-`` and a key without the specs' constants."""
    labels = [(g.label, g.weight) for g in groups]
    key = [firstuse.RAW_VERSION, config.digest(*RAW_FIELDS), file_infos, labels]
    return "raw-" + digest(key)[:20]


def evict(root: Path, keep: set[str], limit: float) -> None:
    """Delete the least recently used cache entries (other than ``keep``) beyond ``limit`` bytes,
    and the temporary folders of writers that died (:func:`~mlaas4hep.io.chunk.clean_stale`)."""
    if not root.exists():
        return
    entries = []
    for d in root.iterdir():
        if d.is_dir():
            clean_stale(d)  # what writers that died (a kill, a full disk) left behind
        if d.is_dir() and d.name not in keep:
            try:
                entries.append((d.stat().st_mtime, dir_size(d), d))
            except FileNotFoundError:  # removed meanwhile by another run sharing the cache
                pass
    total = sum(e[1] for e in entries)
    for _, size, d in sorted(entries):
        if total <= limit:
            break
        shutil.rmtree(d, ignore_errors=True)
        total -= size
