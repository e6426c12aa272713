"""Input groups: objects as sets, ``(n, length, features)`` with a mask, as a view over ``x``.

Set and graph models (Deep Sets, ParticleNet, Particle Transformer) take one
tensor per collection rather than one flat vector per event. The dataset YAML
declares them under ``inputs:``, next to the flat features::

    inputs:
      jets:    {branches: [Jet_pt, Jet_eta, Jet_phi], length: 10, sort_by: Jet_pt}
      leptons: {branches: [Muon_pt, Muon_eta, Electron_pt, Electron_eta], length: 4, sort_by: pt}
      event:   {branches: [MET_pt, MET_phi, nJet]}

Each entry is an :class:`InputGroup`. A group with a ``length`` is an *object
group*: an array ``(n, length, features)`` and a boolean mask ``(n, length)``,
True where a slot is padding (as ``b.mask`` of the flat vector). A group
without one is a *flat group*: ``(n, features)``, no mask.

A group is a *view over the flat vector* ``x``: its branches join the
dataset's features (a jagged branch padded to the group's length, or to a
larger ``jagged:`` length), so decoding, the cache, shuffling and the workers
do not change. :class:`GroupLayout` knows the columns of ``x`` each group
reads and, per batch, gathers them, sorts the objects of each event and clips
them to the group's length (:meth:`GroupLayout.apply`).

A group whose branches come from several collections (the prefix before the
first ``_``: ``Muon_pt`` and ``Electron_pt``) is their *union*: each
collection gives the same features (suffixes), the objects of an event are
concatenated (the first collection's first), sorted by ``sort_by`` when given
(else real objects first, in that order), and clipped to ``length``. Its
features are named by their suffix (``pt``, ``eta``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .configfile import closest
from .errors import ConfigError, GroupError

#: The keys of one group in the YAML.
GROUP_KEYS = frozenset({"branches", "length", "sort_by", "sort_order"})
SORT_ORDERS = ("descending", "ascending")
#: Version of :meth:`GroupLayout.to_json`'s format.
LAYOUT_VERSION = 1


def collection(name: str) -> str:
    """The collection of a branch: the prefix before the first ``_`` (``Jet_pt`` -> ``Jet``)."""
    return name.split("_", 1)[0]


def _suffix(name: str) -> str:
    return name.split("_", 1)[1] if "_" in name else ""


@dataclass(frozen=True)
class InputGroup:
    """One group of ``inputs:``, as declared.

    Args:
        branches (list of str): the features, in order: branch names or
            ``new_variables``. An object group's branches are lists per event
            (from one collection, or from several for a union); a flat group's
            have one value per event.
        length (int or None, default None): objects per event (>= 1): padded
            with ``pad_value`` and masked, or clipped after sorting. None makes
            a flat group.
        sort_by (str or None, default None): the feature that orders the
            objects of each event (object groups only; for a union, its suffix
            such as ``pt``, or any member branch such as ``Muon_pt``). Padding
            always sorts last; ties keep the file order. None keeps the file
            order.
        sort_order (str, default ``"descending"``): ``"descending"`` (largest
            first, as NanoAOD orders by pt) or ``"ascending"``.
    """

    branches: list[str]
    length: int | None = None
    sort_by: str | None = None
    sort_order: str = "descending"

    @property
    def collections(self) -> list[str]:
        """The collections of an object group's branches, in order of first use."""
        return list(dict.fromkeys(collection(b) for b in self.branches))

    @property
    def is_union(self) -> bool:
        return self.length is not None and len(self.collections) > 1

    @property
    def features(self) -> list[str]:
        """Feature names: the branches, or for a union the suffixes of the first collection."""
        if self.is_union:
            first = self.collections[0]
            return [_suffix(b) for b in self.branches if collection(b) == first]
        return list(self.branches)

    def members(self) -> dict[str, list[str]]:
        """Each collection's branches in :attr:`features` order (one entry for a single collection)."""
        if not self.is_union:
            return {self.collections[0] if self.length is not None else "": list(self.branches)}
        return {c: [f"{c}_{f}" for f in self.features] for c in self.collections}

    def sort_feature(self) -> int | None:
        """Index in :attr:`features` of ``sort_by`` (None without one)."""
        if self.sort_by is None:
            return None
        key = _suffix(self.sort_by) if self.is_union and self.sort_by in self.branches else self.sort_by
        return self.features.index(key)


def parse_group(name: Any, value: Any) -> InputGroup:
    """Check one ``inputs:`` entry and build its :class:`InputGroup`; a mistake is a :class:`GroupError`."""
    if not isinstance(name, str) or not name.isidentifier():
        raise GroupError((name,), f"input group names must be identifiers such as 'jets', got {name!r}")
    if name.endswith("_mask"):
        raise GroupError(
            (name,), f"input group {name!r}: names ending in '_mask' are kept for the groups' masks"
        )
    if not isinstance(value, Mapping):
        raise GroupError(
            (name,), f"input group {name!r} must be a mapping such as {{branches: [Jet_pt], length: 10}}"
        )
    for key in value:
        if key not in GROUP_KEYS:
            guess = closest(str(key), GROUP_KEYS)
            hint = f"did you mean {guess!r}?" if guess else f"known keys: {', '.join(sorted(GROUP_KEYS))}"
            raise GroupError((name, key), f"unknown key {key!r} in input group {name!r} ({hint})")
    branches = value.get("branches")
    if isinstance(branches, str):
        branches = [b.strip() for b in branches.split(",") if b.strip()]
    if (
        not isinstance(branches, (list, tuple))
        or not branches
        or not all(isinstance(b, str) for b in branches)
    ):
        raise GroupError(
            (name, "branches"),
            f"input group {name!r}: branches must be a non-empty list of branch names, got {branches!r}",
        )
    dup = sorted({b for b in branches if list(branches).count(b) > 1})
    if dup:
        raise GroupError((name, "branches"), f"input group {name!r} lists {dup[0]!r} twice")
    length = value.get("length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise GroupError(
            (name, "length"),
            f"input group {name!r}: length must be an integer >= 1 (objects per event), got {length!r}",
        )
    order = value.get("sort_order", "descending")
    if order not in SORT_ORDERS:
        raise GroupError(
            (name, "sort_order"),
            f"input group {name!r}: sort_order must be descending or ascending, got {order!r}",
        )
    group = InputGroup(list(branches), length, value.get("sort_by"), order)
    if group.is_union:
        _check_union(name, group)
    if group.sort_by is not None:
        _check_sort(name, group)
    return group


def _check_union(name: str, group: InputGroup) -> None:
    cols = group.collections
    by = {c: [_suffix(b) for b in group.branches if collection(b) == c] for c in cols}
    for c in cols:
        bare = [b for b in group.branches if collection(b) == c and not _suffix(b)]
        if bare:
            raise GroupError(
                (name, "branches"),
                f"input group {name!r} merges collections {', '.join(cols)}, but {bare[0]!r} has no "
                "collection prefix: name each feature COLLECTION_FEATURE (e.g. Jet_logpt)",
            )
    first = cols[0]
    for c in cols[1:]:
        for have, lack in ((first, c), (c, first)):  # the same features both ways
            for f in by[have]:
                if f not in by[lack]:
                    raise GroupError(
                        (name, "branches"),
                        f"input group {name!r} merges {' and '.join(cols)}, so each needs the same features: "
                        f"collection {lack!r} has no {lack + '_' + f!r} (as {have + '_' + f!r} of {have!r})",
                    )


def _check_sort(name: str, group: InputGroup) -> None:
    if not isinstance(group.sort_by, str):
        raise GroupError(
            (name, "sort_by"), f"input group {name!r}: sort_by must be a feature name, got {group.sort_by!r}"
        )
    if group.length is None:
        raise GroupError(
            (name, "sort_by"),
            f"input group {name!r} has no length, so it is one vector per event and has nothing to sort: "
            "give it a length (objects per event) or drop sort_by",
        )
    known = group.features + (group.branches if group.is_union else [])
    if group.sort_by not in known:
        guess = closest(group.sort_by, known)
        hint = f"did you mean {guess!r}?" if guess else f"its features: {', '.join(group.features)}"
        raise GroupError(
            (name, "sort_by"),
            f"input group {name!r}: sort_by {group.sort_by!r} is not one of its features ({hint})",
        )


def parse_inputs(value: Any) -> dict[str, InputGroup]:
    """Check the whole ``inputs:`` mapping (None or empty: no groups)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise GroupError(
            (),
            f"inputs must map group names to groups, such as {{jets: {{branches: [Jet_pt], length: 10}}}}, got {value!r}",
        )
    return {name: g if isinstance(g, InputGroup) else parse_group(name, g) for name, g in value.items()}


def check_kinds(groups: Mapping[str, InputGroup], flat: Sequence[str], jagged: Sequence[str]) -> None:
    """Check each group's branches against the dataset's features (``flat`` and ``jagged`` names).

    An object group needs lists per event, a flat group one value per event;
    a branch that is not a feature (excluded, an identifier) is refused.
    """
    flat_set, jagged_set = set(flat), set(jagged)
    for name, g in groups.items():
        for i, b in enumerate(g.branches):
            where = (name, "branches", i)
            if b not in flat_set and b not in jagged_set:
                hint = closest(b, list(flat) + list(jagged))
                raise GroupError(
                    where,
                    f"input group {name!r}: {b!r} is not among the dataset's features"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + "; identifiers and excluded branches cannot be features",
                )
            if g.length is not None and b in flat_set:
                raise GroupError(
                    where,
                    f"input group {name!r} has a length, so its branches must be lists per event, but {b!r} "
                    "has one value per event: put it in a group without length",
                )
            if g.length is None and b in jagged_set:
                raise GroupError(
                    where,
                    f"input group {name!r} has no length, so its branches must have one value per event, but "
                    f"{b!r} is a list per event: give the group a length, or reduce it (new_variables: "
                    f"{{{b}_sum: 'sum({b})'}})",
                )


# ---------------------------------------------------------------------------- the layout
@dataclass
class _Group:
    """One group resolved to columns of ``x``: ``index`` is ``(slots, features)`` (``(features,)`` if flat)."""

    name: str
    features: list[str]
    length: int | None
    index: np.ndarray
    sort: int | None = None
    descending: bool = True
    collections: list[str] = field(default_factory=list)


class GroupLayout:
    """Where each input group lives in the flat vector ``x``, and how to cut it out.

    Made by :meth:`build` (from the declared groups and the columns of ``x``)
    or :meth:`from_json` (from a bundle). :meth:`apply` turns ``x``/``mask``
    of a batch into one array per group.

    Attributes:
        names (list of str): the groups, in declared order.
        width (int): the columns of ``x`` it expects.
    """

    def __init__(self, groups: Sequence[_Group], width: int):
        self._groups = {g.name: g for g in groups}
        self.names: list[str] = [g.name for g in groups]
        self.width = int(width)

    # ---------------------------------------------------------------- building
    @classmethod
    def build(
        cls, groups: Mapping[str, InputGroup], columns: Mapping[str, tuple[int, int]], width: int
    ) -> GroupLayout:
        """Resolve declared groups to columns.

        ``columns`` maps each feature to its first column in ``x`` and its
        number of slots (0 for a flat feature), as
        :attr:`mlaas4hep.io.preprocess.Preprocessor.columns` gives; ``width``
        is the number of columns of ``x``.
        """
        out = []
        for name, g in groups.items():
            for i, b in enumerate(g.branches):
                if b not in columns:
                    raise GroupError(
                        (name, "branches", i), f"input group {name!r}: {b!r} is not a column of x"
                    )
            if g.length is None:
                index = np.array([columns[b][0] for b in g.branches], dtype=np.int64)
                out.append(_Group(name, g.features, None, index))
                continue
            blocks = []
            for names in g.members().values():
                slots = min(columns[b][1] for b in names)
                if slots < g.length:
                    raise GroupError(
                        (name, "branches"),
                        f"input group {name!r}: {names[0]!r} has {slots} slots in x, fewer than the length {g.length}",
                    )
                starts = np.array([columns[b][0] for b in names], dtype=np.int64)
                blocks.append(starts[None, :] + np.arange(slots, dtype=np.int64)[:, None])
            out.append(
                _Group(
                    name,
                    g.features,
                    g.length,
                    np.concatenate(blocks),
                    g.sort_feature(),
                    g.sort_order == "descending",
                    g.collections,
                )
            )
        return cls(out, width)

    # ---------------------------------------------------------------- metadata
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-event shape of each group: ``(length, features)`` or ``(features,)``."""
        return {
            n: (g.length, len(g.features)) if g.length is not None else (len(g.features),)
            for n, g in self._groups.items()
        }

    def features(self, name: str) -> list[str]:
        """The feature names of group ``name``, in the order of its last axis."""
        return list(self._group(name).features)

    def is_object(self, name: str) -> bool:
        """Whether group ``name`` is a set of objects (with a length and a mask)."""
        return self._group(name).length is not None

    def _group(self, name: str) -> _Group:
        try:
            return self._groups[name]
        except KeyError:
            guess = closest(name, self.names)
            hint = f"did you mean {guess!r}?" if guess else f"the groups: {', '.join(self.names)}"
            raise KeyError(f"no input group {name!r} ({hint})") from None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (the bundle's ``inputs.preprocessing.groups``)."""
        groups = []
        for g in self._groups.values():
            d: dict[str, Any] = {"name": g.name, "features": list(g.features), "length": g.length}
            if g.length is not None:
                d["collections"] = list(g.collections)
                d["sort_by"] = g.features[g.sort] if g.sort is not None else None
                d["sort_order"] = "descending" if g.descending else "ascending"
            d["index"] = g.index.tolist()
            groups.append(d)
        return {"version": LAYOUT_VERSION, "width": self.width, "groups": groups}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupLayout:
        """Read back :meth:`to_json`'s output; a malformed one is a :class:`ConfigError`."""
        try:
            if d.get("version", LAYOUT_VERSION) != LAYOUT_VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {LAYOUT_VERSION}")
            width = int(d["width"])
            out = []
            for g in d["groups"]:
                features = [str(f) for f in g["features"]]
                length = None if g.get("length") is None else int(g["length"])
                index = np.asarray(g["index"], dtype=np.int64)
                want = 1 if length is None else 2
                if index.ndim != want or index.shape[-1] != len(features) or (length and len(index) < length):
                    raise ValueError(f"group {g['name']!r}: index of shape {index.shape}")
                if index.size and (index.min() < 0 or index.max() >= width):
                    raise ValueError(f"group {g['name']!r}: columns beyond the width {width}")
                sort_by = g.get("sort_by")
                out.append(
                    _Group(
                        str(g["name"]),
                        features,
                        length,
                        index,
                        features.index(sort_by) if sort_by is not None else None,
                        g.get("sort_order", "descending") == "descending",
                        list(g.get("collections", [])),
                    )
                )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"invalid input groups description: {err}") from None
        return cls(out, width)

    # ---------------------------------------------------------------- per batch
    def apply(self, x: np.ndarray, mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Cut the groups out of a batch's ``x`` and ``mask`` (both ``(n, width)``).

        Returns ``(inputs, masks)``: ``inputs[name]`` float32 ``(n, length,
        features)`` for an object group, ``(n, features)`` for a flat one;
        ``masks[name]`` bool ``(n, length)``, True where a slot is padding
        (object groups only). Objects are sorted per event by ``sort_by``
        (padding last, ties in file order), then clipped to ``length``.
        """
        if x.ndim != 2 or x.shape[1] != self.width or mask.shape != x.shape:
            raise ValueError(
                f"the input groups read x of shape (n, {self.width}) with a mask of the same shape; "
                f"got x {x.shape} and mask {mask.shape}"
            )
        inputs: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for name, g in self._groups.items():
            if g.length is None:
                inputs[name] = np.take(x, g.index, axis=1).astype(np.float32, copy=False)
                continue
            inputs[name], masks[name] = _objects(x, mask, g)
        return inputs, masks


def _objects(x: np.ndarray, mask: np.ndarray, g: _Group) -> tuple[np.ndarray, np.ndarray]:
    """One object group of a batch: gather, sort (padding last, stable), clip."""
    assert g.length is not None
    n, length = len(x), g.length
    pad = np.take(mask, g.index[:, 0], axis=1)  # (n, slots)
    single = len(g.collections) <= 1
    if g.sort is None and single:  # file order, padding already last
        return _leading_slots(x, pad, g)
    if g.sort is None:  # a union in file order: real objects first
        key = pad.astype(np.float32)
    else:
        key = np.take(x, g.index[:, g.sort], axis=1).astype(np.float32, copy=True)
        if g.descending:
            np.negative(key, out=key)
        key[pad] = np.inf
    if single and bool((key[:, 1:] >= key[:, :-1]).all()):  # already in order, as NanoAOD is by pt
        return _leading_slots(x, pad, g)
    order = np.argsort(key, axis=1, kind="stable")[:, :length]  # (n, length)
    # one gather from the flat buffer: row offset + column of (object, feature)
    cols = g.index[order] + (np.arange(n, dtype=np.int64) * x.shape[1])[:, None, None]
    values = np.ascontiguousarray(x).ravel()[cols]  # (n, length, features)
    return values.astype(np.float32, copy=False), np.take_along_axis(pad, order, axis=1)


def _leading_slots(x: np.ndarray, pad: np.ndarray, g: _Group) -> tuple[np.ndarray, np.ndarray]:
    """The first ``length`` slots of a group, as they are in ``x``."""
    assert g.length is not None
    cols = g.index[: g.length]
    values = np.take(x, cols.ravel(), axis=1).reshape(len(x), g.length, cols.shape[1])
    return values.astype(np.float32, copy=False), np.ascontiguousarray(pad[:, : g.length])
