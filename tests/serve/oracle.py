"""The expected answer of a served bundle, recomputed from its two files alone.

A serving test that compares the server's scores with
``mlaas4hep.bundle.Predictor`` compares the server with itself: both run the
same ``BundleSpec``, ``Preprocessor`` and ``GroupLayout``, so a wrong
normalisation, a padding slot in the wrong column or a mis-sorted jet would
pass. :class:`Oracle` imports nothing of ``mlaas4hep``. It reads the bundle's
``bundle.json`` as JSON and runs its ``model.onnx`` in an onnxruntime session
of its own, and does the preprocessing that ``bundle.json`` describes with
NumPy and awkward, written from the format rather than copied from the code:

* every feature ``v`` becomes ``(v - offset[b]) * scale[b]`` with the
  branch's constants from ``inputs.preprocessing`` (no constant: left as it
  is; ``normalize`` only names how they were derived, ``minmax`` as
  ``offset = min, scale = 1 / (max - min)``, ``standard`` as
  ``offset = mean, scale = 1 / std``). The arithmetic is float64, rounded to
  float32 once at the end;
* the flat vector ``x`` holds the ``flat`` branches, then each ``jagged``
  branch cut or padded to its length (``Jet_pt[0] ... Jet_pt[L-1]``), padded
  slots hold ``pad_value`` (after normalisation), and ``mask`` is True on
  them. Its column names must be ``inputs.features``; that check catches an
  oracle that reads the format differently from the writer;
* a grouped bundle (``inputs.preprocessing.groups``) gets its tensors event by
  event: a flat group is its branches' values; an object group takes each
  collection's objects that fit its jagged length, concatenated in the order
  of ``collections``, stably sorted by ``sort_by`` (normalised values,
  ``sort_order``), cut to ``length``, padded with ``pad_value``, and its mask
  ``<group>_mask`` (True on padding) follows it.

The ``selection`` is not applied (a server scores every event it is sent), and
``new_variables`` are refused: they are expressions in mlaas4hep's own
language, which an independent oracle cannot evaluate without importing it
(none of the serving tests' bundles has any).

The score is the model's ``outputs.onnx_output`` on those tensors, on the CPU.
When the server's input tensors are the oracle's (float32 features sent as
they are), both run the same ONNX graph in onnxruntime on the same numbers,
and the scores may differ only by the last bits of float32 arithmetic when a
batch is cut differently (a few 1e-8 on these sigmoid scores): tests allow
1e-6. Raw branches add the server's float32 normalisation against the
oracle's float64 one, a relative 6e-8 (half an ulp) per input feature, which
moves a score by about 1e-7: still inside 1e-6.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import onnxruntime as ort
import uproot

#: Absolute tolerance between the server's scores and the oracle's (see the module's docstring).
ATOL = 1e-6


class OracleError(Exception):
    """The oracle cannot recompute this bundle or these inputs (it never guesses)."""


class Oracle:
    """Expected scores of the bundle in directory ``path``: :meth:`score` on tensors, :meth:`score_raw` on branches.

    Attributes:
        meta (dict): ``bundle.json`` as parsed JSON.
        features (list of str): ``inputs.features``.
        labels (list of str): ``outputs.labels``.
        preprocessing (dict or None): ``inputs.preprocessing``.
        raw_inputs (list of str): the branches the preprocessing reads (flat first, then jagged).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / "bundle.json").read_text())
        ins, outs = self.meta["inputs"], self.meta["outputs"]
        self.features: list[str] = list(ins["features"])
        self.labels: list[str] = list(outs["labels"])
        self.input_name: str = ins.get("onnx_input") or "input"
        self.output_name: str = outs.get("onnx_output") or "output"
        self.tensor_names: list[str] = [t["name"] for t in ins.get("tensors") or []]
        self.preprocessing: dict[str, Any] | None = ins.get("preprocessing")
        pre = self.preprocessing or {}
        self.flat: list[str] = list(pre.get("flat", []))
        self.jagged: list[tuple[str, int]] = [(str(b), int(n)) for b, n in pre.get("jagged", [])]
        self.raw_inputs: list[str] = list(dict.fromkeys(self.flat + [b for b, _ in self.jagged]))
        if pre:
            self._check_preprocessing(pre)
        self.session = ort.InferenceSession(str(self.path / "model.onnx"), providers=["CPUExecutionProvider"])

    def _check_preprocessing(self, pre: Mapping[str, Any]) -> None:
        if pre.get("new_variables"):
            raise OracleError(
                f"{self.path}: the oracle does not evaluate new_variables {list(pre['new_variables'])}"
            )
        if pre.get("normalize", "none") not in ("minmax", "standard", "none"):
            raise OracleError(f"{self.path}: unknown normalize {pre.get('normalize')!r}")
        columns = self.flat + [f"{b}[{i}]" for b, n in self.jagged for i in range(n)]
        if columns != self.features:
            raise OracleError(
                f"{self.path}: the preprocessing makes columns {columns[:8]}... not inputs.features"
            )

    # ------------------------------------------------------------------ the model
    def score(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's output on its input tensors: ``(n, F)`` feature rows or a mapping of named tensors."""
        if not isinstance(inputs, Mapping):
            inputs = {self.input_name: np.asarray(inputs, dtype=np.float32)}
        out: np.ndarray = self.session.run([self.output_name], dict(inputs))[0]
        return out

    def score_raw(self, raw: Mapping[str, Any]) -> np.ndarray:
        """The model's output on raw branch values (numbers per event, lists per event for jagged branches)."""
        return self.score(self.tensors(raw))

    # ------------------------------------------------------------------ the preprocessing
    def tensors(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Raw branch values to the model's named input tensors."""
        if self.preprocessing is None:
            raise OracleError(f"{self.path}: the bundle has no preprocessing")
        missing = [b for b in self.raw_inputs if b not in raw]
        if missing:
            raise OracleError(f"raw inputs lack {missing}")
        if self.preprocessing.get("groups"):
            return self._grouped(raw)
        x, _ = self.flat_vector(raw)
        return {self.input_name: x}

    def flat_vector(self, raw: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(x, mask)``: float32 ``(n, F)`` in ``inputs.features`` order, and True on padded slots."""
        pad_value = float((self.preprocessing or {}).get("pad_value", 0.0))
        blocks, masks = [], []
        for b in self.flat:
            v = self.normalise(b, _flat(raw[b], b))
            blocks.append(v[:, None])
            masks.append(np.zeros((len(v), 1), bool))
        for b, length in self.jagged:
            v, pad = _padded(raw[b], length, b)
            v = np.where(pad, pad_value, self.normalise(b, v))
            blocks.append(v)
            masks.append(pad)
        x = np.concatenate(blocks, axis=1).astype(np.float32)
        return x, np.concatenate(masks, axis=1)

    def normalise(self, branch: str, values: np.ndarray) -> np.ndarray:
        """``(v - offset) * scale`` with the bundle's constants for ``branch``, in float64."""
        pre = self.preprocessing or {}
        offset = float(pre.get("offset", {}).get(branch, 0.0))
        scale = float(pre.get("scale", {}).get(branch, 1.0))
        return (np.asarray(values, dtype=np.float64) - offset) * scale

    def _grouped(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        pre = self.preprocessing
        assert pre is not None
        pad_value = float(pre.get("pad_value", 0.0))
        lengths = dict(self.jagged)
        out: dict[str, np.ndarray] = {}
        for g in pre["groups"]["groups"]:
            name, features, length = g["name"], list(g["features"]), g.get("length")
            if length is None:  # one vector per event: the flat branches' values
                cols = [self.normalise(f, _flat(raw[f], f)) for f in features]
                out[name] = np.stack(cols, axis=1).astype(np.float32)
                continue
            collections = list(g["collections"])
            union = len(collections) > 1
            per_collection = []  # each: list per event of (n_objects, features) float32 rows
            for c in collections:
                branches = [f"{c}_{f}" if union else f for f in features]
                slots = min(lengths[b] for b in branches)  # what x keeps of the collection
                lists = [_lists(raw[b], b) for b in branches]
                counts = {b: [len(e) for e in v] for b, v in zip(branches, lists)}
                if len({tuple(v) for v in counts.values()}) > 1:
                    raise OracleError(
                        f"group {name!r}: the branches {branches} have different counts per event"
                    )
                events = []
                for i in range(len(lists[0])):
                    cols = [
                        self.normalise(b, np.asarray(v[i][:slots], dtype=np.float64))
                        for b, v in zip(branches, lists)
                    ]
                    events.append(
                        np.stack(cols, axis=1).astype(np.float32)
                        if cols[0].size
                        else np.zeros((0, len(features)), np.float32)
                    )
                per_collection.append(events)
            n = len(per_collection[0])
            values = np.full((n, length, len(features)), pad_value, dtype=np.float32)
            mask = np.ones((n, length), dtype=bool)
            sort = features.index(g["sort_by"]) if g.get("sort_by") is not None else None
            sign = -1.0 if g.get("sort_order", "descending") == "descending" else 1.0
            for i in range(n):
                objects = [row for events in per_collection for row in events[i]]
                if sort is not None:  # a stable sort: ties keep the file order
                    objects = sorted(objects, key=lambda row: sign * float(row[sort]))
                objects = objects[:length]
                if objects:
                    values[i, : len(objects)] = np.stack(objects)
                    mask[i, : len(objects)] = False
            out[name] = values
            out[f"{name}_mask"] = mask
        names = self.tensor_names or list(out)
        if sorted(names) != sorted(out):
            raise OracleError(f"the groups make {sorted(out)} but inputs.tensors lists {names}")
        return {t: out[t] for t in names}

    # ------------------------------------------------------------------ ROOT files
    def read_root(
        self, path: str | Path, entry_start: int = 0, entry_stop: int | None = None
    ) -> dict[str, Any]:
        """The raw branches of entries ``[entry_start, entry_stop)`` of a ROOT file, read by uproot."""
        tree = (self.preprocessing or {}).get("tree") or "Events"
        with uproot.open(path) as f:
            return f[tree].arrays(
                self.raw_inputs, entry_start=entry_start, entry_stop=entry_stop, library="ak", how=dict
            )


def _flat(values: Any, name: str) -> np.ndarray:
    """One number per event, as float64."""
    v = ak.to_numpy(values) if isinstance(values, ak.Array) else np.asarray(values)
    if v.ndim != 1:
        raise OracleError(f"{name!r}: expected one number per event, got shape {v.shape}")
    return v.astype(np.float64)


def _lists(values: Any, name: str) -> list[list[float]]:
    """A list of numbers per event, as Python lists."""
    lists = values.to_list() if isinstance(values, ak.Array) else [list(e) for e in values]
    if any(not isinstance(e, list) for e in lists):
        raise OracleError(f"{name!r}: expected a list of numbers per event")
    return lists


def _padded(values: Any, length: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list per event cut or padded to ``length``: float64 ``(n, length)`` values and the pad mask."""
    arr = values if isinstance(values, ak.Array) else ak.Array(_lists(values, name))
    if arr.ndim != 2:
        raise OracleError(f"{name!r}: expected a list of numbers per event, got {arr.type}")
    padded = ak.pad_none(arr, length, axis=1, clip=True)
    pad = np.asarray(ak.to_numpy(ak.is_none(padded, axis=1)), dtype=bool)
    v = np.asarray(ak.to_numpy(ak.fill_none(padded, 0.0)), dtype=np.float64)
    return v, pad


def float32_lists(raw: Mapping[str, Any]) -> dict[str, list]:
    """Raw branch values rounded to float32, as a client sending FP32 tensors sends them."""
    out: dict[str, list] = {}
    for k, v in raw.items():
        lists = v.to_list() if isinstance(v, ak.Array) else list(v)
        out[k] = [
            np.asarray(e, np.float32).astype(np.float64).tolist()
            if isinstance(e, (list, tuple))
            else float(np.float32(e))
            for e in lists
        ]
    return out
