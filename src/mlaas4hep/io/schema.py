"""Which branches become features, and of what kind.

A :class:`Schema` is read from a tree once: the branches that the
configuration selects (wildcards such as ``Jet_*`` or ``HLT_*``), minus the
excluded ones and the event identifiers, each classified as *flat* (one number
per event) or *jagged* (a variable-length list of numbers per event, as in a
NanoAOD collection). bool and small integer branches are numbers too; anything
else (strings, nested objects, fixed-size arrays) is refused with an error that
names the file and branch.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import uproot

from .errors import BranchNotFoundError, UnsupportedBranchError


@dataclass
class Schema:
    """Selected branches in tree order: ``flat`` and ``jagged`` names."""

    flat: list[str] = field(default_factory=list)
    jagged: list[str] = field(default_factory=list)

    @property
    def branches(self) -> list[str]:
        return self.flat + self.jagged


def branch_kind(branch) -> str | None:
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
    tree,
    url: str,
    branches: list[str],
    exclude: list[str] = (),
    identifier: list[str] = (),
    extra: list[str] = (),
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


def kinds(tree, url: str, names: list[str]) -> dict[str, str]:
    """Classify named branches, refusing unsupported ones."""
    out = {}
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
