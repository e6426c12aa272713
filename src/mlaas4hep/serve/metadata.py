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
