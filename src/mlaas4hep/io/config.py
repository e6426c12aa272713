"""The dataset configuration: what to read, how to turn it into tensors, and how to run.

One :class:`DatasetConfig` describes a training dataset. It is read from the
project's YAML format (see the README) or from MLaaS4HEP's trio
``files.txt`` + ``labels.txt`` + ``params.json``, so existing users' files keep
working.

The YAML file is one flat mapping, but its keys fall into two groups, kept as
two objects:

* :class:`PhysicsConfig` (``cfg.physics``): *what the model sees*: the files and
  their labels, the tree, the branches, the selection, new variables, jagged
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
"""

from __future__ import annotations

import glob
import json
import numbers
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from ..jsonutil import digest
from .configfile import ConfigSource, closest, load_yaml, unknown_key
from .errors import ConfigError
from .groups import GroupError, InputGroup, parse_inputs

DEFAULT_REDIRECTOR = "root://cms-xrd-global.cern.ch"

#: Where a reader of an unknown key finds the known ones.
KEYS_DOC = "the README, 'The dataset configuration'"


class InvalidSetting(ConfigError):
    """A setting has a wrong type or value; ``key`` is its path, e.g. ``("files", 0, "label")``.

    :meth:`DatasetConfig.from_yaml` turns it into a :class:`ConfigError` that
    starts with the file and line of that key.
    """

    def __init__(self, key: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.key = key


class ConfigWarning(UserWarning):
    """A configuration key that is accepted but has no effect (MLaaS4HEP's ``params.json``)."""


# ---------------------------------------------------------------------------- checks
def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _optional_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


#: ``name: (test, what it must be)``; the message reads "NAME must WHAT, got VALUE".
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # physics
    "tree": (lambda v: isinstance(v, str) and v != "", "be a tree name or path, such as Events"),
    "jagged": (
        lambda v: isinstance(v, dict) and all(_integer(n) and n >= 0 for n in v.values()),
        "map collection names to lengths >= 0",
    ),
    "pad_value": (_number, "be a number"),
    "normalize": (lambda v: v in ("minmax", "standard", "none"), "be minmax, standard or none"),
    "selection": (_optional_str, "be an expression such as 'nJet >= 4', or null"),
    "new_variables": (
        lambda v: isinstance(v, dict) and all(isinstance(e, str) for e in v.values()),
        "map names to expressions, such as {HT: 'sum(Jet_pt)'}",
    ),
    "label_branch": (_optional_str, "be a branch name, or null"),
    "weight_branch": (_optional_str, "be a branch name, or null"),
    "label_names": (lambda v: v is None or isinstance(v, (list, tuple)), "be a list of names, or null"),
    "nevts": (lambda v: _integer(v) and (v == -1 or v > 0), "be a positive integer, or -1 for all events"),
    "chunk_size": (lambda v: _integer(v) and v > 0, "be a positive integer"),
    "shuffle": (lambda v: isinstance(v, bool), "be true or false"),
    "shuffle_buffer": (lambda v: v is None or (_integer(v) and v > 0), "be a positive integer, or null"),
    "seed": (_integer, "be an integer"),
    # runtime
    "workers": (
        lambda v: v is None or (_integer(v) and v >= 0),
        "be an integer >= 0 (0: decode in the calling process), or null for one per core",
    ),
    "executor": (lambda v: v in ("local", "processes", "dask"), "be local, processes or dask"),
    "scheduler": (_optional_str, "be a Dask scheduler address, or null"),
    "cache_dir": (
        lambda v: v is None or v is False or isinstance(v, (str, os.PathLike)),
        "be a directory, or null to disable the cache",
    ),
    "cache_max_gb": (lambda v: _number(v) and v >= 0, "be a number of GB >= 0"),
    "on_error": (lambda v: v in ("raise", "skip"), "be 'raise' or 'skip'"),
    "redirector": (lambda v: isinstance(v, str) and v != "", "be a URL prefix such as " + DEFAULT_REDIRECTOR),
    "timeout": (lambda v: _number(v) and v > 0, "be a positive number of seconds"),
    "retries": (lambda v: _integer(v) and v >= 0, "be an integer >= 0"),
    "retry_backoff": (lambda v: _number(v) and v >= 0, "be a number of seconds >= 0"),
    "retry_budget": (lambda v: _number(v) and v >= 0, "be a number of seconds >= 0"),
}


def _check(obj: Any) -> None:
    """Apply :data:`_RULES` to every field of a settings dataclass."""
    for f in fields(obj):
        rule = _RULES.get(f.name)
        value = getattr(obj, f.name)
        if rule is not None and not rule[0](value):
            raise InvalidSetting((f.name,), f"{f.name} must {rule[1]}, got {value!r}")


# ---------------------------------------------------------------------------- the two parts
@dataclass
class FileGroup:
    """Files that share a label (and optionally a weight and a name)."""

    path: str
    label: int | None = None
    weight: float = 1.0
    name: str | None = None


@dataclass
class PhysicsConfig:
    """What the model sees: files, labels, branches, selection, tensors, event order.

    These settings key the specs pass and the decoded cache (see
    ``SPECS_FIELDS`` and ``CHUNK_FIELDS`` in :mod:`mlaas4hep.io.dataset`).
    """

    tree: str = "Events"
    files: list[FileGroup] = field(default_factory=list)
    branches: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    identifier: list[str] = field(default_factory=lambda: ["run", "luminosityBlock", "event"])
    jagged: dict[str, int] = field(default_factory=dict)
    pad_value: float = 0.0
    normalize: str = "minmax"
    selection: str | None = None
    new_variables: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, InputGroup] = field(default_factory=dict)
    label_branch: str | None = None
    weight_branch: str | None = None
    label_names: list[str] | None = None
    nevts: int = -1
    chunk_size: int = 100_000
    shuffle: bool = True
    shuffle_buffer: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            raise InvalidSetting(
                ("files",),
                f'files must be a list of file groups, such as files: [{{path: "{self.files}", label: 1}}]; '
                f"got the string {self.files!r}",
            )
        if not isinstance(self.files, (list, tuple)):
            raise InvalidSetting(("files",), f"files must be a list of file groups, got {self.files!r}")
        self.files = [g if isinstance(g, FileGroup) else _group(g, i) for i, g in enumerate(self.files)]
        for name in ("branches", "exclude", "identifier"):
            setattr(self, name, _as_list(getattr(self, name), name))
        _check(self)
        try:
            self.inputs = parse_inputs(self.inputs)
        except GroupError as err:
            raise InvalidSetting(("inputs", *err.key), str(err)) from None

    def length_of(self, name: str) -> int | None:
        """The length a jagged branch is padded to in ``x``, when configured (else None: from the specs).

        The largest of ``jagged:`` (by branch, else by collection) and the
        ``length`` of every input group that holds the branch.
        """
        given = self.jagged.get(name, self.jagged.get(name.split("_", 1)[0]))
        lengths = [g.length for g in self.inputs.values() if g.length is not None and name in g.branches]
        lengths += [int(given)] if given is not None else []
        return max(lengths) if lengths else None

    def feature_branches(self) -> list[str]:
        """Branch patterns that become features: ``branches`` and the input groups' file branches."""
        grouped = [b for g in self.inputs.values() for b in g.branches if b not in self.new_variables]
        return list(dict.fromkeys(list(self.branches) + grouped))


@dataclass
class RuntimeConfig:
    """How the data is read: parallelism, cache, error policy and network knobs.

    None of these changes the events, their order or their values, so none of
    them enters a specs or cache key: the same cache serves ``workers: 0`` and
    ``workers: 16``. ``retry_budget`` bounds, in seconds, the time one unit may
    spend retrying a transient read error.
    """

    workers: int | None = None
    executor: str = "local"
    scheduler: str | None = None
    cache_dir: str | None = "~/.cache/mlaas4hep"
    cache_max_gb: float = 20.0
    on_error: str = "raise"
    redirector: str = DEFAULT_REDIRECTOR
    timeout: float = 30.0
    retries: int = 3
    retry_backoff: float = 0.5
    retry_budget: float = 300.0

    def __post_init__(self) -> None:
        _check(self)


PHYSICS_KEYS = frozenset(f.name for f in fields(PhysicsConfig))
RUNTIME_KEYS = frozenset(f.name for f in fields(RuntimeConfig))
#: Keys kept in :attr:`DatasetConfig.extra`: a specs file to reuse, and the training layer's sections.
EXTRA_KEYS = frozenset({"specs", "model", "training"})
#: Settings added after the cache keys were fixed: they enter :meth:`DatasetConfig.digest` only when set.
LATER_KEYS = ("inputs",)
#: Older spellings still accepted in YAML.
ALIASES = {"exclude_branches": "exclude"}
YAML_KEYS = PHYSICS_KEYS | RUNTIME_KEYS | EXTRA_KEYS
FILE_GROUP_KEYS = frozenset(f.name for f in fields(FileGroup))

#: MLaaS4HEP's params.json keys, by who reads them; any other key gets a :class:`ConfigWarning`.
PARAMS_DATASET_KEYS = frozenset(
    {"nevts", "chunk_size", "shuffle", "branch", "identifier", "selected_branches", "exclude_branches"}
    | {"redirector", "nan"}
)
PARAMS_TRAINING_KEYS = frozenset({"epochs", "batch_size", "learning_rate", "validation_fraction", "seed"})
#: Accepted for compatibility, no effect: metrics are always computed, training is always
#: MLaaS4HEP's "standard" (every epoch over all chunks), progress shows on terminals.
PARAMS_COMPAT_KEYS = frozenset({"verbose", "metrics", "training"})
PARAMS_KEYS = PARAMS_DATASET_KEYS | PARAMS_TRAINING_KEYS | PARAMS_COMPAT_KEYS


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
        :data:`PARAMS_DATASET_KEYS`; ``epochs`` and ``batch_size`` are kept in
        ``extra`` for the training layer, which also reads ``learning_rate``,
        ``validation_fraction`` and ``seed``; ``verbose``, ``metrics`` and
        ``training`` are accepted without effect. Any other key is ignored with
        a :class:`ConfigWarning` naming it.
        """
        p = params if isinstance(params, dict) else _read_json(params)
        where = "params" if isinstance(params, dict) else str(params)
        for key in p:
            if key not in PARAMS_KEYS:
                guess = closest(key, PARAMS_KEYS)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                warnings.warn(
                    f"{where}: key {key!r} is not used by mlaas4hep and is ignored{hint}",
                    ConfigWarning,
                    stacklevel=2,
                )
        redirector = p.get("redirector", DEFAULT_REDIRECTOR)
        paths = _lines(files)
        label_branch: str | None = None
        label_values: list[int | None] = [None] * len(paths)
        if labels is not None:
            lab = str(labels)
            if os.path.isfile(lab):
                label_values = [int(float(x)) for x in _lines(lab)]
            elif "," in lab or lab.strip().lstrip("-").isdigit():
                label_values = [int(x) for x in lab.split(",") if x.strip()]
            else:
                label_branch = lab
            if label_branch is None and len(label_values) != len(paths):
                raise ConfigError(
                    f"{len(paths)} files in {str(files)!r} but {len(label_values)} labels in {lab!r}"
                )
        groups = [FileGroup(path=f, label=lv) for f, lv in zip(paths, label_values)]
        selected = p.get("selected_branches") or ["*"]
        nan = p.get("nan", 0.0)
        data: dict[str, Any] = {
            "tree": p.get("branch", "Events"),
            "files": groups,
            "branches": _list_or_file(selected),
            "exclude": _list_or_file(p.get("exclude_branches") or []),
            "identifier": _as_list(p.get("identifier", "run,luminosityBlock,event"), "identifier"),
            "chunk_size": _param_int(p, "chunk_size", 100_000, where),
            "nevts": _param_int(p, "nevts", -1, where),
            "shuffle": bool(p.get("shuffle", True)),
            "redirector": redirector,
            "label_branch": label_branch,
            "pad_value": 0.0 if nan is None or (isinstance(nan, float) and nan != nan) else float(nan),
        }
        extra: dict[str, Any] = {
            k: p[k] for k in ("epochs", "batch_size", "verbose", "metrics", "training") if k in p
        }
        base = Path(files).parent if not isinstance(files, (list, tuple)) else Path(".")
        try:
            return cls(**data, extra=extra, base_dir=str(base))
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
        for k in LATER_KEYS:  # unset, they leave the keys of existing caches as they were
            if not d.get(k):
                d.pop(k, None)
        if d.get("inputs"):  # only what changes x: the groups' branches and lengths (sorting is per batch)
            d["inputs"] = sorted({(b, g["length"] or 0) for g in d["inputs"].values() for b in g["branches"]})
        return digest(d)[:16]


def _group(g: Any, i: int) -> FileGroup:
    if isinstance(g, str):
        return FileGroup(path=g)
    if isinstance(g, dict) and "path" in g:
        for key in g:
            if key not in FILE_GROUP_KEYS:
                raise InvalidSetting(
                    ("files", i, key), unknown_key(key, FILE_GROUP_KEYS, section="a file group")
                )
        checks = {
            "path": (isinstance(g["path"], str) and g["path"] != "", "be a file, a glob or a URL"),
            "label": (g.get("label") is None or _integer(g.get("label")), "be an integer class id"),
            "weight": (_number(g.get("weight", 1.0)), "be a number"),
            "name": (_optional_str(g.get("name")), "be a name"),
        }
        for key, (ok, what) in checks.items():
            if not ok:
                raise InvalidSetting(("files", i, key), f"a file group's {key} must {what}, got {g[key]!r}")
        return FileGroup(**g)
    raise InvalidSetting(
        ("files", i), f"each entry of 'files' needs a 'path' (and usually a 'label'); got {g!r}"
    )


def _as_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InvalidSetting((name,), f"{name} must be a list or a comma-separated string, got {value!r}")


def _param_int(p: dict[str, Any], key: str, default: int, where: str) -> int:
    value = p.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}") from None


def _list_or_file(value: Any) -> list[str]:
    if isinstance(value, str) and os.path.isfile(value):
        return _lines(value)
    return _as_list(value, "branches")


def _lines(path: str | os.PathLike[str] | list[Any] | tuple[Any, ...]) -> list[str]:
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"file {str(path)!r} does not exist") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        params: dict[str, Any] = json.loads(Path(path).read_text())
        return params
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid JSON: {err}") from None
