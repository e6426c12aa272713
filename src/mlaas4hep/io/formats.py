"""RNTuple and Parquet inputs, read through the same small interface as a TTree.

The streaming layer was written against uproot's ``TTree``: it asks a tree for
``num_entries``, whether it has a branch (``name in tree``), the arrays of some
branches over an entry range (``tree.arrays(names, entry_start=, entry_stop=,
how=dict)``), and the open file behind it (``tree.file``: its UUID, its size,
``close()``). :class:`EventsView` answers exactly these questions for two other
formats, so that everything above it (schema checks, specs, selections, labels
and weights from branches, the decoded cache, ``predict_root``) works unchanged:

* :class:`RNTupleView` wraps uproot's ``ROOT::RNTuple`` (ROOT's columnar
  successor of the TTree). :func:`mlaas4hep.io.sources.open_tree` returns one
  whenever the object named by ``tree:`` is an RNTuple, so detection is per file
  and a dataset may mix TTree and RNTuple files;
* :class:`ParquetView` wraps a Parquet file (``*.parquet``, ``*.parq``,
  ``*.pq``; local or any fsspec URL). A Parquet file holds one table, so
  ``tree:`` does not apply to it.

How fields become branch names
------------------------------
Both formats store *nested* columns where a NanoAOD TTree stores flat
branches: a collection of jets is one field ``Jet`` (a list of records with
members ``pt``, ``eta``...) instead of the branches ``nJet``, ``Jet_pt``,
``Jet_eta``. The mapping (:func:`leaves`) gives them their NanoAOD names, so
configurations (``Jet_*``, ``jagged: {Jet: 6}``, ``sum(Jet_pt)``) work as for a
TTree:

========================================  =============================  ======
field in the file                          branch name                    kind
========================================  =============================  ======
number ``MET_pt``                          ``MET_pt``                     flat
record ``MET`` {pt, phi}                   ``MET_pt``, ``MET_phi``        flat
list of numbers ``Jet_pt``                 ``Jet_pt``                     jagged
list of records ``Jet`` {pt, eta}          ``Jet_pt``, ``Jet_eta``        jagged
... and its length (the offsets)           ``nJet`` (unless a field has   flat
                                           that name already)
anonymous collection ``_collection0``      its members' own names
{Jet_pt, Jet_eta} (ROOT's importer)        (``Jet_pt``, ``Jet_eta``)
========================================  =============================  ======

So a member's name is the path of names joined by ``_``, leaving out the names
that start with ``_``. The counter ``nJet`` is computed from the collection's
offsets; it is placed just before the collection's members, where uproot's
``mktree`` puts the counter of a TTree. Feature order is the order of the
fields in the reference file (uproot writes an RNTuple's fields sorted by
name). When two fields map to one name, the first one wins.

Not supported (the schema check names the file, the branch and its type, and
``exclude:`` removes it): strings, fixed-size arrays (``std::array``), lists of
lists, a collection inside a collection, maps, variants, and fields that uproot
cannot read. Parquet columns may be nullable, but a null value is an error.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from . import urls
from .errors import BranchNotFoundError, CorruptFileError, FileOpenError, UnsupportedBranchError

#: File name endings read as Parquet.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def is_parquet(url: str) -> bool:
    """Whether ``url`` names a Parquet file (by its ending; query strings ignored)."""
    return url.split("?", 1)[0].lower().endswith(PARQUET_SUFFIXES)


@dataclass(frozen=True)
class Leaf:
    """One branch as the streaming layer sees it, and where it lives in the file.

    ``path`` is the list of field names from the top (``("Jet", "pt")``);
    ``counter`` is True for the ``nJet`` that counts the collection ``path``.
    ``kind`` is ``"flat"``, ``"jagged"`` or None (unsupported); ``typename``
    reads like a TTree's (``float``, ``float[]``) for supported leaves and
    names the real type otherwise.
    """

    name: str
    path: tuple[str, ...]
    kind: str | None
    typename: str
    counter: bool = False

    @property
    def field(self) -> str:
        """The dotted field path, as uproot and pyarrow name it (``Jet.pt``)."""
        return ".".join(self.path)


#: awkward primitives under the names a TTree's leaves print (``float``, ``int32_t``).
_CTYPES = {"float32": "float", "float64": "double", "bool": "bool", "float16": "half"}


def _ctype(primitive: str) -> str:
    return _CTYPES.get(primitive, f"{primitive}_t")


def _name(path: Sequence[str]) -> str:
    parts = [p for p in path if not p.startswith("_")] or [path[-1]]
    return "_".join(parts)


def _unwrap(form: Any) -> Any:  # awkward forms (awkward has no type hints)
    """The content of an option form (nullable Parquet columns; nulls are refused on reading)."""
    options = (
        ak.forms.IndexedOptionForm,
        ak.forms.UnmaskedForm,
        ak.forms.ByteMaskedForm,
        ak.forms.BitMaskedForm,
    )
    while isinstance(form, options):
        form = form.content
    return form


def _is_number(form: Any) -> bool:
    return (
        isinstance(form, ak.forms.NumpyForm) and form.inner_shape == () and "__array__" not in form.parameters
    )


def leaves(
    fields: Sequence[tuple[str, Any]], typename: Callable[[tuple[str, ...], Any], str] | None = None
) -> list[Leaf]:
    """The branches of a file, from its top-level ``(name, awkward form)`` pairs.

    ``typename(path, form)`` gives the name of a type for messages (the
    format's own, e.g. ``std::string``); by default, awkward's. A form that
    cannot be known (uproot cannot read the field) may be given as an
    exception: the field becomes an unsupported leaf that names it.
    """
    typename = typename or (lambda path, form: str(form.type) if hasattr(form, "type") else str(form))
    out: list[Leaf] = []

    def add(leaf: Leaf) -> None:
        if all(x.name != leaf.name for x in out):
            out.append(leaf)

    def walk(path: tuple[str, ...], form: Any, in_list: bool) -> None:
        form = _unwrap(form)
        if _is_number(form):
            t = _ctype(form.primitive)
            add(Leaf(_name(path), path, "jagged" if in_list else "flat", f"{t}[]" if in_list else t))
        elif isinstance(form, ak.forms.RecordForm) and not form.is_tuple:
            for key, content in zip(form.fields, form.contents):
                walk((*path, key), content, in_list)
        elif (
            isinstance(form, (ak.forms.ListOffsetForm, ak.forms.ListForm))
            and not in_list
            and "__array__" not in form.parameters
        ):
            content = _unwrap(form.content)
            if isinstance(content, ak.forms.RecordForm) and not content.is_tuple:
                before = len(out)
                walk(path, content, True)
                first = next((x for x in out[before:] if x.kind == "jagged"), None)
                if first is not None and not path[-1].startswith("_"):
                    # the collection's length, from its offsets, before its members
                    counter = Leaf(f"n{_name(path)}", first.path, "flat", "int32_t", counter=True)
                    if all(x.name != counter.name for x in out):
                        out.insert(before, counter)
            else:
                walk(path, content, True)
        else:
            add(Leaf(_name(path), path, None, typename(path, form)))

    for key, form in fields:
        if isinstance(form, BaseException):
            add(Leaf(_name((key,)), (key,), None, f"unreadable by uproot: {type(form).__name__}: {form}"))
        else:
            walk((key,), form, False)
    # a real top-level field wins over a counter of the same name
    names = [x.name for x in out if not x.counter]
    return [x for x in out if not (x.counter and x.name in names)]


class _Source:
    def __init__(self, num_bytes: int | None):
        self.num_bytes = num_bytes


class EventsView:
    """A table of events that reads like an uproot ``TTree`` for the streaming layer.

    Subclasses set ``url``, ``num_entries``, ``file`` (with ``uuid``,
    ``source.num_bytes`` and ``close()``) and ``_leaves``, and implement
    :meth:`_read`.
    """

    url: str
    num_entries: int
    file: Any
    format: str = "?"
    #: First entry of each row group (Parquet) or cluster (RNTuple), then the total: units follow them.
    boundaries: list[int] | None = None
    _leaves: list[Leaf]

    @property
    def by_name(self) -> dict[str, Leaf]:
        return {x.name: x for x in self._leaves}

    def keys(self, **_: Any) -> list[str]:
        """Branch names, in the file's field order."""
        return [x.name for x in self._leaves]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def describe(self, patterns: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        """Kind and type name of the branches matching ``patterns`` (as :func:`.schema.describe`)."""
        return {
            x.name: (x.kind, x.typename)
            for x in self._leaves
            if any(fnmatch.fnmatchcase(x.name, p) for p in patterns)
        }

    def arrays(
        self,
        names: Sequence[str],
        entry_start: int | None = None,
        entry_stop: int | None = None,
        library: str = "ak",
        how: Any = dict,
    ) -> dict[str, Any]:
        """Arrays of the branches ``names`` for entries ``[entry_start, entry_stop)``, by name.

        Flat branches come back as 1-d arrays, jagged ones as awkward lists:
        what ``TTree.arrays(..., how=dict)`` returns.
        """
        lookup = self.by_name
        chosen = []
        for name in names:
            leaf = lookup.get(name)
            if leaf is None:
                raise BranchNotFoundError(self.url, name, f"no such field in this {self.format}")
            if leaf.kind is None:
                raise UnsupportedBranchError(self.url, name, leaf.typename)
            chosen.append(leaf)
        start = 0 if entry_start is None else max(0, int(entry_start))
        stop = self.num_entries if entry_stop is None else min(int(entry_stop), self.num_entries)
        stop = max(start, stop)
        return self._read(chosen, start, stop)

    def _read(self, leaves: list[Leaf], start: int, stop: int) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------- RNTuple
class RNTupleView(EventsView):
    """An uproot ``ROOT::RNTuple`` with NanoAOD branch names (see the module's table)."""

    format = "RNTuple"

    def __init__(self, ntuple: Any, url: str) -> None:  # an uproot RNTuple
        self._ntuple = ntuple
        self.url = url
        self.file = ntuple.file
        self.num_entries = int(ntuple.num_entries)
        fields = []
        for f in ntuple.fields:
            try:
                form = f.to_akform()  # (a record holding just this field, ...)
                form = form[0] if isinstance(form, tuple) else form
                fields.append((f.name, form.contents[form.fields.index(f.name)]))
            except Exception as err:  # a field type uproot does not implement
                fields.append((f.name, err))

        def typename(path: tuple[str, ...], form: Any) -> str:
            try:
                return str(ntuple[".".join(path)].typename) or str(form.type)
            except Exception:
                return str(getattr(form, "type", form))

        self._leaves = leaves(fields, typename)
        try:  # the first entry of each cluster, then the total
            firsts = [int(c.num_first_entry) for c in ntuple.cluster_summaries]
            self.boundaries: list[int] | None = sorted(set(firsts)) + [self.num_entries]
        except Exception:
            self.boundaries = None

    def _read(self, leaves: list[Leaf], start: int, stop: int) -> dict[str, Any]:
        fields = list(dict.fromkeys(x.field for x in leaves))
        arr = self._ntuple.arrays(filter_name=fields, entry_start=start, entry_stop=stop)
        out = {}
        for leaf in leaves:
            value = arr
            if leaf.counter:  # nJet: the lengths of the collection's first member
                for p in leaf.path:
                    value = value[p]
                out[leaf.name] = ak.num(value, axis=1).to_numpy().astype(np.int32)
                continue
            for p in leaf.path:
                value = value[p]
            out[leaf.name] = value.to_numpy() if leaf.kind == "flat" else value
        return out


# ---------------------------------------------------------------- Parquet
class _ParquetFile:
    """What ``tree.file`` means for a Parquet file: a content id, a size, and ``close()``."""

    def __init__(
        self, pf: Any, handle: Any, num_bytes: int | None
    ) -> None:  # pyarrow ParquetFile, fsspec file
        meta = pf.metadata
        desc = [meta.num_rows, meta.num_row_groups, str(pf.schema_arrow), meta.created_by]
        desc += [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
        #: A digest of the footer (schema, row groups and their sizes): Parquet has no UUID.
        self.uuid = hashlib.sha256(json.dumps(desc, default=str).encode()).hexdigest()[:32]
        self.source = _Source(num_bytes)
        self.compression = meta.row_group(0).column(0).compression if meta.num_row_groups else "none"
        self._handle = handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class ParquetView(EventsView):
    """A Parquet file: rows are events, row groups the unit of reading.

    A read of entries ``[start, stop)`` reads only the row groups that overlap
    it, and only the columns (leaf column chunks) of the requested branches; the
    last row group read is kept, so units that split a row group do not read it
    twice when they come one after the other.
    """

    format = "Parquet"

    def __init__(self, url: str, timeout: float = 30.0):
        try:
            import pyarrow.parquet as pq
        except ImportError:  # not a file's fault: never skipped by on_error: skip
            raise ImportError(
                f"reading the Parquet file {url!r} needs pyarrow: pip install 'mlaas4hep[parquet]'"
            ) from None

        self.url = url
        handle = None
        try:
            if urls.is_local(url):
                path = urls.local_path(url)
                if not os.path.exists(path):
                    raise FileOpenError(url, "no such file")
                pf = pq.ParquetFile(path, memory_map=True)
                size: int | None = os.stat(path).st_size
            else:
                import fsspec

                handle = fsspec.open(url, "rb", **_fsspec_options(url, timeout)).open()
                size = getattr(handle, "size", None)
                pf = pq.ParquetFile(handle)
        except FileOpenError:
            raise
        except FileNotFoundError as err:
            raise FileOpenError(url, f"no such file ({err})") from None
        except urls.transient_errors() as err:
            if handle is not None:
                handle.close()
            raise FileOpenError(
                url, f"{type(err).__name__}: {err}", transient=not urls.is_local(url)
            ) from err
        except Exception as err:  # not Parquet
            if handle is not None:
                handle.close()
            raise CorruptFileError(url, f"not a Parquet file: {type(err).__name__}: {err}") from None
        self._pf = pf
        self.file = _ParquetFile(pf, handle, size)
        meta = pf.metadata
        self.num_entries = int(meta.num_rows)
        rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        #: First entry of each row group, and the total at the end.
        self.boundaries = [0, *np.cumsum(rows, dtype=np.int64).tolist()]
        schema = pf.schema_arrow
        form = ak.from_arrow_schema(schema)
        fields = list(zip(form.fields, form.contents))
        # keep the Parquet type names for messages
        types = {f.name: f.type for f in schema}

        def typename(path: tuple[str, ...], form: Any) -> str:
            t = types.get(path[0])
            return str(t) if len(path) == 1 else f"{form.type} (in {path[0]}: {t})"

        self._leaves = leaves(fields, typename)
        self._columns: list[str] = [pf.schema.column(i).path for i in range(len(pf.schema))]
        self._last: tuple[tuple[tuple[int, ...], tuple[str, ...]], Any] | None = None

    def _column(self, leaf: Leaf) -> str:
        """The Parquet column path of a leaf: list wrappers (``list.item``, ``list.element``) skipped."""
        for col in self._columns:
            parts, logical = col.split("."), []
            i = 0
            while i < len(parts):
                if parts[i] == "list" and i + 1 < len(parts) and parts[i + 1] in ("item", "element"):
                    i += 2
                    continue
                logical.append(parts[i])
                i += 1
            if tuple(logical) == leaf.path:
                return col
        return leaf.path[0]

    def _read(self, leaves: list[Leaf], start: int, stop: int) -> dict[str, Any]:
        b = np.asarray(self.boundaries, dtype=np.int64)
        first = int(np.searchsorted(b, start, side="right") - 1)
        last = int(np.searchsorted(b, stop, side="left"))
        groups = list(range(max(first, 0), max(last, first + 1)))
        groups = [g for g in groups if g < len(b) - 1]
        columns = sorted({self._column(x) for x in leaves})
        key = (tuple(groups), tuple(columns))
        if self._last is not None and self._last[0] == key:
            table = self._last[1]
        else:
            table = self._pf.read_row_groups(groups, columns=columns, use_threads=False)
            self._last = (key, table)
        offset = int(b[groups[0]]) if groups else 0
        table = table.slice(start - offset, stop - start)
        tops: dict[
            str, tuple[Any, np.ndarray | None]
        ] = {}  # per top-level column: (values, offsets), each unpacked once
        out = {}
        for leaf in leaves:
            if leaf.path[0] not in tops:
                tops[leaf.path[0]] = self._unpack(table.column(leaf.path[0]).combine_chunks(), leaf)
            values, offsets = tops[leaf.path[0]]
            out[leaf.name] = self._leaf(values, offsets, leaf)
        return out

    def _unpack(self, arr: Any, leaf: Leaf) -> tuple[Any, np.ndarray | None]:  # a pyarrow Array
        """A top-level column as (values, offsets): offsets (from 0) when it is a list, else None."""
        import pyarrow as pa

        if arr.null_count:
            raise UnsupportedBranchError(self.url, leaf.name, f"{arr.type} with null values")
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            return arr, None
        offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = arr.flatten()  # the values of this slice only
        if values.null_count:
            raise UnsupportedBranchError(self.url, leaf.name, f"{arr.type} with null values")
        return values, offsets - offsets[0]

    def _leaf(self, arr: Any, offsets: np.ndarray | None, leaf: Leaf) -> Any:
        import pyarrow.compute as pc

        if leaf.counter:
            assert offsets is not None  # a counter belongs to a list column (see _unpack)
            return np.diff(offsets).astype(np.int32)
        for name in leaf.path[1:]:
            arr = pc.struct_field(arr, [arr.type.get_field_index(name)])
            if arr.null_count:
                raise UnsupportedBranchError(self.url, leaf.name, f"{arr.type} with null values")
        values = arr.to_numpy(zero_copy_only=False)
        if offsets is None:
            return values
        content = ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(values))
        return ak.Array(content)


def cuts(n: int, chunk_size: int, boundaries: Sequence[int]) -> list[tuple[int, int]]:
    """Entry ranges of at most ``chunk_size`` over ``[0, n)`` that follow row-group ``boundaries``.

    ``boundaries`` are the first entries of the row groups (Parquet) or
    clusters (RNTuple), then the total. Small groups are merged whole into
    one range while it stays within ``chunk_size``; a range ends at a group
    boundary rather than reading part of the next group, unless a single group
    is larger than ``chunk_size`` (it is then cut into pieces). So most units
    read whole row groups, and no row group is split between two units that
    could have held it together::

        >>> cuts(10, 4, [0, 3, 6, 10])      # groups of 3, 3, 4
        [(0, 3), (3, 6), (6, 10)]
        >>> cuts(10, 6, [0, 3, 6, 10])
        [(0, 6), (6, 10)]
        >>> cuts(10, 4, [0, 10])           # one group larger than a unit
        [(0, 4), (4, 8), (8, 10)]
    """
    out: list[tuple[int, int]] = []
    start = 0
    for a, b in itertools.pairwise(boundaries):
        a, b = min(int(a), n), min(int(b), n)
        if b <= a:
            continue
        if b - start > chunk_size and a > start:  # the next group does not fit: close at its start
            out.append((start, a))
            start = a
        while b - start > chunk_size:  # a group larger than a unit: pieces
            out.append((start, start + chunk_size))
            start += chunk_size
    if n > start:
        out.append((start, n))
    return out


def _fsspec_options(url: str, timeout: float) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout)}}
    return {}


def open_parquet(url: str, timeout: float = 30.0) -> ParquetView:
    """Open a Parquet file (local or fsspec URL) as an :class:`EventsView`."""
    return ParquetView(url, timeout)


def view(obj: Any, url: str) -> EventsView | None:
    """An :class:`EventsView` of ``obj`` when it is an uproot RNTuple, else None (a TTree)."""
    import uproot

    rntuple = getattr(getattr(uproot, "behaviors", None), "RNTuple", None)
    if rntuple is not None and isinstance(obj, rntuple.RNTuple):
        return RNTupleView(obj, url)
    return None


def inspect_view(v: EventsView, name: str, pattern: str | None = None) -> dict[str, Any]:
    """What ``mlaas4hep inspect`` prints for one RNTuple or Parquet table."""
    branches = []
    for x in v._leaves:
        if pattern and not fnmatch.fnmatchcase(x.name, pattern):
            continue
        entry = {"name": x.name, "type": x.typename, "kind": x.kind or "unsupported"}
        if x.counter:
            entry["field"] = f"len({'.'.join(x.path[:-1])})"
        elif x.field != x.name:
            entry["field"] = x.field
        branches.append(entry)
    return {"name": name, "format": v.format, "entries": int(v.num_entries), "branches": branches}
