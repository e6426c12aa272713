"""The dataset configuration: what to read, and how to turn it into tensors.

One :class:`DatasetConfig` describes a training dataset. It is read from the
project's YAML format (see the README) or from MLaaS4HEP's trio
``files.txt`` + ``labels.txt`` + ``params.json``, so existing users' files keep
working.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_REDIRECTOR = "root://cms-xrd-global.cern.ch"


@dataclass
class FileGroup:
    """Files that share a label (and optionally a weight and a name)."""

    path: str
    label: int | None = None
    weight: float = 1.0
    name: str | None = None


@dataclass
class DatasetConfig:
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
    label_branch: str | None = None
    weight_branch: str | None = None
    label_names: list[str] | None = None
    chunk_size: int = 100_000
    nevts: int = -1
    shuffle: bool = True
    shuffle_buffer: int | None = None
    seed: int = 42
    workers: int | None = None
    cache_dir: str | None = "~/.cache/mlaas4hep"
    cache_max_gb: float = 20.0
    on_error: str = "raise"
    redirector: str = DEFAULT_REDIRECTOR
    timeout: float = 30.0
    retries: int = 3
    retry_backoff: float = 0.5
    retry_budget: float = 300.0
    executor: str = "local"
    scheduler: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."

    def __post_init__(self) -> None:
        self.files = [g if isinstance(g, FileGroup) else _group(g) for g in self.files]
        for name in ("branches", "exclude", "identifier"):
            setattr(self, name, _as_list(getattr(self, name), name))
        if self.normalize not in ("minmax", "standard", "none"):
            raise ConfigError(f"normalize must be minmax, standard or none, got {self.normalize!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            raise ConfigError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        if not isinstance(self.jagged, dict) or not all(
            isinstance(v, int) and v >= 0 for v in self.jagged.values()
        ):
            raise ConfigError(f"jagged must map collection names to lengths >= 0, got {self.jagged!r}")
        if not isinstance(self.retry_budget, (int, float)) or self.retry_budget < 0:
            raise ConfigError(f"retry_budget must be a number of seconds >= 0, got {self.retry_budget!r}")
        if not isinstance(self.new_variables, dict):
            raise ConfigError("new_variables must map names to expressions")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike = ".") -> DatasetConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a dataset configuration must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra", "base_dir"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if "exclude_branches" in extra:
            kwargs["exclude"] = extra.pop("exclude_branches")
        return cls(**kwargs, extra=extra, base_dir=str(base_dir))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DatasetConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"configuration file {str(path)!r} is not valid YAML: {err}") from None
        return cls.from_dict(data or {}, base_dir=path.parent)

    @classmethod
    def from_mlaas4hep(
        cls, files: str | os.PathLike, labels: str | os.PathLike | None, params: str | os.PathLike | dict
    ) -> DatasetConfig:
        """Read MLaaS4HEP's ``files.txt``, ``labels.txt`` and ``params.json``.

        ``labels`` may be a file (one label per line, ``#`` comments), a comma
        list such as ``"1,0"``, or the name of a branch that holds the label.
        """
        p = params if isinstance(params, dict) else _read_json(params)
        redirector = p.get("redirector", DEFAULT_REDIRECTOR)
        paths = _lines(files)
        label_branch, label_values = None, [None] * len(paths)
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
            "chunk_size": int(p.get("chunk_size", 100_000)),
            "nevts": int(p.get("nevts", -1)),
            "shuffle": bool(p.get("shuffle", True)),
            "redirector": redirector,
            "label_branch": label_branch,
            "pad_value": 0.0 if nan is None or (isinstance(nan, float) and nan != nan) else float(nan),
            "extra": {k: p[k] for k in ("epochs", "batch_size", "verbose", "metrics", "training") if k in p},
        }
        base = Path(files).parent if not isinstance(files, (list, tuple)) else Path(".")
        return cls(**data, base_dir=str(base))

    # ------------------------------------------------------------------ derived
    def resolve_files(self) -> list[tuple[str, FileGroup]]:
        """Expand globs and LFNs into ``(url, group)`` pairs, in a stable order."""
        out: list[tuple[str, FileGroup]] = []
        for g in self.files:
            out.extend((u, g) for u in self._expand(g.path))
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
        d = asdict(self)
        d.pop("base_dir")
        return d

    def digest(self, *keys: str) -> str:
        """A stable hash of the named fields (all of them by default)."""
        d = self.to_dict()
        if keys:
            d = {k: d[k] for k in keys}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _group(g: Any) -> FileGroup:
    if isinstance(g, str):
        return FileGroup(path=g)
    if isinstance(g, dict) and "path" in g:
        unknown = set(g) - {"path", "label", "weight", "name"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)} in file entry {g!r}")
        return FileGroup(**g)
    raise ConfigError(f"each entry of 'files' needs a 'path' (and usually a 'label'); got {g!r}")


def _as_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ConfigError(f"{name} must be a list or a comma-separated string, got {value!r}")


def _list_or_file(value: Any) -> list[str]:
    if isinstance(value, str) and os.path.isfile(value):
        return _lines(value)
    return _as_list(value, "branches")


def _lines(path: str | os.PathLike | list) -> list[str]:
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"file {str(path)!r} does not exist") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _read_json(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid JSON: {err}") from None
