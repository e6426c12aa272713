"""Tensors of the Open Inference Protocol v2: JSON and the binary extension.

A request body is a JSON object, optionally followed by raw tensor bytes. When
the ``Inference-Header-Content-Length: N`` header is present, the first ``N``
bytes are the JSON header and the rest are the tensors, concatenated in input
order, each input announcing its length in ``parameters.binary_data_size``::

    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                 "parameters": {"binary_data_size": 24}}],
     "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}
    <24 bytes: 6 little-endian float32>

Binary inputs become numpy arrays that *view* the request body
(:func:`numpy.frombuffer`): no copy, no parse. JSON inputs carry ``data`` as a
flat (row-major) or nested list. Responses mirror this: outputs asked for with
``binary_data`` (or the request parameter ``binary_data_output``) are appended
as raw bytes after the JSON header, the others go as JSON ``data`` (encoded by
orjson straight from the numpy buffer).

Decoding makes the data plane's :class:`~mlaas4hep.serve.dataplane.InferRequest` (and the
:class:`OutputPrefs` of the reply); a malformed request raises
:class:`~mlaas4hep.serve.errors.InvalidRequest` with a precise message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..bundle_schema import DATATYPE_NAMES, DATATYPES
from .dataplane import InferRequest
from .errors import InvalidRequest

#: OIP datatype name <-> numpy dtype (the table of :mod:`mlaas4hep.bundle_schema`).
DTYPES = DATATYPES
NAMES = DATATYPE_NAMES
MAX_DIMS = 8
_JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class InputTensor:
    """One decoded input: ``data`` is a numpy array, or a nested list for jagged raw inputs."""

    name: str
    datatype: str
    shape: list[int]
    data: Any
    binary: bool = False


@dataclass(slots=True)
class OutputPrefs:
    """What the reply to an infer request holds: the outputs asked for, and which go binary."""

    outputs: list[str] | None = None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False

    def wants_binary(self, name: str) -> bool:
        return name in self.binary_outputs or self.binary_default


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header, checked against the body."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"Inference-Header-Content-Length must be an integer, got {value!r}") from None
    if n < 0 or n > body_size:
        raise InvalidRequest(
            f"Inference-Header-Content-Length {n} does not fit the body of {body_size} bytes"
        )
    return n


def parse_json(data: bytes | bytearray | memoryview, what: str = "request body") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise InvalidRequest(f"malformed JSON in the {what}: {err}") from None


#: Decoded binary-tensor headers by their bytes (see :func:`decode_request`), at most :data:`PLANS` of them.
_plans: dict[tuple[Any, ...], tuple[Any, ...]] = {}
PLANS = 256


def decode_request(
    body: bytes | bytearray, hlen: int | None, model: str, version: Any = None, ragged_ok: bool = False
) -> tuple[InferRequest, OutputPrefs]:
    """Decode an infer request for ``model`` (JSON, or JSON header + binary tensors).

    ``ragged_ok``: inputs may be lists of lists (the raw jagged branches of a model that preprocesses).

    A client sending binary tensors (perf_analyzer, tritonclient, CMSSW's SONIC)
    sends the same JSON header with every request of one shape. When every input
    is binary, what was learnt from a header (names, datatypes, shapes, offsets,
    the outputs asked for) is kept, keyed by the header's bytes and the body's
    length; the same header again skips the JSON parse and its checks, and only
    the arrays are made (views of the new body).
    """
    head = body[:hlen] if hlen is not None else body  # a copy of the header: orjson parses bytes fastest
    key = (bytes(head), len(body), model, version, ragged_ok) if hlen is not None else None
    plan = _plans.get(key) if key is not None else None
    if plan is None:
        request, prefs, plan = _decode(head, body, hlen, model, version, ragged_ok)
        if key is not None and plan is not None:
            if len(_plans) >= PLANS:
                _plans.clear()
            _plans[key] = plan
        return request, prefs
    views, outputs, binary, binary_default, rid = plan
    # np.ndarray over the buffer: the same view as frombuffer + reshape, in one call
    inputs = {name: np.ndarray(shape, dtype, body, offset) for name, dtype, offset, shape in views}
    outs = None if outputs is None else list(outputs)
    return InferRequest(model, inputs, version, outs, rid), OutputPrefs(
        None if outputs is None else list(outputs), set(binary), binary_default
    )


def _decode(
    head: bytes | bytearray,
    body: bytes | bytearray,
    hlen: int | None,
    model: str,
    version: Any,
    ragged_ok: bool,
) -> tuple[InferRequest, OutputPrefs, tuple[Any, ...] | None]:
    """:func:`decode_request` of a header not seen before; and its plan when every input is binary."""
    header = parse_json(head)
    if not isinstance(header, dict):
        raise InvalidRequest("the request must be a JSON object with 'inputs'")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    offset = hlen if hlen is not None else len(body)
    inputs: dict[str, Any] = {}
    views: list[tuple[str, Any, int, tuple[int, ...]]] | None = []
    for i, spec in enumerate(raw_inputs):
        t = _decode_input(i, spec, body, offset, ragged_ok)
        if t.name in inputs:
            raise InvalidRequest(f"input {t.name!r} appears twice")
        if t.binary:
            if views is not None:
                views.append((t.name, t.data.dtype, offset, tuple(t.shape)))
            offset += t.data.nbytes
        else:
            views = None
        inputs[t.name] = t.data
    if offset != len(body):
        raise InvalidRequest(
            f"the body holds {len(body) - offset} bytes that no input claims (check binary_data_size)"
        )
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("'parameters' must be an object")
    outputs, binary = None, set()
    if "outputs" in header:
        if not isinstance(header["outputs"], list):
            raise InvalidRequest("'outputs' must be a list of {\"name\": ...}")
        outputs = []
        for o in header["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidRequest("each requested output must be an object with a 'name'")
            outputs.append(o["name"])
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise InvalidRequest(f"parameters of output {o['name']!r} must be an object")
            if op.get("binary_data") is True:
                binary.add(o["name"])
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidRequest("'id' must be a string")
    binary_default = params.get("binary_data_output") is True
    prefs = OutputPrefs(outputs, binary, binary_default)
    plan = None
    if views is not None:
        plan = (
            tuple(views),
            None if outputs is None else tuple(outputs),
            frozenset(binary),
            binary_default,
            rid,
        )
    return InferRequest(model, inputs, version, None if outputs is None else list(outputs), rid), prefs, plan


def _decode_input(i: int, spec: Any, body: bytes | bytearray, offset: int, ragged_ok: bool) -> InputTensor:
    if not isinstance(spec, dict):
        raise InvalidRequest(f"input #{i} must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"input #{i} has no 'name'")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidRequest(
            f"input {name!r}: unsupported datatype {datatype!r} (supported: {', '.join(DTYPES)})"
        )
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
    ):
        raise InvalidRequest(
            f"input {name!r}: 'shape' must be a list of 1 to {MAX_DIMS} non-negative integers"
        )
    count = 1
    for d in shape:
        count *= d
    dtype = DTYPES[datatype]
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise InvalidRequest(f"input {name!r} has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise InvalidRequest(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)",
            )
        if offset + size > len(body):
            raise InvalidRequest(f"input {name!r}: the body ends before its {size} binary bytes")
        arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        return InputTensor(name, datatype, shape, arr, binary=True)
    if "data" not in spec:
        raise InvalidRequest(f"input {name!r} has no 'data' (nor binary_data_size)")
    data = spec["data"]
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: 'data' must be a list")
    if ragged_ok and len(shape) == 1 and data and isinstance(data[0], list):
        if len(data) != shape[0]:
            raise InvalidRequest(
                f"input {name!r}: 'data' holds {len(data)} events but the shape says {shape[0]}"
            )
        return InputTensor(name, datatype, shape, data)
    try:
        arr = np.asarray(data)
        if arr.dtype.kind not in "biuf":
            raise ValueError("it holds values that are not numbers")
        arr = arr.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidRequest(
            f"input {name!r}: 'data' is not a list of {datatype} numbers of shape {shape}: {err}"
        ) from None
    if arr.size != count:
        raise InvalidRequest(
            f"input {name!r}: 'data' holds {arr.size} values but shape {shape} needs {count}"
        )
    return InputTensor(name, datatype, shape, arr.reshape(shape))


def output_tensor(name: str, arr: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """The JSON description of an output, and its raw bytes when sent binary."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    t: dict[str, Any] = {"name": name, "datatype": NAMES[arr.dtype], "shape": list(arr.shape)}
    if binary:
        raw = arr.tobytes()
        t["parameters"] = {"binary_data_size": len(raw)}
        return t, raw
    t["data"] = arr.reshape(-1)
    return t, None


def encode_response(header: Any, blobs: list[bytes]) -> tuple[bytes, int | None]:
    """Body and JSON header length (``None`` when there is no binary part)."""
    js = orjson.dumps(header, option=_JSON_NUMPY)
    if not blobs:
        return js, None
    return b"".join([js, *blobs]), len(js)
