"""Which branches become features, and of what kind.

A :class:`Schema` is read from a tree once: the branches that the
configuration selects (wildcards such as ``Jet_*`` or ``HLT_*``), minus the
excluded ones and the event identifiers, each classified as *flat* (one number
per event) or *jagged* (a variable-length list of numbers per event, as in a
NanoAOD collection). bool and small integer branches are numbers too; anything
else (strings, nested objects, fixed-size arrays) is refused with an error that
names the file and branch.

Every file is checked, from its metadata alone (branch types; no data is
read), against one *reference schema* before anything is read from it:

* each file is described by :func:`describe`: the type of every branch that
  the configuration may read;
* the files are grouped by the kinds of their selected branches; the
  reference is the group with the most files among those whose branches are
  all present and numeric; on a tie, the group of the earliest file. So an odd
  file is outvoted whatever its position, and a file with a string branch
  never sets the schema when another file has numbers there (with two files
  that disagree on flat versus jagged, there is no majority: the first wins);
* :func:`check` then compares each file with the reference, branch by branch:
  a missing branch, an unsupported type (``char*``, ``float[3]``...) or a
  flat branch that is jagged in the file (or the reverse) raises an error that
  names the file, the branch and both types, which ``on_error: skip`` turns
  into a skipped file. Branches that only some files have, beyond the
  reference's, are ignored; numeric types may differ (``float`` in one file,
  ``double`` in another): all become float32.

Files of several NanoAOD versions differ in dozens of branches of one
collection. ``branches_policy`` says what to do (:data:`POLICIES`):

* ``strict`` (the default): every difference of every file is listed in one
  error (:func:`differences` per file), not one branch per run;
* ``common``: the selection keeps the branches that every file has, of the
  same kind (:func:`common`); the others are dropped, and listed once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import uproot

from .errors import BranchNotFoundError, Mlaas4hepError, SchemaMismatchError, UnsupportedBranchError

#: The values of ``branches_policy``: what to do when the files' branches differ.
POLICIES = ("strict", "common")


@dataclass
class Schema:
    """Selected branches in tree order: ``flat`` and ``jagged`` names."""

    flat: list[str] = field(default_factory=list)
    jagged: list[str] = field(default_factory=list)

    @property
    def branches(self) -> list[str]:
        return self.flat + self.jagged


def branch_kind(branch: Any) -> str | None:  # an uproot TBranch
    """``"flat"``, ``"jagged"`` or ``None`` (not convertible to numbers)."""
    interp = branch.interpretation
    if isinstance(interp, uproot.interpretation.numerical.AsDtype):
        return "flat" if interp.to_dtype.shape == () else None
    if isinstance(interp, uproot.interpretation.jagged.AsJagged):
        content = interp.content
        if isinstance(content, uproot.interpretation.numerical.AsDtype) and content.to_dtype.shape == ():
            return "jagged"
    return None


def collection(name: str) -> str:
    """The collection a jagged branch belongs to: ``Jet_pt`` -> ``Jet``."""
    return name.split("_", 1)[0]


def match(names: list[str], patterns: list[str]) -> list[str]:
    """Names matching any pattern, in ``names`` order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def select(
    tree: Any,  # an uproot TTree
    url: str,
    branches: Sequence[str],
    exclude: Sequence[str] = (),
    identifier: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> Schema:
    """Select and classify branches of ``tree`` (opened from ``url``).

    ``extra`` names branches needed by expressions; they are checked and
    classified even when they are not features.
    """
    keys = [k for k in tree.keys(recursive=True, full_paths=True) if not tree[k].branches]
    for pattern in branches:
        if not match(keys, [pattern]):
            close = fnmatch.filter(keys, f"*{pattern.strip('*')}*")[:5]
            raise BranchNotFoundError(
                url, pattern, f"similar: {close}" if close else f"{len(keys)} branches there"
            )
    chosen = [k for k in match(keys, list(branches)) if not match([k], list(exclude)) and k not in identifier]
    for name in extra:
        if name not in keys:
            raise BranchNotFoundError(url, name, "it is used in an expression")
    schema = Schema()
    for name in chosen:
        kind = branch_kind(tree[name])
        if kind is None:
            raise UnsupportedBranchError(url, name, str(tree[name].typename))
        (schema.flat if kind == "flat" else schema.jagged).append(name)
    return schema


def kinds(tree: Any, url: str, names: list[str]) -> dict[str, str]:
    """Classify named branches, refusing unsupported ones."""
    out: dict[str, str] = {}
    for name in names:
        try:
            b = tree[name]
        except KeyError:
            raise BranchNotFoundError(url, name) from None
        kind = branch_kind(b)
        if kind is None:
            raise UnsupportedBranchError(url, name, str(b.typename))
        out[name] = kind
    return out


# ---------------------------------------------------------------- per-file checks
#: A branch as the checks see it: its kind (``"flat"``, ``"jagged"`` or ``None``
#: when unsupported) and its ROOT type name.
BranchType = tuple[str | None, str]  # (kind | None, typename)


def leaves(tree: Any) -> list[str]:
    return [k for k in tree.keys(recursive=True, full_paths=True) if not tree[k].branches]


def describe(tree: Any, patterns: Sequence[str]) -> dict[str, BranchType]:
    """Kind and type name of the branches of ``tree`` matching ``patterns``, from metadata only."""
    from .formats import EventsView

    if isinstance(tree, EventsView):  # an RNTuple or a Parquet file: its fields mapped to branch names
        return tree.describe(patterns)
    return {k: (branch_kind(tree[k]), str(tree[k].typename)) for k in match(leaves(tree), list(patterns))}


def _chosen(
    types: dict[str, BranchType], branches: Sequence[str], exclude: Sequence[str], identifier: Sequence[str]
) -> list[str]:
    return [
        n for n in match(list(types), list(branches)) if not match([n], list(exclude)) and n not in identifier
    ]


def reference(
    files: list[tuple[str, dict[str, BranchType]]],
    branches: Sequence[str],
    exclude: Sequence[str] = (),
    identifier: Sequence[str] = (),
    extra: Sequence[str] = (),
    policy: str = "strict",
) -> tuple[Schema, dict[str, BranchType], list[str], dict[str, list[str]]]:
    """The dataset's reference schema, from the described ``(url, types)`` of its files.

    Returns the selected branches (a :class:`Schema`), the reference type of
    every branch to check (the selection and ``extra``), the files that
    have exactly the reference's kinds, and the branches dropped by ``policy``
    ``"common"`` (each with the files that lack it; ``{}`` when strict). A
    pattern that matches nothing, an ``extra`` branch that is missing, or an
    unsupported branch *in the reference* is a problem of the configuration,
    not of a file: it raises.
    """
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, (_, types) in enumerate(files):
        names = _chosen(types, branches, exclude, identifier) + [e for e in extra if e in types]
        sig = tuple((n, types[n][0] or types[n][1]) for n in dict.fromkeys(names))
        groups.setdefault(sig, []).append(i)

    def complete(i: int) -> bool:
        types = files[i][1]
        names = _chosen(types, branches, exclude, identifier) + list(extra)
        return all(match(list(types), [p]) for p in branches) and all(
            n in types and types[n][0] is not None for n in names
        )

    sig, members = max(groups.items(), key=lambda g: (complete(g[1][0]), len(g[1]), -g[1][0]))
    url, types = files[members[0]]
    keys = list(types)
    for pattern in branches:
        if not match(keys, [pattern]):
            raise BranchNotFoundError(url, pattern, not_there(pattern, keys))
    for name in extra:
        if name not in types:
            raise BranchNotFoundError(url, name, "it is used in an expression")
    ref = {n: types[n] for n, _ in sig}
    chosen = _chosen(types, branches, exclude, identifier)
    dropped: dict[str, list[str]] = {}
    if policy == "common":
        chosen, dropped = common(files, types, branches, exclude, identifier)
        ref = {n: t for n, t in ref.items() if n not in dropped or n in extra}
    schema = Schema()
    for name in chosen:
        kind, typename = types[name]
        if kind is None:
            raise UnsupportedBranchError(url, name, typename)
        (schema.flat if kind == "flat" else schema.jagged).append(name)
    for name in extra:
        if types[name][0] is None:
            raise UnsupportedBranchError(url, name, types[name][1])
    return schema, ref, [files[i][0] for i in members], dropped


def not_there(pattern: str, names: Sequence[str], n_branches: int | None = None) -> str:
    """The hint for a pattern that matches no branch: similar names, else how many branches there are.

    ``names`` are the branches described (those matching the selection's
    patterns), ``n_branches`` the tree's number of branches when known.
    """
    close = fnmatch.filter(list(names), f"*{pattern.strip('*')}*")[:5]
    if close:
        return f"similar: {close}"
    n = len(names) if n_branches is None else n_branches
    return f"{n:,} branches there"


def common(
    files: list[tuple[str, dict[str, BranchType]]],
    ref: dict[str, BranchType],
    branches: Sequence[str],
    exclude: Sequence[str] = (),
    identifier: Sequence[str] = (),
) -> tuple[list[str], dict[str, list[str]]]:
    """``branches_policy: common``: the selected branches that every file has.

    ``ref`` is the reference file's types. A branch stays when every file
    selects it, as numbers, of the reference's kind (flat or jagged). Returns
    the branches kept (in the reference's order) and the dropped ones, in the
    order met, each with the files that lack it or hold it otherwise.
    """
    chosen = {url: set(_chosen(types, branches, exclude, identifier)) for url, types in files}
    union = list(dict.fromkeys(n for url, types in files for n in types if n in chosen[url]))
    dropped: dict[str, list[str]] = {}
    for n in union:
        kind = ref[n][0] if n in ref else None  # not in the reference: the reference lacks it
        lacking = [url for url, types in files if n not in chosen[url] or types[n][0] != kind]
        if lacking:
            dropped[n] = lacking
    kept = [n for n in _chosen(ref, branches, exclude, identifier) if n not in dropped]
    return kept, dropped


def differences(
    url: str, types: dict[str, BranchType], ref: dict[str, BranchType], where: str = ""
) -> list[Mlaas4hepError]:
    """Every way the file at ``url`` (with ``types``) does not fit the reference ``ref``: one error each."""
    found: list[Mlaas4hepError] = []
    for name in ref:
        try:
            check(url, types, {name: ref[name]}, where)
        except Mlaas4hepError as err:
            found.append(err)
    return found


def check(url: str, types: dict[str, BranchType], ref: dict[str, BranchType], where: str = "") -> None:
    """Raise if the file at ``url`` (with ``types``) does not fit the reference types ``ref``.

    ``where`` says where the reference comes from, for the message.
    """
    for name, (kind, typename) in ref.items():
        if name not in types:
            raise BranchNotFoundError(url, name, f"the dataset's schema has it as {typename!r} ({where})")
        got_kind, got_type = types[name]
        if got_kind is None:
            raise UnsupportedBranchError(url, name, got_type, expected=typename, reference=where)
        if got_kind != kind:
            raise SchemaMismatchError(url, name, got_type, typename, reference=where)
