"""The dataset configuration: what to read, how to turn it into tensors, and how to run.

One :class:`DatasetConfig` describes a training dataset. It is read from the
project's YAML format (see the README) or from MLaaS4HEP's trio
``files.txt`` + ``labels.txt`` + ``params.json``, so existing users' files keep
working.

The YAML file is one flat mapping, but its keys fall into two groups, kept as
two objects:

* :class:`PhysicsConfig` (``cfg.physics``): *what the model sees*: the files and
  their labels, the tree, the branches (and ``branches_policy``, for files whose
  branches differ), the selection, new variables, jagged
  lengths, normalisation, weights, and the order in which events arrive
  (``chunk_size``, ``shuffle``, ``shuffle_buffer``, ``seed``). Changing one of
  these may change a number in the result, so they key the specs and the
  decoded cache.
* :class:`RuntimeConfig` (``cfg.runtime``): *how it is read*: ``workers``,
  ``executor``, ``scheduler``, the cache's place and size, ``on_error``, the
  ``redirector`` and the network knobs (``timeout``, ``retries``,
  ``retry_backoff``, ``retry_budget``). Changing one of these never changes
  the events, their order or their values (``on_error: skip`` only matters when
  a read fails), so they are free to differ between a laptop and a cluster.

``chunk_size`` sits with physics although it is also a performance knob: the
shuffle permutes chunks, so another chunk size gives another event order, and
hence another trained model.

Every key is checked: an unknown key (``branchs``) or a wrong type
(``chunk_size: abc``) is a :class:`~mlaas4hep.io.errors.ConfigError` naming the
key, its line in the file and, for a typo, the closest known key::

    examples/dataset.yaml, line 7: unknown key 'branchs' (did you mean 'branches'?)

The two parts and the rules their values are checked against are in
:mod:`mlaas4hep.io.settings`; the reading of MLaaS4HEP's trio in
:mod:`mlaas4hep.io.trio`. This module joins them into one object.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from ..jsonutil import digest
from .configfile import ConfigSource, closest, load_yaml, unknown_key
from .errors import ConfigError, ConfigWarning, InvalidSetting
from .groups import InputGroup
from .settings import (
    DEFAULT_REDIRECTOR,
    PHYSICS_KEYS,
    RUNTIME_KEYS,
    FileGroup,
    PhysicsConfig,
    RuntimeConfig,
)
from .trio import read_trio

#: The configuration, and the names of its parts still imported from here (they live in
#: :mod:`.settings` and :mod:`.trio`).
__all__ = [
    "DEFAULT_REDIRECTOR",
    "ConfigWarning",
    "DatasetConfig",
    "FileGroup",
    "InvalidSetting",
    "PhysicsConfig",
    "RuntimeConfig",
]

#: Where a reader of an unknown key finds the known ones.
KEYS_DOC = "the README, 'The dataset configuration'"

#: Keys kept in :attr:`DatasetConfig.extra`: a specs file to reuse, and the training layer's sections
#: (``tracking``: MLflow / TensorBoard, ``scan``: the search space of ``mlaas4hep scan``).
EXTRA_KEYS = frozenset({"specs", "model", "training", "tracking", "scan"})
#: Settings added after the cache keys were fixed, with their default: they enter
#: :meth:`DatasetConfig.digest` only when set to something else.
LATER_KEYS: dict[str, Any] = {"inputs": {}, "branches_policy": "strict"}
#: Older spellings still accepted in YAML.
ALIASES = {"exclude_branches": "exclude"}
YAML_KEYS = PHYSICS_KEYS | RUNTIME_KEYS | EXTRA_KEYS


# ---------------------------------------------------------------------------- delegation
T = TypeVar("T")


class _Setting(Generic[T]):
    """An attribute of :class:`DatasetConfig` that lives in its ``physics`` or ``runtime`` part.

    Reading ``cfg.workers`` returns ``cfg.runtime.workers``; assigning it
    assigns there. Typed, so mypy sees ``cfg.workers`` as ``int | None``.
    """

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.part), self.name, value)


# ---------------------------------------------------------------------------- the whole
@dataclass(init=False)
class DatasetConfig:
    """A dataset: its :class:`PhysicsConfig` and :class:`RuntimeConfig`, seen as one.

    The settings live in two parts, ``cfg.physics`` and ``cfg.runtime``; the
    whole reads, writes and builds like the flat dataclass it used to be::

        cfg = DatasetConfig(files=[{"path": "ttH_*.root", "label": 1}], branches=["Jet_*"], workers=0)
        cfg.workers                  # 0, read from cfg.runtime.workers
        cfg.branches = ["MET_pt"]    # sets cfg.physics.branches
        dataclasses.replace(cfg, workers=2)   # a copy with new parts; cfg is unchanged
        cfg.physics                  # PhysicsConfig(tree='Events', files=[...], ...)

    How: each setting is a dataclass field whose value is a typed descriptor
    (``_Setting``) that forwards to ``physics`` or ``runtime``. So
    :func:`dataclasses.fields`, :func:`dataclasses.replace`, ``==`` and
    ``repr`` see the flat settings, and mypy types ``cfg.workers`` as
    ``int | None`` and checks ``replace(cfg, workers=...)``. The constructor
    takes every setting by keyword, and optionally whole ``physics=`` and
    ``runtime=`` parts (copied; the keywords then apply on top).

    * ``extra`` holds ``specs`` (a specs JSON to reuse) and the training
      layer's ``model`` and ``training`` sections (and, from ``params.json``,
      ``epochs`` and ``batch_size``);
    * ``base_dir`` is where relative file paths start (the YAML file's folder);
    * ``source`` records the file and the line of each key, for messages.
    """

    # physics
    tree: _Setting[str] = _Setting("physics")
    files: _Setting[list[FileGroup]] = _Setting("physics")
    branches: _Setting[list[str]] = _Setting("physics")
    exclude: _Setting[list[str]] = _Setting("physics")
    branches_policy: _Setting[str] = _Setting("physics")
    identifier: _Setting[list[str]] = _Setting("physics")
    jagged: _Setting[dict[str, int]] = _Setting("physics")
    pad_value: _Setting[float] = _Setting("physics")
    normalize: _Setting[str] = _Setting("physics")
    selection: _Setting[str | None] = _Setting("physics")
    new_variables: _Setting[dict[str, str]] = _Setting("physics")
    inputs: _Setting[dict[str, InputGroup]] = _Setting("physics")
    label_branch: _Setting[str | None] = _Setting("physics")
    weight_branch: _Setting[str | None] = _Setting("physics")
    label_names: _Setting[list[str] | None] = _Setting("physics")
    nevts: _Setting[int] = _Setting("physics")
    chunk_size: _Setting[int] = _Setting("physics")
    shuffle: _Setting[bool] = _Setting("physics")
    shuffle_buffer: _Setting[int | None] = _Setting("physics")
    seed: _Setting[int] = _Setting("physics")
    # runtime
    workers: _Setting[int | None] = _Setting("runtime")
    executor: _Setting[str] = _Setting("runtime")
    scheduler: _Setting[str | None] = _Setting("runtime")
    cache_dir: _Setting[str | None] = _Setting("runtime")
    cache_max_gb: _Setting[float] = _Setting("runtime")
    on_error: _Setting[str] = _Setting("runtime")
    redirector: _Setting[str] = _Setting("runtime")
    timeout: _Setting[float] = _Setting("runtime")
    retries: _Setting[int] = _Setting("runtime")
    retry_backoff: _Setting[float] = _Setting("runtime")
    retry_budget: _Setting[float] = _Setting("runtime")
    # the rest
    extra: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."
    source: ConfigSource = field(default_factory=ConfigSource, compare=False, repr=False)

    def __init__(
        self,
        physics: PhysicsConfig | None = None,
        runtime: RuntimeConfig | None = None,
        extra: dict[str, Any] | None = None,
        base_dir: str | os.PathLike[str] = ".",
        source: ConfigSource | None = None,
        **settings: Any,
    ) -> None:
        for key in settings:
            if key not in PHYSICS_KEYS and key not in RUNTIME_KEYS:
                guess = closest(key, PHYSICS_KEYS | RUNTIME_KEYS)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                raise TypeError(f"DatasetConfig() got an unexpected keyword argument {key!r}{hint}")
        phys = {k: v for k, v in settings.items() if k in PHYSICS_KEYS}
        if phys.get("inputs") and "branches" not in phys and physics is None:
            phys["branches"] = []  # with input groups, the flat features are only those listed
        run = {k: v for k, v in settings.items() if k in RUNTIME_KEYS}
        self.physics: PhysicsConfig = (
            replace(physics, **phys) if physics is not None else PhysicsConfig(**phys)
        )
        self.runtime: RuntimeConfig = replace(runtime, **run) if runtime is not None else RuntimeConfig(**run)
        self.extra = dict(extra or {})
        self.base_dir = str(base_dir)
        self.source = source or ConfigSource()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | os.PathLike[str] = ".", source: ConfigSource | None = None
    ) -> DatasetConfig:
        """Build from a mapping with the YAML file's keys; any other key is a :class:`ConfigError`.

        ``source`` (from :func:`~mlaas4hep.io.configfile.load_yaml`) puts the
        file and line in front of each message.
        """
        src = source or ConfigSource()
        if not isinstance(data, dict):
            raise src.error(f"a dataset configuration must be a mapping of keys, got {type(data).__name__}")
        unknown = [k for k in data if k not in YAML_KEYS and k not in ALIASES]
        if unknown:
            lines = [src.error(unknown_key(k, YAML_KEYS, listed_in=KEYS_DOC), k).args[0] for k in unknown]
            raise ConfigError("\n".join(lines))
        data = dict(data)
        for old, new in ALIASES.items():
            if old in data:
                if new in data:
                    raise src.error(f"give either {old!r} or {new!r}, not both", old)
                data[new] = data.pop(old)
        settings = {k: v for k, v in data.items() if k not in EXTRA_KEYS}
        extra = {k: v for k, v in data.items() if k in EXTRA_KEYS}
        try:
            return cls(**settings, extra=extra, base_dir=str(base_dir), source=src)
        except InvalidSetting as err:
            raise src.error(str(err), *err.key) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DatasetConfig:
        """Read the project's YAML format (see the README); relative paths start at its folder."""
        data, source = load_yaml(path)
        return cls.from_dict({} if data is None else data, base_dir=Path(path).parent, source=source)

    @classmethod
    def from_mlaas4hep(
        cls,
        files: str | os.PathLike[str],
        labels: str | os.PathLike[str] | None,
        params: str | os.PathLike[str] | dict[str, Any],
    ) -> DatasetConfig:
        """Read MLaaS4HEP's ``files.txt``, ``labels.txt`` and ``params.json``.

        ``labels`` may be a file (one label per line, ``#`` comments), a comma
        list such as ``"1,0"``, or the name of a branch that holds the label.

        ``params.json`` keeps MLaaS4HEP's keys: the dataset layer reads
        :data:`~mlaas4hep.io.trio.PARAMS_DATASET_KEYS`; ``epochs`` and ``batch_size`` are kept in
        ``extra`` for the training layer, which also reads ``learning_rate``,
        ``validation_fraction`` and ``seed``; ``verbose``, ``metrics`` and
        ``training`` are accepted without effect. Any other key is ignored with
        a :class:`ConfigWarning` naming it.
        """
        data, extra, base, where = read_trio(files, labels, params)
        try:
            return cls(**data, extra=extra, base_dir=base)
        except InvalidSetting as err:
            raise ConfigError(f"{where}: {err}") from None

    # ------------------------------------------------------------------ derived
    def resolve_files(self) -> list[tuple[str, FileGroup]]:
        """Expand globs and LFNs into ``(url, group)`` pairs, in a stable order."""
        out: list[tuple[str, FileGroup]] = []
        for i, g in enumerate(self.files):
            try:
                out.extend((u, g) for u in self._expand(g.path))
            except ConfigError as err:
                raise self.source.error(str(err), "files", i) from None
        if not out:
            raise ConfigError("the dataset has no files: add entries under 'files:'")
        return out

    def _expand(self, path: str) -> list[str]:
        path = os.path.expanduser(str(path))
        if path.startswith("/store/"):
            return [self.redirector.rstrip("/") + "//" + path.lstrip("/")]
        if "://" in path and not path.startswith("file://"):
            return [path]
        path = path[len("file://") :] if path.startswith("file://") else path
        if not os.path.isabs(path):
            path = os.path.join(self.base_dir, path)
        if glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise ConfigError(f"the pattern {path!r} matches no file")
            return [os.path.normpath(m) for m in matches]
        return [os.path.normpath(path)]

    @property
    def buffer(self) -> int:
        """Events pooled before each permutation: ``shuffle_buffer``, else max(8 chunks, 262,144).

        A chunk holds one file's events, so a small pool can lean to one class; a
        pool of several rounds of files stays close to the dataset's class mix
        (262,144 events of 111 features are about 150 MB).
        """
        return int(self.shuffle_buffer or max(8 * self.chunk_size, 262_144))

    def label_list(self) -> list[str]:
        """Human-readable label names, index = class id."""
        if self.label_names:
            return [str(x) for x in self.label_names]
        ids = sorted({g.label for g in self.files if g.label is not None})
        names = {g.label: g.name for g in self.files if g.name}
        n = (max(ids) + 1) if ids else 2
        return [names.get(i, str(i)) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        """Every setting in one flat mapping (the YAML keys), plus ``extra``."""
        return {**asdict(self.physics), **asdict(self.runtime), "extra": dict(self.extra)}

    def digest(self, *keys: str) -> str:
        """A stable hash of the named settings (all of them by default)."""
        d = self.to_dict()
        if keys:
            d = {k: d[k] for k in keys}
        for k, default in LATER_KEYS.items():  # unset, they leave the keys of existing caches as they were
            if not d.get(k) or d.get(k) == default:
                d.pop(k, None)
        if d.get("inputs"):  # only what changes x: the groups' branches and lengths (sorting is per batch)
            d["inputs"] = sorted({(b, g["length"] or 0) for g in d["inputs"].values() for b in g["branches"]})
        return digest(d)[:16]
