"""The files of a dataset: each one opened, fingerprinted and checked, before any data is read.

:func:`file_info_task` runs on the workers, once per file: it opens the file
(retrying transient errors) and returns its fingerprint, its entries and the
types of the branches the dataset may read (:func:`branch_patterns`). The
calling process then finds the reference schema, the branch types most files
agree on, and checks every file against it (:func:`reference_schema`; see
:mod:`mlaas4hep.io.schema`), so that a file that does not fit fails, or is
skipped, before the first unit is decoded.

The branches of the input groups are checked against the first described file
(:func:`check_group_branches`), with a hint for a misspelt name, and the new
variables are sorted into flat or jagged from a few entries of the reference
file (:func:`add_new_variables`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import schema as schema_mod
from . import sources
from .chunk import Unit
from .config import DatasetConfig
from .errors import Mlaas4hepError
from .expr import did_you_mean, parse
from .passes import file_info
from .preprocess import Preprocessor
from .reader import get_tree

#: How a skipped file is recorded: ``skip(url, unit, error)`` (no unit for a whole file).
Skip = Callable[[str, Unit | None, Exception], None]


def file_info_task(
    tree: str, timeout: float, retries: int, backoff: float, budget: float, patterns: list[str], url: str
) -> dict[str, Any]:
    """Fingerprint, entries and branch types of one file, retrying transient errors (runs on a worker)."""
    return sources.with_retries(
        lambda: file_info(url, tree, timeout, patterns), f"opening {url}", retries, backoff, url, budget
    )


def branch_patterns(config: DatasetConfig) -> list[str]:
    """The branch patterns whose types each file reports: features, expressions' inputs, group hints."""
    return list(dict.fromkeys(config.physics.feature_branches() + extra_names(config) + group_hints(config)))


def extra_names(config: DatasetConfig) -> list[str]:
    """Branches read for expressions, labels and weights (not features by themselves)."""
    c = config
    exprs = list(c.new_variables.values()) + ([c.selection] if c.selection else [])
    names = {n for e in exprs for n in parse(e).names if n not in c.new_variables}
    names |= {b for b in (c.label_branch, c.weight_branch) if b}
    return sorted(names)


def group_hints(config: DatasetConfig) -> list[str]:
    """Collections of the input groups (``Jet_*``), described so that a misspelt branch gets a hint."""
    return [f"{b.split('_', 1)[0]}_*" for g in config.inputs.values() for b in g.branches if "_" in b]


def check_group_branches(config: DatasetConfig, url: str, types: dict[str, Any]) -> None:
    """Every branch of an input group is in the file or a new variable (else: where, and a hint)."""
    c = config
    for name, g in c.inputs.items():
        for i, b in enumerate(g.branches):
            if b not in types and b not in c.new_variables:
                near = did_you_mean(b, [*types, *c.new_variables])
                raise c.source.error(
                    f"input group {name!r}: no branch {b!r} in tree {c.tree!r} of {url!r}"
                    f" and no new variable of that name{near}",
                    "inputs",
                    name,
                    "branches",
                    i,
                )


def reference_schema(
    config: DatasetConfig, infos: list[dict[str, Any]], skip: Skip
) -> tuple[schema_mod.Schema | None, list[str]]:
    """Find the reference schema, then check every file against it (see :mod:`.schema`).

    Takes the branch types out of ``infos``; a file that does not fit raises,
    or with ``on_error: skip`` is passed to ``skip`` and its entry in ``infos``
    becomes a skipped one. Returns the selected schema and the files that
    define it (None and [] when no file was described).
    """
    c = config
    types = {i: f.pop("types") for i, f in enumerate(infos) if "types" in f}
    if not types:
        return None, []
    described = [(infos[i]["url"], t) for i, t in types.items()]
    check_group_branches(c, *described[0])
    sch, ref, members = schema_mod.reference(
        described, c.physics.feature_branches(), c.exclude, c.identifier, extra_names(c)
    )
    where = f"as in {len(members)} of {len(described)} files, e.g. {members[0]!r}"
    for i, t in types.items():
        url = infos[i]["url"]
        try:
            schema_mod.check(url, t, ref, where)
        except Mlaas4hepError as err:
            if c.on_error == "raise":
                raise
            skip(url, None, err)
            infos[i] = {"url": url, "entries": 0, "skipped": True}
    return sch, members


def add_new_variables(config: DatasetConfig, sch: schema_mod.Schema, url: str) -> None:
    """Add each new variable to ``sch.flat`` or ``sch.jagged``, by its value on entries 0-64 of ``url``."""
    c = config
    names = extra_names(c)
    probe = sources.with_retries(
        lambda: get_tree(url, c.tree, c.timeout).arrays(names, entry_stop=64, library="ak", how=dict),
        f"reading entries 0-64 of {url}",
        c.retries,
        c.retry_backoff,
        url,
        c.retry_budget,
    )
    pre = Preprocessor(flat=[], jagged=[], new_variables=c.new_variables)
    values = pre.add_variables(probe)
    for name in c.new_variables:
        v = values[name]
        (sch.jagged if getattr(v, "ndim", 1) > 1 else sch.flat).append(name)


def boundaries(files: list[dict[str, Any]]) -> list[Any]:
    """Row groups (Parquet) or clusters (RNTuple) of each file, None for a TTree."""
    return [f.get("boundaries") for f in files]
