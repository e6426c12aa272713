"""Raw branch values to model inputs: the one transformation shared by all layers.

A :class:`Preprocessor` turns a mapping of branch name to array (awkward or
numpy, as :meth:`uproot.TTree.arrays` gives) into

* ``x``: float32 ``(n, F)``, columns in :attr:`Preprocessor.feature_names` order:
  flat features first, then each jagged feature padded/clipped to its length
  (``Jet_pt[0] ... Jet_pt[5]``);
* ``mask``: bool ``(n, F)``, True where a jagged slot is padding;
* ``keep``: the boolean event selection (or None).

Values are normalised as ``(v - offset) * scale`` with constants taken from the
specs pass; padded slots hold ``pad_value`` *after* normalisation. The same
object is serialised into a model bundle (:meth:`to_dict`), so the server applies
exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import expr
from .errors import ConfigError
from .groups import GroupLayout
from .lazyak import awkward, is_awkward

if TYPE_CHECKING:
    import awkward as ak


@dataclass
class Preprocessor:
    """Branch values in, model inputs out: the preprocessing a bundle carries.

    Built by :class:`~mlaas4hep.io.Dataset` from its configuration and specs, or
    read back from a bundle with :meth:`from_dict`; :meth:`transform` does the work.

    Args:
        flat (list of str): branches with one number per event, in column order.
        jagged (list of (str, int)): branches with a list per event, each with the
            length it is padded or clipped to (``Jet_pt[0] ... Jet_pt[L-1]``).
        pad_value (float, default 0.0): the value of padded slots, after normalisation.
        normalize (str, default ``"minmax"``): ``"minmax"``, ``"standard"`` or ``"none"``;
            it names how ``offset`` and ``scale`` were derived from the specs.
        offset, scale (dict of str → float): per-branch constants, applied as
            ``(v - offset) * scale``; a branch missing from them is left as it is.
        new_variables (dict of str → str): derived branches, as safe expressions
            (:mod:`mlaas4hep.io.expr`) of the input branches, computed first.
        selection (None or str, default None): an event selection expression;
            :meth:`select` evaluates it.
        tree (str, default ``"Events"``): the tree the branches come from
            (used by ``predict_root``).
        groups (None or :class:`~mlaas4hep.io.groups.GroupLayout`, default None):
            the input groups cut out of ``x`` (``groups.apply(x, mask)``), for
            models that take objects as sets.

    Attributes:
        n_features (int): the number of columns of ``x``.
        inputs (list of str): the branches that must be read from a file.
        columns (dict of str → (int, int)): each feature's first column in
            ``x`` and its number of slots (0 for a flat feature).
    """

    flat: list[str]
    jagged: list[tuple[str, int]]
    pad_value: float = 0.0
    normalize: str = "minmax"
    offset: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    new_variables: dict[str, str] = field(default_factory=dict)
    selection: str | None = None
    tree: str = "Events"
    groups: GroupLayout | None = None

    def __post_init__(self) -> None:
        self.jagged = [(str(n), int(length)) for n, length in self.jagged]
        names = self.flat + [n for n, _ in self.jagged]
        self._columns: list[tuple[str, int, int]] = []  # name, first column, length (0 = flat)
        col = 0
        for n in self.flat:
            self._columns.append((n, col, 0))
            col += 1
        for n, length in self.jagged:
            self._columns.append((n, col, length))
            col += length
        self.n_features = col
        self.columns: dict[str, tuple[int, int]] = {n: (c, length) for n, c, length in self._columns}
        if self.groups is not None and self.groups.width != col:
            raise ConfigError(f"the input groups read {self.groups.width} columns, but x has {col}")
        self._new = [(name, expr.parse(src)) for name, src in self.new_variables.items()]
        self._sel = expr.parse(self.selection) if self.selection else None
        needed = [n for n in names if n not in self.new_variables]
        for _, e in self._new:
            needed += [n for n in e.names if n not in self.new_variables]
        self.inputs: list[str] = list(dict.fromkeys(needed))
        sel = [n for n in (self._sel.names if self._sel else []) if n not in self.new_variables]
        self.branches: list[str] = list(dict.fromkeys(self.inputs + sel))

    # --------------------------------------------------------------- metadata
    @property
    def feature_names(self) -> list[str]:
        out = list(self.flat)
        for n, length in self.jagged:
            out.extend(f"{n}[{i}]" for i in range(length))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tree": self.tree,
            "branches": list(self.branches),
            "flat": list(self.flat),
            "jagged": [[n, length] for n, length in self.jagged],
            "pad_value": self.pad_value,
            "normalize": self.normalize,
            "offset": dict(self.offset),
            "scale": dict(self.scale),
            "new_variables": dict(self.new_variables),
            "selection": self.selection,
        }
        if self.groups is not None:
            d["groups"] = self.groups.to_json()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        try:
            return cls(
                flat=list(d["flat"]),
                jagged=[tuple(j) for j in d["jagged"]],
                pad_value=float(d.get("pad_value", 0.0)),
                normalize=d.get("normalize", "none"),
                offset={k: float(v) for k, v in d.get("offset", {}).items()},
                scale={k: float(v) for k, v in d.get("scale", {}).items()},
                new_variables=dict(d.get("new_variables") or {}),
                selection=d.get("selection"),
                tree=d.get("tree", "Events"),
                groups=GroupLayout.from_json(d["groups"]) if d.get("groups") else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"invalid preprocessing description: {err!r}") from None

    # --------------------------------------------------------------- transform
    def add_variables(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate ``new_variables`` (in order; later ones may use earlier ones)."""
        out = dict(arrays)
        for name, e in self._new:
            out[name] = e.evaluate(out)
        return out

    def select(self, arrays: Mapping[str, Any]) -> np.ndarray | None:
        if self._sel is None:
            return None
        keep = self._sel.evaluate(arrays)
        keep = np.asarray(awkward().to_numpy(keep) if is_awkward(keep) else keep, dtype=bool)
        if keep.ndim != 1:
            raise ConfigError(f"selection {self.selection!r} must give one boolean per event")
        return keep

    def normalized(
        self, arrays: Mapping[str, Any], apply_selection: bool = True
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """Normalised features with jagged ones kept as awkward lists (no padding): for set/graph models."""
        arrays = self.add_variables(arrays) if self._new else arrays
        keep = self.select(arrays) if apply_selection else None
        out = {}
        for name, _, _ in self._columns:
            v = arrays[name]
            off, sc = self.offset.get(name, 0.0), self.scale.get(name, 1.0)
            v = (v - off) * sc if (off != 0.0 or sc != 1.0) else v
            out[name] = v[keep] if keep is not None else v
        return out, keep

    def transform(
        self, arrays: Mapping[str, Any], apply_selection: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Return ``(x, mask, keep)``; ``x``/``mask`` already have the selection applied."""
        arrays = self.add_variables(arrays) if self._new else arrays
        keep = self.select(arrays) if apply_selection else None
        n = _length(arrays, self.flat + [j for j, _ in self.jagged])
        x = np.empty((n, self.n_features), dtype=np.float32)
        mask = np.zeros((n, self.n_features), dtype=bool)
        plans = PadPlans()  # a collection's branches share their gather indices
        for name, col, length in self._columns:
            try:
                values = arrays[name]
            except KeyError:
                raise ConfigError(f"input {name!r} is missing; expected {self.inputs}") from None
            off, sc = self.offset.get(name, 0.0), self.scale.get(name, 1.0)
            if length == 0:
                v = _flat(values, name)
                if v.shape[0] != n:
                    raise ConfigError(f"input {name!r} has {v.shape[0]} events, expected {n}")
                x[:, col] = (v - off) * sc if (off != 0.0 or sc != 1.0) else v
            else:
                block, pad = pad_jagged(values, length, name, plans)
                if block.shape[0] != n:
                    raise ConfigError(f"input {name!r} has {block.shape[0]} events, expected {n}")
                if off != 0.0 or sc != 1.0:  # in place: the padded block is a new array
                    block -= np.float32(off)
                    block *= np.float32(sc)
                np.copyto(block, np.float32(self.pad_value), where=pad)
                x[:, col : col + length] = block
                mask[:, col : col + length] = pad
        if keep is not None:
            x, mask = x[keep], mask[keep]
        return x, mask, keep


def _length(arrays: Mapping[str, Any], names: list[str]) -> int:
    for n in names:
        if n in arrays:
            return len(arrays[n])
    return 0


def _flat(values: Any, name: str) -> np.ndarray:
    if is_awkward(values):
        if values.ndim != 1:
            raise ConfigError(f"input {name!r} is jagged but the model expects one value per event")
        values = awkward().to_numpy(values)
    v = np.asarray(values)
    if v.ndim != 1:
        raise ConfigError(f"input {name!r} must have one value per event, got shape {v.shape}")
    if v.dtype == object:
        raise ConfigError(f"input {name!r} must be numeric")
    return v.astype(np.float32, copy=False)


class PadPlans:
    """Gather indices and pad masks of padded lists, shared by the branches of a collection.

    ``Jet_pt``, ``Jet_eta``, ... of one chunk have equal list offsets, so the
    ``(n, length)`` gather indices and pad mask that :func:`pad_jagged` builds
    for the first serve the others: a branch whose offsets equal the last
    plan's (compared value by value, so differing collections never share)
    skips building them. One per chunk; the pad masks handed out are shared
    and must not be modified.
    """

    def __init__(self) -> None:
        self._key: tuple[np.ndarray, np.ndarray, int, int] | None = None
        self._plan: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 0), bool), np.zeros((0, 0), np.int64))

    def plan(
        self, starts: np.ndarray, stops: np.ndarray, length: int, size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pad, idx)`` of lists ``starts``/``stops`` of a content of ``size`` values."""
        key = self._key
        if (
            key is not None
            and key[2:] == (length, size)
            and np.array_equal(key[0], starts)
            and np.array_equal(key[1], stops)
        ):
            return self._plan
        slots = np.arange(length, dtype=np.int64)
        pad = slots[None, :] >= (stops - starts).astype(np.int64)[:, None]
        idx = starts.astype(np.int64)[:, None] + slots[None, :]
        np.minimum(idx, max(size - 1, 0), out=idx)
        self._key, self._plan = (starts, stops, length, size), (pad, idx)
        return pad, idx


def pad_jagged(
    values: Any, length: int, name: str = "", plans: PadPlans | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad or clip a jagged array to ``length``: returns float32 ``(n, length)`` and the pad mask.

    Works on the list offsets directly (one vectorised gather), which is several
    times faster than ``ak.pad_none`` + ``ak.fill_none`` + ``ak.to_numpy``.
    ``plans`` (a :class:`PadPlans`) lets the branches of one collection share
    their gather indices and pad mask (then the mask must not be modified).
    """
    if not is_awkward(values) and (not isinstance(values, np.ndarray) or values.dtype == object):
        values = awkward().Array(values)
    if isinstance(values, np.ndarray):  # a regular (n, k) numpy array
        if values.ndim != 2:
            raise ConfigError(f"input {name!r} must be a list of values per event")
        n, k = values.shape
        out = np.zeros((n, length), dtype=np.float32)
        m = min(k, length)
        out[:, :m] = values[:, :m]
        pad = np.ones((n, length), dtype=bool)
        pad[:, :m] = False
        return out, pad
    if values.ndim != 2:
        raise ConfigError(f"input {name!r} must be a list of numbers per event, got type {values.type}")
    parts = list_parts(values)
    if parts is not None:
        starts, stops, data = parts
        pad, idx = (plans or PadPlans()).plan(starts, stops, length, data.size)
        if data.size == 0:
            return np.zeros((len(starts), length), dtype=np.float32), pad
        return data[idx].astype(np.float32, copy=False), pad
    # exotic layouts (option types, indexed arrays): the generic awkward path
    ak = awkward()
    padded = ak.pad_none(values, length, clip=True, axis=1)
    pad = ak.to_numpy(ak.is_none(padded, axis=1))
    out = ak.to_numpy(ak.fill_none(padded, 0.0)).astype(np.float32)
    return out, np.asarray(pad, dtype=bool)


def list_parts(values: ak.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(starts, stops, content)`` numpy views of a list-of-numbers array, or None
    for other layouts (option types, indexed arrays)."""
    ak = awkward()
    layout = values.layout
    if isinstance(layout, ak.contents.ListOffsetArray):
        offsets = np.asarray(layout.offsets)
        starts, stops, content = offsets[:-1], offsets[1:], layout.content
    elif isinstance(layout, ak.contents.ListArray):
        starts, stops, content = np.asarray(layout.starts), np.asarray(layout.stops), layout.content
    else:
        return None
    if not isinstance(content, ak.contents.NumpyArray):
        return None
    return starts, stops, np.asarray(content.data)
