"""The schema of ``bundle.json``: types, ranges and sizes, checked at upload and at load.

A bundle's description drives what the server allocates and computes for every
request (one float per feature per event, one column per jagged slot, a batcher
delay, expressions evaluated per event), so nothing in it is taken on trust:

* ``version``: an integer, 1 <= v < 2**63 (what JSON, orjson and every client
  can represent as a signed 64-bit integer);
* ``inputs.features``: 1 to :data:`MAX_FEATURES` strings;
* ``inputs.preprocessing``: ``jagged`` lengths 1 to :data:`MAX_JAGGED`, at most
  :data:`MAX_FEATURES` features in all, finite ``pad_value``/``offset``/``scale``,
  ``normalize`` one of :data:`NORMALIZE`, expressions that pass
  :func:`mlaas4hep.io.expr.check_cost`;
* ``outputs.labels``: 1 to :data:`MAX_LABELS` strings; ``shape`` dimensions
  ``-1`` (dynamic) or 1 to :data:`MAX_DIM`, the last at most :data:`MAX_LABELS`;
* ``inputs.preprocessing.groups`` (input groups): 1 to :data:`MAX_TENSORS`
  named groups over exactly the columns the preprocessing makes, lengths 1 to
  :data:`MAX_JAGGED`;
* ``inputs.tensors`` (bundles whose model takes several named tensors, e.g.
  one per object group and its mask): 1 to :data:`MAX_TENSORS` objects
  ``{"name", "datatype", "shape"}`` in the model's input order, names unique,
  ``datatype`` one of :data:`TENSOR_DATATYPES`, ``shape`` ``[-1, d1, ...]``
  (the batch first) with at most :data:`MAX_FEATURES` values per event in all;
* ``serving``: ``max_batch`` 1 to :data:`MAX_BATCH`, ``max_delay_ms`` 0 to
  :data:`MAX_DELAY_MS`.

:func:`check` is the one validator of ``bundle.json``: the server calls it at
upload and at load (through :func:`mlaas4hep.bundle.read_meta`). It raises
:class:`BundleError` naming the field and the rule it breaks; the server turns
that into a 400 at upload and into a "broken" entry (logged, listed in
``/models``, never served) at load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import Mlaas4hepError

MAX_VERSION = 2**63 - 1
MAX_FEATURES = 100_000
MAX_JAGGED = 10_000
MAX_LABELS = 10_000
MAX_DIM = 2**31 - 1
MAX_STR = 1024  # names, labels, branches
MAX_TEXT = 64 * 1024  # description
MAX_EXPRESSIONS = 256
MAX_BATCH = 65_536
MAX_DELAY_MS = 10_000.0
NORMALIZE = ("minmax", "standard", "none")
REQUIRED = ("name", "version", "framework", "created", "inputs", "outputs")
MAX_TENSORS = 256
#: Datatype names (those of the Open Inference Protocol) -> numpy dtype (little-endian, as its binary extension).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPE_NAMES = {v: k for k, v in DATATYPES.items()}
#: What a model's input tensor may be (``inputs.tensors``).
TENSOR_DATATYPES = ("FP32", "BOOL")


class BundleError(Mlaas4hepError, ValueError):
    """A bundle is incomplete, inconsistent or unsafe."""

    exit_status = 2  # a mistake in what the user wrote


class InputError(Mlaas4hepError, ValueError):
    """Inputs that do not fit a model: unknown or missing names, wrong datatype, shape or values."""


def _error(msg: str) -> BundleError:
    return BundleError(f"bundle.json {msg}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_version(v: Any, what: str = "'version'") -> int:
    """A model version: an integer with 1 <= v < 2**63."""
    if not is_int(v) or not 1 <= v <= MAX_VERSION:
        raise _error(f"{what} must be an integer from 1 to 2**63-1, got {_short(v)}")
    version: int = v
    return version


def check(meta: Any) -> None:
    """Check a parsed ``bundle.json`` (raises ``BundleError``)."""
    if not isinstance(meta, dict):
        raise _error("must hold an object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise _error(f"lacks {missing}")
    _str(meta["name"], "'name'")
    check_version(meta["version"])
    for key in ("framework", "created"):
        _str(meta[key], f"{key!r}")
    if not isinstance(meta.get("description", ""), str) or len(meta.get("description", "")) > MAX_TEXT:
        raise _error(f"'description' must be a string of at most {MAX_TEXT} characters")
    for key in ("metrics", "serving"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _error(f"{key!r} must be an object")
    inputs, outputs = meta["inputs"], meta["outputs"]
    if not isinstance(inputs, dict):
        raise _error("'inputs' must be an object")
    if not isinstance(outputs, dict):
        raise _error("'outputs' must be an object")
    feats = _str_list(inputs.get("features"), "'inputs.features'", MAX_FEATURES)
    labels = _str_list(outputs.get("labels"), "'outputs.labels'", MAX_LABELS)
    for part, what in ((inputs, "inputs"), (outputs, "outputs")):
        for key in ("onnx_input", "onnx_output", "datatype"):
            if part.get(key) is not None:
                _str(part[key], f"'{what}.{key}'")
        if part.get("shape") is not None:
            _shape(part["shape"], f"'{what}.shape'", MAX_FEATURES if what == "inputs" else MAX_LABELS)
    del labels
    if inputs.get("tensors") is not None:
        check_tensors(inputs["tensors"])
    if inputs.get("preprocessing") is not None:
        check_preprocessing(inputs["preprocessing"], len(feats))
    check_serving(meta.get("serving") or {}, "'serving'")


def check_tensors(tensors: Any) -> None:
    """``inputs.tensors``: the named input tensors of a model that takes several."""
    w = "'inputs.tensors'"
    if not isinstance(tensors, list) or not 1 <= len(tensors) <= MAX_TENSORS:
        raise _error(f"{w} must be a list of 1 to {MAX_TENSORS} tensors")
    seen: set[str] = set()
    total = 0
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            raise _error(f"{w}: tensor #{i} must be an object with name, datatype and shape")
        name = t.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_STR:
            raise _error(f"{w}: tensor #{i} needs a 'name' of 1 to {MAX_STR} characters")
        if name in seen:
            raise _error(f"{w}: tensor {name!r} appears twice")
        seen.add(name)
        if t.get("datatype") not in TENSOR_DATATYPES:
            raise _error(
                f"{w}: tensor {name!r} has datatype {_short(t.get('datatype'))}; "
                f"allowed: {list(TENSOR_DATATYPES)}"
            )
        shape: Any = t.get("shape")
        what = f"{w}: the shape of {name!r}"
        _shape(shape, what, MAX_FEATURES)
        if len(shape) < 2 or shape[0] != -1 or -1 in shape[1:]:
            raise _error(f"{what} must be [-1, d1, ...]: the batch first, then fixed dimensions")
        size = math.prod(shape[1:])
        total += size
        if total > MAX_FEATURES:
            raise _error(f"{w} make more than {MAX_FEATURES} values per event")


def check_serving(cfg: Mapping[str, Any], what: str = "serving settings") -> None:
    """``max_batch`` and ``max_delay_ms``, within their bounds (unknown keys are ignored)."""
    mb = cfg.get("max_batch")
    if mb is not None and (not is_int(mb) or not 1 <= mb <= MAX_BATCH):
        raise _error(f"{what}: 'max_batch' must be an integer from 1 to {MAX_BATCH}, got {_short(mb)}")
    md = cfg.get("max_delay_ms")
    if md is not None and (not is_number(md) or not 0 <= md <= MAX_DELAY_MS):
        raise _error(f"{what}: 'max_delay_ms' must be a number from 0 to {MAX_DELAY_MS:g}, got {_short(md)}")


def check_preprocessing(pre: Any, n_features: int | None = None) -> None:
    """The preprocessing description (what :meth:`Preprocessor.from_dict` reads)."""
    from .io import expr

    w = "'inputs.preprocessing"
    if not isinstance(pre, dict):
        raise _error(f"{w}' must be an object")
    flat = _str_list(pre.get("flat"), f"{w}.flat'", MAX_FEATURES, empty_ok=True)
    jagged = pre.get("jagged")
    if not isinstance(jagged, list) or len(jagged) > MAX_FEATURES:
        raise _error(f"{w}.jagged' must be a list of [branch, length] pairs")
    total = len(flat)
    for j in jagged:
        if not (isinstance(j, list) and len(j) == 2 and isinstance(j[0], str) and 0 < len(j[0]) <= MAX_STR):
            raise _error(f"{w}.jagged' must be a list of [branch, length] pairs, got {_short(j)}")
        if not is_int(j[1]) or not 1 <= j[1] <= MAX_JAGGED:
            raise _error(
                f"{w}.jagged': the length of {j[0]!r} must be from 1 to {MAX_JAGGED}, got {_short(j[1])}"
            )
        total += j[1]
    if total > MAX_FEATURES:
        raise _error(f"{w}' makes {total} features; at most {MAX_FEATURES} are allowed")
    if n_features is not None and total != n_features:
        raise _error(f"{w}' makes {total} features but 'inputs.features' lists {n_features}")
    if pre.get("groups") is not None:
        check_groups(pre["groups"], total)
    if "pad_value" in pre and not is_number(pre["pad_value"]):
        raise _error(f"{w}.pad_value' must be a finite number")
    if pre.get("normalize", "none") not in NORMALIZE:
        raise _error(f"{w}.normalize' must be one of {list(NORMALIZE)}, got {_short(pre.get('normalize'))}")
    for key in ("offset", "scale"):
        d = pre.get(key, {})
        if not isinstance(d, dict) or len(d) > MAX_FEATURES:
            raise _error(f"{w}.{key}' must be an object of branch: number")
        bad = [k for k, v in d.items() if not is_number(v)]
        if bad:
            raise _error(f"{w}.{key}' must hold finite numbers (not for {bad[:5]})")
    for key in ("tree",):
        if pre.get(key) is not None:
            _str(pre[key], f"{w}.{key}'")
    if pre.get("branches") is not None:
        _str_list(pre["branches"], f"{w}.branches'", MAX_FEATURES, empty_ok=True)
    new = pre.get("new_variables") or {}
    if not isinstance(new, dict) or len(new) > MAX_EXPRESSIONS:
        raise _error(f"{w}.new_variables' must be an object of at most {MAX_EXPRESSIONS} name: expression")
    sources = [(f"new variable {k!r}", v) for k, v in new.items()]
    if pre.get("selection") is not None:
        sources.append(("selection", pre["selection"]))
    for what, src in sources:
        if not isinstance(src, str) or len(src) > expr.MAX_SOURCE:
            raise _error(f"{w}': {what} must be an expression of at most {expr.MAX_SOURCE} characters")
        try:
            expr.parse(src)
        except Mlaas4hepError as err:
            raise _error(f"{w}': {what}: {err}") from None


def check_groups(groups: Any, width: int) -> None:
    """``inputs.preprocessing.groups``: the input groups cut out of the flat vector, bounded.

    The columns each group reads are checked when the layout is read back
    (``io.groups.GroupLayout.from_json``).
    """
    w = "'inputs.preprocessing.groups'"
    if not isinstance(groups, dict) or not isinstance(groups.get("groups"), list):
        raise _error(f"{w} must be an object with a list 'groups'")
    if not 1 <= len(groups["groups"]) <= MAX_TENSORS:
        raise _error(f"{w} must list 1 to {MAX_TENSORS} groups")
    if groups.get("width") != width:
        raise _error(f"{w} reads {_short(groups.get('width'))} columns but the preprocessing makes {width}")
    for g in groups["groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not 0 < len(g["name"]) <= MAX_STR:
            raise _error(f"{w}: each group must be an object with a 'name' of 1 to {MAX_STR} characters")
        _str_list(g.get("features"), f"{w}: the features of {g['name']!r}", MAX_FEATURES)
        length = g.get("length")
        if length is not None and (not is_int(length) or not 1 <= length <= MAX_JAGGED):
            raise _error(
                f"{w}: the length of {g['name']!r} must be from 1 to {MAX_JAGGED}, got {_short(length)}"
            )


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_STR:
        raise _error(f"{what} must be a string of at most {MAX_STR} characters")
    return v


def _str_list(v: Any, what: str, most: int, empty_ok: bool = False) -> list[str]:
    if not isinstance(v, list) or (not v and not empty_ok) or len(v) > most:
        raise _error(f"{what} must be a {'' if empty_ok else 'non-empty '}list of at most {most} strings")
    if not all(isinstance(s, str) and len(s) <= MAX_STR for s in v):
        raise _error(f"{what} must hold strings of at most {MAX_STR} characters")
    return v


def _shape(v: Any, what: str, last_max: int) -> None:
    if not isinstance(v, list) or not 1 <= len(v) <= 8:
        raise _error(f"{what} must be a list of integers (1 to 8 of them)")
    for d in v:
        if not is_int(d) or not (d == -1 or 1 <= d <= MAX_DIM):
            raise _error(f"{what} dimensions must be -1 (any) or from 1 to 2**31-1, got {_short(d)}")
    if v[-1] > last_max:
        raise _error(f"{what}: the last dimension must be at most {last_max}, got {v[-1]}")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
