"""A served model described in Triton's model configuration format.

Clients written for Triton read a model's configuration to learn how to call
it, and they read it literally:

* ``max_batch_size`` > 0 says that the first dimension of every input and
  output is the batch, and that ``dims`` leave it out. ``max_batch_size: 0``
  means "no batch dimension", so ``perf_analyzer`` then needs ``--shape``.
* ``dynamic_batching {preferred_batch_size: [...], max_queue_delay_microseconds: N}``
  says that the server merges requests. coffea's ``triton_wrapper`` sends
  requests of ``preferred_batch_size[0]`` rows (else ``max_batch_size``),
  padding the last one.
* data types are the ``DataType`` enum names: ``TYPE_FP32``, ``TYPE_INT64``...

:func:`model_config` builds that configuration, as the JSON object which
``GET /v2/models/{name}/config`` returns and which the gRPC ``ModelConfig`` RPC
carries as its ``config`` message. For one of our bundles it reads, e.g.::

    {"name": "tth", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
     "max_batch_size": 256,
     "input":  [{"name": "x", "data_type": "TYPE_FP32", "dims": [32]}],
     "output": [{"name": "probs", "data_type": "TYPE_FP32", "dims": [1]}],
     "dynamic_batching": {"preferred_batch_size": [256], "max_queue_delay_microseconds": 2000},
     "parameters": {"raw_inputs": {"string_value": "[{\"name\": \"MET_pt\", \"dims\": [1], ...}]"}, ...},
     ...}

The model's input tensors are listed in ``input``, in the model's order: the
feature tensor ``x`` of a flat bundle; every group and its mask (``jets``
``TYPE_FP32`` ``[10, 5]``, ``jets_mask`` ``TYPE_BOOL`` ``[10]``, ``event``...)
for a bundle of object groups. The raw branches the bundle's preprocessing
reads (``MET_pt``, ``Jet_pt``...), which the server also accepts instead of
the tensors, are described in ``parameters.raw_inputs`` (a
JSON list: name, ``dims`` ``[1]`` for a flat branch or ``[-1]`` for a jagged
one), *not* as extra entries of ``input``: Triton's clients require every
configured input to appear in the model metadata (perf_analyzer stops with "no
metadata found for input tensor"), and coffea's wrapper requires every input of
the metadata to be sent, so an extra input, even ``optional``, breaks one or
the other.

``max_batch_size`` is the batcher's ``max_batch`` (rows per onnxruntime call).
Requests with more rows are still served (they run alone), unlike Triton,
which refuses them. With batching off (``max_batch`` 1) there is no
``dynamic_batching`` block and ``max_batch_size`` is :data:`UNBATCHED_ROWS`, a
sensible request size, since every request then is one onnxruntime call.

:func:`serving_settings` goes the other way: it reads the serving settings out
of a Triton-format configuration given to a load request (``max_batch_size``,
``dynamic_batching.max_queue_delay_microseconds``), so that a client written for
Triton can tune our batcher.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..bundle_spec import BundleSpec

#: ``max_batch_size`` advertised when dynamic batching is off (``max_batch`` 1).
UNBATCHED_ROWS = 1024


def model_config(info: BundleSpec, max_batch: int, max_delay_s: float) -> dict[str, Any]:
    """Triton's model configuration of ``info`` served by a batcher of ``max_batch`` rows and ``max_delay_s``."""
    batching = max_batch > 1
    jagged = set(info.jagged)
    raw = [
        {"name": n, "data_type": "TYPE_FP32", "dims": [-1] if n in jagged else [1], "jagged": n in jagged}
        for n in info.raw_inputs
    ]
    cfg: dict[str, Any] = {
        "name": info.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": int(max_batch) if batching else UNBATCHED_ROWS,
        "input": [
            {
                "name": t.name,
                "data_type": f"TYPE_{t.datatype}",
                "format": "FORMAT_NONE",
                "dims": list(t.shape[1:]),
            }
            for t in info.inputs
        ],
        "output": [{"name": info.output_name, "data_type": "TYPE_FP32", "dims": [int(info.n_outputs)]}],
        "instance_group": [{"name": f"{info.name}_0", "kind": "KIND_CPU", "count": 1}],
        "parameters": {
            "version": {"string_value": str(info.version)},
            "labels": {"string_value": json.dumps(list(info.labels))},
            "raw_inputs": {"string_value": json.dumps(raw)},
        },
    }
    if batching:
        cfg["dynamic_batching"] = {
            "preferred_batch_size": [int(max_batch)],
            "max_queue_delay_microseconds": round(max_delay_s * 1e6),
        }
    return cfg


def serving_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Our serving settings (``max_batch``, ``max_delay_ms``) from a Triton-format or our own configuration.

    Triton's keys are translated (``max_batch_size`` -> ``max_batch``,
    ``dynamic_batching.max_queue_delay_microseconds`` -> ``max_delay_ms``); our
    own keys pass through; other Triton keys that describe the model rather than
    how to serve it (``name``, ``input``, ``platform``...) are ignored. The
    repository validates the values.
    """
    out: dict[str, Any] = {}
    triton_only = {
        "name",
        "platform",
        "backend",
        "input",
        "output",
        "version_policy",
        "instance_group",
        "parameters",
    }
    for key, value in cfg.items():
        if key == "max_batch_size":
            out["max_batch"] = value
        elif key == "dynamic_batching":
            if isinstance(value, Mapping) and "max_queue_delay_microseconds" in value:
                delay = value["max_queue_delay_microseconds"]
                out["max_delay_ms"] = float(delay) / 1000.0 if _number(delay) else delay
        elif key not in triton_only:
            out[key] = value
    return out


def _number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and v.isdigit()  # protobuf's JSON writes uint64 as a string
