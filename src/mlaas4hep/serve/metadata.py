"""A served model as the Open Inference Protocol describes it (HTTP ``GET /v2/models/{name}``, gRPC ``ModelMetadata``).

Both front ends answer with the same description, built here from the model's
contract (:class:`~mlaas4hep.bundle_spec.BundleSpec`): every input tensor the
model takes, in its order (one ``[-1, F]`` feature tensor for a flat bundle;
for a bundle of object groups each group and its ``BOOL`` mask), the output,
and in ``parameters`` what clients of raw inputs need (labels, features, the raw
branches and their jagged lengths, the tree).
"""

from __future__ import annotations

from typing import Any

from ..bundle_spec import BundleSpec

#: The protocol extensions this server speaks (``GET /v2``, gRPC ``ServerMetadata``).
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "raw_inputs", "predict_root"]


def model_metadata(info: BundleSpec, versions: list[int]) -> dict[str, Any]:
    """The model metadata response of ``info``, whose model has ``versions``."""
    meta = info.meta
    return {
        "name": info.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.inputs],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.n_outputs]}],
        "parameters": {
            "version": str(info.version),
            "labels": info.labels,
            "features": info.features,
            "raw_inputs": info.raw_inputs,
            "jagged": dict(info.jagged),
            "tree": info.preprocessor.tree if info.preprocessor else None,
            "framework": meta.get("framework"),
            "description": meta.get("description", ""),
            "created": meta.get("created"),
            "metrics": meta.get("metrics", {}),
        },
    }


def model_summary(info: BundleSpec, versions: list[int], ready: bool) -> dict[str, Any]:
    """What TFaaS's ``/models`` and the web page show of a model: its params.json, and more."""
    meta = info.meta
    params = {
        "name": info.name,
        "model": "model.onnx",
        "labels": "labels.txt",
        "input_node": info.input_name,
        "output_node": info.output_name,
        "description": meta.get("description", ""),
        "timestamp": meta.get("created"),
    }
    params.update(
        {
            "version": info.version,
            "versions": versions,
            "ready": ready,
            "framework": meta.get("framework"),
            "label_names": info.labels,
            "n_features": len(info.features),
            "features": info.features,
            # the model's input tensors: one [-1, F] for a flat bundle, each group and mask for a grouped one
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in info.inputs],
            # a grouped bundle takes named tensors or raw branches, never a flat feature row
            "grouped": info.grouped,
            "raw_inputs": info.raw_inputs,
            "jagged": dict(info.jagged),
            "metrics": meta.get("metrics", {}),
            # the training data's normalisation constants: the web page builds plausible raw examples from them
            "normalization": {
                "normalize": pre.normalize,
                "offset": pre.offset,
                "scale": pre.scale,
                "pad_value": pre.pad_value,
            }
            if (pre := info.preprocessor)
            else None,
        }
    )
    return params
