"""The settings of a dataset, in their two parts, each checked when it is made.

:class:`PhysicsConfig` holds *what the model sees* (files, labels, branches,
selection, tensors, event order) and :class:`RuntimeConfig` *how it is read*
(workers, executor, cache, error policy, network knobs); :class:`FileGroup` is
one entry of ``files:``. :class:`~mlaas4hep.io.config.DatasetConfig` joins the
two parts into the flat mapping of the YAML file.

Every field is checked against a rule (a test, and the words for what the
value must be), so a wrong value fails where it is set::

    >>> RuntimeConfig(retries=-1)
    InvalidSetting: retries must be an integer >= 0, got -1

An :class:`InvalidSetting` carries the key's path (``("files", 0, "label")``),
which the YAML reader turns into the file and line of that key.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .configfile import unknown_key
from .errors import GroupError, InvalidSetting
from .groups import InputGroup, parse_inputs
from .schema import POLICIES

DEFAULT_REDIRECTOR = "root://cms-xrd-global.cern.ch"


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
    "branches_policy": (
        lambda v: v in POLICIES,
        "be strict (every file has every selected branch) or common (the branches all files share)",
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
    "executor": (
        lambda v: v in ("local", "processes", "threads", "dask"),
        "be local, processes, threads or dask",
    ),
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
    ``SPECS_FIELDS`` and ``CHUNK_FIELDS`` in :mod:`mlaas4hep.io.cache`).
    """

    tree: str = "Events"
    files: list[FileGroup] = field(default_factory=list)
    branches: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    branches_policy: str = "strict"
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
            setattr(self, name, as_list(getattr(self, name), name))
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
FILE_GROUP_KEYS = frozenset(f.name for f in fields(FileGroup))


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


def as_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InvalidSetting((name,), f"{name} must be a list or a comma-separated string, got {value!r}")
