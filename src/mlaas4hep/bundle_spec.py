"""What a bundle takes and gives: the one serving contract every front end checks inputs against.

Every way of using a bundle (the in-process :class:`~mlaas4hep.bundle.Predictor`,
the server's TFaaS API, the Open Inference Protocol over HTTP and gRPC,
``predict_root``) reads the model's interface from one :class:`BundleSpec`,
built once per bundle version from its checked ``bundle.json``:

* the **input tensors** (:class:`TensorSpec`): a flat bundle takes one, its
  ``onnx_input`` (FP32 ``[n, F]``, ``F`` the number of ``features``); a bundle
  of object groups lists them in ``inputs.tensors``, in the ONNX model's input
  order: one FP32 tensor per group (``jets`` ``[n, 10, 5]``, ``event``
  ``[n, 3]``) and a BOOL mask per object group (``jets_mask`` ``[n, 10]``);
* the **raw inputs**: the branches its one :class:`~mlaas4hep.io.Preprocessor`
  reads, which a client may send instead of the tensors (the server then
  normalises and pads them exactly as in training);
* the outputs: name, labels, width.

Three methods do the work, each in this one place:

* :meth:`BundleSpec.check`: named tensors in, checked tensors out (unknown and
  missing names, datatype, shape, one number of events);
* :meth:`BundleSpec.raw_arrays`: branch values as a client sends them (numbers,
  lists per event, numpy or awkward arrays) to what the preprocessor reads;
* :meth:`BundleSpec.preprocess`: preprocessor -> flat ``x`` and ``mask`` ->
  ``groups.apply(x, mask)`` (for a grouped bundle) -> the named tensors.

Whatever a client gets wrong raises :class:`InputError` (a ``ValueError``), which
the server answers with 400 (HTTP) or ``INVALID_ARGUMENT`` (gRPC).

Why a module beside :mod:`mlaas4hep.bundle` rather than methods of the
``Predictor``: the server needs a bundle's contract without its ONNX session
(model metadata, Triton's configuration, request checks, the web page; a model
may be evicted or unloaded), and the ``Predictor`` needs it to run. Both take it
from here, so each bundle is parsed once, and this module imports neither
onnxruntime nor anything of the server.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from .bundle_schema import DATATYPE_NAMES, DATATYPES, BundleError
from .bundle_schema import InputError as InputError  # defined with the bundle's other errors
from .errors import Mlaas4hepError
from .io.groups import GroupLayout
from .io.preprocess import Preprocessor


@dataclass(frozen=True)
class TensorSpec:
    """One named input tensor: ``shape`` starts with ``-1``, the batch (events)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    @property
    def per_event(self) -> int:
        """Values per event."""
        return math.prod(self.shape[1:])

    def describe(self) -> str:
        """The shape as the error messages write it, e.g. ``[n, 10, 5]``."""
        return "[" + ", ".join(["n", *(str(d) for d in self.shape[1:])]) + "]"


class BundleSpec:
    """The parsed ``bundle.json`` of one bundle version (already checked by :mod:`.bundle_schema`).

    ``name`` and ``version`` default to the bundle's own; a server gives those
    it serves the bundle under (a repository entry's directory names).
    """

    def __init__(self, meta: dict[str, Any], name: str | None = None, version: int | None = None):
        ins, outs = meta["inputs"], meta["outputs"]
        self.meta = meta
        self.name = str(meta["name"]) if name is None else name
        self.version = int(meta["version"]) if version is None else int(version)
        self.features: list[str] = list(ins["features"])
        self.labels: list[str] = list(outs["labels"])
        shape = outs.get("shape") or [-1, 1 if len(self.labels) <= 2 else len(self.labels)]
        self.n_outputs = int(shape[-1]) if isinstance(shape[-1], int) and shape[-1] > 0 else 1
        self.output_name = str(outs.get("onnx_output") or "output")
        pre = ins.get("preprocessing")
        try:
            self.preprocessor = Preprocessor.from_dict(pre) if pre else None
        except Mlaas4hepError as err:
            raise BundleError(f"bundle.json has an invalid preprocessing description: {err}") from None
        #: The input groups the preprocessing cuts out of its flat vector, if any.
        self.groups: GroupLayout | None = self.preprocessor.groups if self.preprocessor else None
        self.raw_inputs: list[str] = list(self.preprocessor.inputs) if self.preprocessor else []
        self.jagged: dict[str, int] = dict(self.preprocessor.jagged) if self.preprocessor else {}
        if ins.get("tensors"):
            self.inputs = [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in ins["tensors"]]
        else:
            name = str(ins.get("onnx_input") or "input")
            self.inputs = [TensorSpec(name, "FP32", (-1, len(self.features)))]
        self.grouped = bool(ins.get("tensors"))
        self.input_names = [t.name for t in self.inputs]
        self.input_name = self.input_names[0]
        self._by_name = {t.name: t for t in self.inputs}
        if self.groups is not None and self.grouped:
            self._check_groups()
        #: What one event makes the server allocate, at most (for request size limits).
        self.values_per_event = max(len(self.features), sum(t.per_event for t in self.inputs))
        self._orders: dict[tuple[str, ...], np.ndarray | None] = {}

    def _check_groups(self) -> None:
        """``inputs.tensors`` must be what the group layout makes: each group, then its mask."""
        assert self.groups is not None
        want: list[TensorSpec] = []
        shapes = self.groups.shapes()
        for g in self.groups.names:
            want.append(TensorSpec(g, "FP32", (-1, *shapes[g])))
            if self.groups.is_object(g):
                want.append(TensorSpec(f"{g}_mask", "BOOL", (-1, shapes[g][0])))
        if want != self.inputs:
            listed = [(t.name, t.datatype, list(t.shape)) for t in self.inputs]
            made = [(t.name, t.datatype, list(t.shape)) for t in want]
            raise BundleError(f"bundle.json 'inputs.tensors' lists {listed} but its input groups make {made}")

    # ------------------------------------------------------------ named tensors
    def wants_raw(self, names: Collection[str]) -> bool:
        """Whether inputs called ``names`` are raw branches (True) or the model's tensors (False)."""
        for n in names:  # a plain loop: this runs for every request
            if n in self._by_name:
                return False
        if self.preprocessor is None:
            first = next(iter(names), "")
            raise InputError(f"unknown input {first!r}: model {self.name!r} takes {self._takes()}")
        return True

    def _takes(self) -> str:
        if len(self.inputs) == 1:
            return f"one input {self.input_name!r} of shape {self.inputs[0].describe()}"
        return f"the inputs {self.input_names}"

    def check(self, arrays: Mapping[str, np.ndarray], cast: bool = False) -> dict[str, np.ndarray]:
        """The model's input tensors, checked: every name, datatype and shape, one number of events.

        ``cast`` converts numeric arrays to the expected datatype (the
        in-process ``Predictor`` does); a server refuses a wrong datatype.
        """
        if len(arrays) != len(self.inputs):
            self._name_error(arrays)
        for name in self.input_names:
            if name not in arrays:
                self._name_error(arrays)
        out: dict[str, np.ndarray] = {}
        events = -1
        for t in self.inputs:
            a = arrays[t.name]
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != t.dtype:
                if not (cast and a.dtype.kind in "biuf"):
                    got = DATATYPE_NAMES.get(a.dtype, str(a.dtype))
                    raise InputError(
                        f"input {t.name!r} has datatype {got} but the model expects {t.datatype}"
                    )
                a = a.astype(t.dtype)
            if a.ndim != len(t.shape) or a.shape[1:] != t.shape[1:]:
                raise InputError(
                    f"input {t.name!r} has shape {list(a.shape)} but the model expects {t.describe()}"
                )
            if events < 0:
                events = a.shape[0]
            elif a.shape[0] != events:
                counts = {n: int(v.shape[0]) for n, v in {**out, t.name: a}.items()}
                raise InputError(f"inputs have different numbers of events: {counts}")
            out[t.name] = a
        return out

    def _name_error(self, arrays: Mapping[str, Any]) -> NoReturn:
        """Raise the error that names the unknown or missing inputs."""
        unknown = [n for n in arrays if n not in self._by_name]
        if unknown:
            if len(self.inputs) == 1 and self.input_name in arrays:
                raise InputError(
                    f"model {self.name!r} takes one input {self.input_name!r}; got {len(arrays)}"
                )
            raw = f" or the raw inputs {self.raw_inputs}" if self.raw_inputs else ""
            raise InputError(f"unknown inputs {unknown}: model {self.name!r} takes {self.input_names}{raw}")
        missing = [n for n in self.input_names if n not in arrays]
        raise InputError(f"missing inputs {missing}; model {self.name!r} takes {self.input_names}")

    def column_order(self, keys: list[str]) -> np.ndarray | None:
        """Column permutation taking feature names ``keys`` to the model's order (None: same order)."""
        key = tuple(keys)
        if key in self._orders:
            return self._orders[key]
        if sorted(keys) != sorted(self.features) or len(set(keys)) != len(keys):
            missing = [f for f in self.features if f not in keys]
            extra = [k for k in keys if k not in self.features]
            raise InputError(
                f"keys do not match the features of model {self.name!r}: "
                f"missing {missing[:10]}, unknown {extra[:10]}"
            )
        pos = {k: i for i, k in enumerate(keys)}
        order = None if list(keys) == self.features else np.array([pos[f] for f in self.features])
        if len(self._orders) < 64:
            self._orders[key] = order
        return order

    # ------------------------------------------------------------ raw branches
    def raw_arrays(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Branch values as a client sends them, checked and converted for the preprocessor.

        A flat branch is numbers (a list or a numpy array ``[n]``, or ``[n, k]``),
        a jagged one a list per event (or an awkward array).
        """
        self.check_raw_names(values)
        arrays = {n: raw_array(n, v) for n, v in values.items()}
        lengths = {n: len(a) for n, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"raw inputs have different numbers of events: {lengths}")
        return arrays

    def check_raw_names(self, names: Collection[str]) -> None:
        """Raw branch names: every one the preprocessing reads, and no other."""
        if self.preprocessor is None:
            raise InputError(f"model {self.name!r} has no preprocessing: send {self._takes()}")
        unknown = [n for n in names if n not in self.raw_inputs]
        if unknown:
            raise InputError(
                f"unknown inputs {unknown}: model {self.name!r} takes "
                f"{self.input_name if len(self.inputs) == 1 else self.input_names!r} "
                f"or the raw inputs {self.raw_inputs}"
            )
        missing = [n for n in self.raw_inputs if n not in names]
        if missing:
            raise InputError(f"missing raw inputs {missing}; model {self.name!r} needs {self.raw_inputs}")

    def preprocess(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model's input tensors from raw branch arrays (see :meth:`raw_arrays`)."""
        if self.preprocessor is None:
            raise InputError(f"model {self.name!r} has no preprocessing: send {self._takes()}")
        try:
            x, mask, _ = self.preprocessor.transform(arrays, apply_selection=False)
        except Mlaas4hepError:
            raise
        except Exception as err:  # awkward/numpy errors on odd client data
            raise InputError(f"cannot preprocess the raw inputs: {type(err).__name__}: {err}") from None
        return self.from_features(x, mask)

    def from_features(self, x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The model's tensors from the preprocessor's flat ``x`` and ``mask``: ``groups.apply`` when grouped."""
        if self.groups is None:
            if self.grouped:
                raise InputError(
                    f"model {self.name!r} takes {self.input_names}, and its preprocessing has no "
                    "object groups to make them from raw branches: send the tensors"
                )
            return {self.input_name: x}
        inputs, masks = self.groups.apply(x, mask)
        named: dict[str, np.ndarray] = dict(inputs)
        named.update({f"{group}_mask": m for group, m in masks.items()})  # the ONNX input of a group's mask
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise BundleError(f"the object groups of model {self.name!r} do not make its inputs {missing}")
        return {n: named[n] for n in self.input_names}


def raw_array(name: str, value: Any) -> Any:
    """One raw branch: numpy ``[n]`` or ``[n, k]`` as it is, lists per event as an awkward array."""
    import awkward as ak

    if isinstance(value, np.ndarray):
        if value.ndim > 2:
            raise InputError(f"raw input {name!r} must have shape [n] or [n, k], got {list(value.shape)}")
        return value
    if isinstance(value, ak.Array):
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(e, (list, tuple)) for e in value):
        if not all(isinstance(e, (list, tuple)) for e in value):
            raise InputError(f"raw input {name!r}: 'data' mixes lists and numbers; send one list per event")
        counts = np.fromiter((len(e) for e in value), dtype=np.int64, count=len(value))
        flat = [v for e in value for v in e]
        try:
            content = np.asarray(flat, dtype=np.float64) if not flat else np.asarray(flat)
        except (ValueError, TypeError, OverflowError):
            content = np.empty((0, 0))
        if content.dtype.kind not in "biuf" or content.ndim != 1:
            raise InputError(f"raw input {name!r}: each event must be a list of numbers")
        offsets = np.zeros(len(value) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        layout = ak.contents.ListOffsetArray(
            ak.index.Index64(offsets), ak.contents.NumpyArray(content.astype(np.float64))
        )
        return ak.Array(layout)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as err:
        raise InputError(f"raw input {name!r}: expected numbers, one per event: {err}") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"raw input {name!r}: expected numbers, one per event")
    if arr.ndim > 2:
        raise InputError(f"raw input {name!r} must have shape [n] or [n, k], got {list(arr.shape)}")
    return arr
