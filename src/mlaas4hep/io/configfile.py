"""Reading configuration files strictly: every key is known, every error has a line.

A typo in a configuration must not be silently ignored: ``branchs: [...]`` would
otherwise train on every branch of the file, MC truth included. This module
gives the configuration readers (:mod:`mlaas4hep.io.config`,
:mod:`mlaas4hep.train.config`) what they need to say exactly what is wrong::

    >>> data, source = load_yaml("examples/dataset.yaml")
    >>> source.where("branches")
    'examples/dataset.yaml, line 7'
    >>> unknown_key("branchs", ["branches", "exclude"])
    "unknown key 'branchs' (did you mean 'branches'?)"

:func:`load_yaml` parses the file twice with PyYAML's safe loader: once to a
node graph (:func:`yaml.compose`), whose marks give each key's line, and once
to plain Python values. Keys are addressed by their path from the top, e.g.
``("files", 0, "label")`` for the label of the first file group.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: A key's address in a document: mapping keys and sequence indices from the top.
KeyPath = tuple[str | int, ...]


@dataclass
class ConfigSource:
    """Where a configuration came from: the file's name and the line of each key.

    ``lines`` maps a key path to the 1-based line of the key (for a sequence
    item, of the item). An in-memory configuration has ``path=None`` and no
    lines; :meth:`where` then says nothing, so messages stay short.
    """

    path: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def where(self, *keys: str | int) -> str:
        """``"FILE, line N"`` for the key at ``keys`` (the nearest enclosing key if unknown)."""
        if self.path is None:
            return ""
        path: KeyPath = tuple(keys)
        while path and path not in self.lines:
            path = path[:-1]
        return f"{self.path}, line {self.lines[path]}" if path else self.path

    def error(self, message: str, *keys: str | int) -> ConfigError:
        """A :class:`ConfigError` whose message starts with :meth:`where` (when known)."""
        where = self.where(*keys)
        return ConfigError(f"{where}: {message}" if where else message)


def load_yaml(path: str | os.PathLike[str]) -> tuple[Any, ConfigSource]:
    """Parse a YAML file; return its value and a :class:`ConfigSource` with key lines.

    A missing file, invalid YAML and a key given twice in one mapping (PyYAML
    keeps the last one silently) are :class:`ConfigError`.
    """
    name = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {name!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {name!r} is a directory") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(name, err)) from None
    source = ConfigSource(name)
    if node is not None:
        _record(node, (), source)
    return data, source


def yaml_error(name: str, err: yaml.YAMLError) -> str:
    """One line for invalid YAML: ``FILE, line 4, column 9: not valid YAML: mapping values are not allowed here``.

    PyYAML's own message spreads the problem, its context and their places
    over several lines; the place of the problem comes first here.
    """
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else name
    ctx = getattr(err, "context_mark", None)
    also = f" ({context}, line {ctx.line + 1})" if context and ctx is not None and mark is not None else ""
    return f"{where}: not valid YAML: {problem}{also}"


def _record(node: yaml.Node, path: KeyPath, source: ConfigSource) -> None:
    """Walk the node graph, noting the line of every key and refusing duplicates."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if path + (key,) in source.lines:
                first = source.lines[path + (key,)]
                raise ConfigError(
                    f"{source.path}, line {line}: key {key!r} is given twice (first on line {first})"
                )
            source.lines[path + (key,)] = line
            _record(value_node, path + (key,), source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            source.lines[path + (i,)] = item.start_mark.line + 1
            _record(item, path + (i,), source)


def closest(key: str, known: Iterable[str]) -> str | None:
    """The known key most similar to ``key`` (case and ``-``/``_`` forgiven), or ``None``."""
    known = list(known)
    norm = {k.lower().replace("-", "_"): k for k in known}
    if key.lower().replace("-", "_") in norm:
        return norm[key.lower().replace("-", "_")]
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key(
    key: Any, known: Iterable[str], section: str | None = None, listed_in: str | None = None
) -> str:
    """The message for an unknown key: ``unknown key 'branchs' (did you mean 'branches'?)``.

    Without a close match, it points to ``listed_in`` (e.g. the README) when
    given, else it lists the known keys.
    """
    known = sorted(known)
    where = f" in {section}" if section else ""
    guess = closest(str(key), known)
    if guess is not None:
        return f"unknown key {key!r}{where} (did you mean {guess!r}?)"
    if listed_in:
        return f"unknown key {key!r}{where} (the known keys are listed in {listed_in})"
    return f"unknown key {key!r}{where} (known keys: {', '.join(known)})"
