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

import logging
from collections.abc import Callable
from typing import Any

from . import schema as schema_mod
from . import sources
from .chunk import Unit
from .config import DatasetConfig
from .configfile import closest
from .errors import BranchNotFoundError, Mlaas4hepError, SchemaDifferencesError
from .expr import did_you_mean, parse
from .passes import file_info
from .preprocess import Preprocessor
from .reader import get_tree

log = logging.getLogger(__name__)

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
) -> tuple[schema_mod.Schema | None, list[str], dict[str, list[str]]]:
    """Find the reference schema, then check every file against it (see :mod:`.schema`).

    Takes the branch types out of ``infos``. With ``branches_policy: strict``
    a file that does not fit raises (every difference of every file in one
    :class:`~.errors.SchemaDifferencesError` when there are several), or with
    ``on_error: skip`` is passed to ``skip`` and its entry in ``infos``
    becomes a skipped one; with ``common`` the branches that not every file
    has are left out of the selection. Returns the selected schema, the files
    that define it (None and [] when no file was described) and the dropped
    branches, each with the files that lack it.
    """
    c = config
    types = {i: f.pop("types") for i, f in enumerate(infos) if "types" in f}
    counts = {i: f.pop("nbranches", None) for i, f in enumerate(infos)}
    if not types:
        return None, [], {}
    described = [(infos[i]["url"], t) for i, t in types.items()]
    check_group_branches(c, *described[0])
    first = {infos[i]["url"]: counts[i] for i in types}
    try:
        sch, ref, members, dropped = schema_mod.reference(
            described,
            c.physics.feature_branches(),
            c.exclude,
            c.identifier,
            extra_names(c),
            policy=c.branches_policy,
        )
    except BranchNotFoundError as err:  # the count of all the file's branches, not of those described
        if "branches there" not in str(err) or first.get(err.file) is None:
            raise
        raise BranchNotFoundError(
            err.file, err.branch, schema_mod.not_there(err.branch, [], first[err.file])
        ) from None
    if dropped:
        log.warning("%s", dropped_message(dropped, len(described)))
    where = f"as in {len(members)} of {len(described)} files, e.g. {members[0]!r}"
    found: list[Mlaas4hepError] = []
    for i, t in types.items():
        url = infos[i]["url"]
        errors = schema_mod.differences(url, t, ref, where)
        if not errors:
            continue
        if c.on_error == "raise":
            found += errors
            continue
        skip(url, None, errors[0])
        infos[i] = {"url": url, "entries": 0, "skipped": True}
    if len(found) == 1:
        raise found[0]
    if found:
        raise SchemaDifferencesError(found, len(described), where)
    return sch, members, dropped


def dropped_message(dropped: dict[str, list[str]], n_files: int) -> str:
    """``branches_policy: common: 3 branches left out, not in every file: Jet_a (1 of 2 files lack it) ...``"""
    parts = [f"{name} ({len(files)} of {n_files} files lack it)" for name, files in dropped.items()]
    return (
        f"branches_policy: common: {len(dropped)} selected branches left out, "
        f"as not every file has them: {', '.join(parts)}"
    )


def check_jagged_keys(config: DatasetConfig, sch: schema_mod.Schema) -> None:
    """Every key of ``jagged:`` names a jagged branch of the selection, or its collection.

    A key that does neither pads nothing: ``jagged: {Jets: 6}`` would leave
    ``Jet_*`` at the specs' lengths, silently. It is a configuration error,
    with the closest collection or branch.
    """
    c = config
    collections = list(dict.fromkeys(schema_mod.collection(j) for j in sch.jagged))
    known = [*collections, *sch.jagged]
    for key in c.jagged:
        if key in known:
            continue
        guess = closest(str(key), known)
        hint = (
            f" (did you mean {guess!r}?)"
            if guess
            else f"; the selection's jagged collections: {', '.join(collections) or 'none'}"
        )
        raise c.source.error(
            f"jagged: {key!r} matches no jagged collection or branch of the selection{hint}", "jagged", key
        )


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
