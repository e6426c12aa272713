"""A bundle inside a coffea processor: the model and its preprocessing on NanoEvents, in process.

:class:`BundleWrapper` is a wrapper in the style of ``coffea.ml_tools``
(``torch_wrapper``, ``triton_wrapper``): built once with a bundle's path, called
on events, it returns the model's scores per event::

    from mlaas4hep.coffea import BundleWrapper

    tth = BundleWrapper("runs/tth/bundle")

    class Processor(processor.ProcessorABC):
        def process(self, events):
            scores = tth(events)                  # (n, 1): the probability of ttH
            scores = tth(events.Jet, events.MET)  # the same, from the collections
            ...

Unlike ``torch_wrapper`` there is no ``prepare_awkward`` to write: the bundle
knows which branches it reads (``Jet_pt``, ``MET_pt``, ``nJet`` ...) and how to
turn them into the model's inputs. Each branch ``X_y`` is looked up as
``events.X.y`` (NanoEvents' collections), as a field ``X_y`` (plain awkward
arrays, ``uproot.dask``), or among the arrays passed by keyword
(``tth(Jet=jets, MET=events.MET)``, ``tth(Jet_pt=...)``); a count ``nX`` is
``num(events.X)``. The preprocessing is then the bundle's, exactly as the server
applies it to raw branches and as ``mlaas4hep predict`` does: the same
normalisation constants, padding, new variables and object groups, no selection.

It works on the three kinds of NanoEvents:

* eager and virtual (coffea's default since 2025): awkward arrays in, an
  awkward array ``(n, K)`` out;
* dask (``mode="dask"``, with ``dask-awkward`` installed): a lazy
  ``dask_awkward`` array, one ``map_partitions`` task per partition, that reads
  only the columns the model needs.

The ONNX session is made on first use in each process and never pickled
(``nonserializable_attribute``), so the wrapper can be shipped to Dask or
futures workers. :meth:`BundleWrapper.tensors` gives the model's input tensors
instead of its scores, e.g. to send them to the server with coffea's
``triton_wrapper`` (see ``examples/coffea_processor.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np

from . import bundle as bundle_mod
from . import extras
from .bundle_spec import BundleSpec, InputError

try:
    from coffea.ml_tools.helper import nonserializable_attribute, numpy_call_wrapper
except ImportError as err:
    raise extras.MissingDependencyError(
        f"the coffea wrapper (mlaas4hep.coffea) needs coffea, which is not installed: {extras.install_hint('coffea')}"
    ) from err


class BundleWrapper(nonserializable_attribute, numpy_call_wrapper):
    """A model bundle applied to (dask-)awkward events, preprocessing included.

    Args:
        bundle (str or path): the bundle directory (``runs/NAME/bundle``, or the run's
            directory); it must hold a preprocessing description.
        threads (None or int, default 1): onnxruntime's threads per process (coffea
            runs one task per core; None: onnxruntime's default, all cores).

    Calling it with events (or collections, or branches by keyword) returns the
    model's output per event, ``(n, K)`` float32 (``K = 1``: a binary
    classifier's probability of its label 1); :attr:`labels` names the classes.
    """

    def __init__(self, bundle: str | os.PathLike[str], threads: int | None = 1):
        nonserializable_attribute.__init__(self, ["predictor"])
        self.bundle = str(bundle_mod.resolve_dir(bundle))
        self.threads = threads
        self.meta = bundle_mod.read_meta(self.bundle)
        spec = self.spec
        if spec.preprocessor is None:
            raise bundle_mod.BundleError(
                f"model {spec.name!r} has no preprocessing, so it cannot take events: "
                "use coffea's numpy wrappers with the model's feature vectors"
            )

    # ------------------------------------------------------------ the bundle
    @property
    def spec(self) -> BundleSpec:
        """The bundle's contract (parsed again after unpickling; cheap)."""
        spec = self.__dict__.get("_spec")
        if spec is None:
            spec = self.__dict__["_spec"] = BundleSpec(self.meta)
        return spec

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state.pop("_spec", None)
        return state

    def _create_predictor(self) -> bundle_mod.Predictor:
        return bundle_mod.load(self.bundle, threads=self.threads)

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def branches(self) -> list[str]:
        """The raw branches the model reads (``Jet_pt``, ``nJet``, ...)."""
        return list(self.spec.raw_inputs)

    # ------------------------------------------------------------ events -> branches
    def inputs(self, *events: Any, **named: Any) -> dict[str, Any]:
        """The branches the model reads, looked up in events, collections or keyword arrays.

        Works on awkward and dask-awkward arrays alike (field access and ``num``
        are lazy on the latter). Raises :class:`~mlaas4hep.bundle_spec.InputError`
        naming a branch that is nowhere.
        """
        lib = self.get_awkward_lib(*events, *named.values()) or ak
        collections: dict[str, Any] = {}
        records: list[Any] = []
        for e in events:
            name = _collection_name(e)
            if name:
                collections[name] = e
            else:
                records.append(e)
        out: dict[str, Any] = {}
        for branch in self.branches:
            value = _lookup(branch, named, collections, records, lib)
            if value is None:
                prefix = branch.partition("_")[0]
                raise InputError(
                    f"model {self.spec.name!r} reads the branch {branch!r}, which is not in what was given: "
                    f"pass the events, or events.{prefix} (or {prefix}=...), or {branch}=..."
                )
            out[branch] = value
        return out

    # ------------------------------------------------------------ numpy_call_wrapper's interface
    def prepare_awkward(self, *events: Any, **named: Any) -> tuple[list[Any], dict[str, Any]]:
        return [], self.inputs(*events, **named)

    def validate_numpy_input(self, *args: Any, **arrays: Any) -> None:
        if args:
            raise InputError("give the branches by name, e.g. wrapper(Jet_pt=..., MET_pt=...), or the events")
        self.spec.check_raw_names(arrays)

    def numpy_call(self, *args: Any, **arrays: Any) -> np.ndarray:
        """Scores for raw branch values (numpy arrays; lists per event for jagged branches)."""
        out: np.ndarray = self.predictor.predict_raw(arrays)
        return out

    def _call_awkward(self, *events: Any, **named: Any) -> ak.Array:
        return ak.from_numpy(self.predictor.predict_raw(self.inputs(*events, **named)))

    def _call_dask(self, *events: Any, **named: Any) -> Any:
        return self._map_partitions("scores", self.inputs(*events, **named))

    # ------------------------------------------------------------ tensors
    def tensors(self, *events: Any, **named: Any) -> dict[str, Any]:
        """The model's input tensors (``{"features": (n, F)}``, or one per object group and its mask).

        What the server would compute from the raw branches: give them to a
        ``triton_wrapper``'s ``prepare_awkward`` to score on the server.
        """
        arrays = self.inputs(*events, **named)
        if self.get_awkward_lib(*arrays.values()) in (ak, None):
            return {k: ak.from_numpy(v) for k, v in self._tensors(arrays).items()}
        packed = self._map_partitions("tensors", arrays)
        return {name: packed[name] for name in self.spec.input_names}

    def _tensors(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.spec.preprocess(self.spec.raw_arrays(arrays))

    def _map_partitions(self, what: str, arrays: dict[str, Any]) -> Any:
        dak = extras.require("dask_awkward", "the coffea wrapper on dask-awkward events")
        import dask

        fn = _Partition(what, list(arrays))
        metas = [a._meta for a in arrays.values()]
        meta = fn(self, *metas)
        if "_delayed" not in self.__dict__:
            self.__dict__["_delayed"] = dask.delayed(self)
        return dak.map_partitions(
            fn, self.__dict__["_delayed"], *arrays.values(), label=f"mlaas4hep-{what}", meta=meta
        )

    def __repr__(self) -> str:
        return f"BundleWrapper({self.bundle!r}: model {self.spec.name!r} v{self.spec.version})"


class _Partition:
    """One partition's scores (or tensors): what ``map_partitions`` runs, typetracers included.

    dask-awkward first runs it on typetracers (arrays without data) to learn
    which columns it needs and what it returns: then it runs the model on
    length-one arrays that touch exactly the columns read, and hands back the
    result's type.
    """

    def __init__(self, what: str, names: list[str]):
        self.what, self.names = what, names

    def __call__(self, wrapper: BundleWrapper, *arrays: Any) -> ak.Array:
        typetracer = any(ak.backend(a) == "typetracer" for a in arrays)
        if typetracer:
            arrays = tuple(ak.typetracer.length_one_if_typetracer(a) for a in arrays)
        named = dict(zip(self.names, arrays))
        if self.what == "scores":
            out = ak.from_numpy(wrapper.predictor.predict_raw(named))
        else:
            tensors = wrapper._tensors(named)
            out = ak.zip({k: ak.from_numpy(v) for k, v in tensors.items()}, depth_limit=1)
        if typetracer:
            out = ak.Array(out.layout.to_typetracer(forget_length=True))
        return out


def _collection_name(array: Any) -> str | None:
    """``"Jet"`` for NanoEvents' ``events.Jet`` (its ``collection_name`` parameter), else None."""
    layout = getattr(array, "_meta", array)
    layout = getattr(layout, "layout", None)
    if layout is None:
        return None
    name = layout.purelist_parameter("collection_name")
    return name if isinstance(name, str) else None


def _lookup(
    branch: str, named: Mapping[str, Any], collections: Mapping[str, Any], records: list[Any], lib: Any
) -> Any:
    """``branch`` from keyword arrays, collections (``Jet`` for ``Jet_pt``) or event records; None if nowhere."""
    if branch in named:
        return named[branch]
    prefix, _, field = branch.partition("_")
    groups = {**collections, **{k: v for k, v in named.items() if _fields(v)}}
    if field and prefix in groups and field in _fields(groups[prefix]):
        return groups[prefix][field]
    for rec in records:
        fields = _fields(rec)
        if branch in fields:
            return rec[branch]
        if field and prefix in fields and field in _fields(rec[prefix]):
            return rec[prefix][field]
    if branch.startswith("n") and len(branch) > 1:  # nJet: the number of jets
        coll = branch[1:]
        if coll in groups:
            return lib.num(groups[coll], axis=1)
        for rec in records:
            if coll in _fields(rec):
                return lib.num(rec[coll], axis=1)
    return None


def _fields(array: Any) -> list[str]:
    fields = getattr(array, "fields", None)
    return list(fields) if fields else []
