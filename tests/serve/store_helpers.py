"""Small bundles for the repository's store tests (quick to upload, load and run)."""

from __future__ import annotations

from pathlib import Path

from mlaas4hep import bundle
from mlaas4hep.bundle_archive import pack_directory, read_archive

from .conftest import mlp_onnx


def small_bundle(path: Path, name: str = "m", n_in: int = 4, hidden: int = 8, seed: int = 3) -> Path:
    """A tiny flat bundle: an MLP on ``n_in`` features ``f0..``, labels ``b``/``s``."""
    return bundle.write(
        path,
        mlp_onnx(n_in, hidden=hidden, seed=seed),
        None,
        ["b", "s"],
        name=name,
        framework="onnx",
        features=[f"f{i}" for i in range(n_in)],
    )


def bundle_files(path: Path, onnx_model: bytes | None = None) -> dict[str, bytes]:
    """A bundle directory's files as an upload hands them to ``Repository.install``."""
    files = read_archive(pack_directory(path))
    if onnx_model is not None:
        files["model.onnx"] = onnx_model
    return files


def graph_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
    """An ONNX model (opset 17) from ``onnx.helper`` pieces."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _first_column_plus(n_in: int, extra: str, nodes: list, initializers: list) -> bytes:
    """``probs = x[:, :1] + extra`` where ``nodes`` compute ``extra`` (shape ``[1, 1]``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    return graph_bytes(
        [
            *nodes,
            helper.make_node("Slice", ["x", "c0", "c1", "c1"], ["col"]),
            helper.make_node("Add", ["col", extra], ["probs"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "c0"),
            numpy_helper.from_array(np.array([1], np.int64), "c1"),
            *initializers,
        ],
    )


def huge_constant_of_shape(n_in: int = 4) -> bytes:
    """A model that loads, then asks every run for a tensor of 2**40 floats (4 TB): it fails."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    zero = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=zero),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
    ]
    shape = numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")
    return _first_column_plus(n_in, "s", nodes, [shape])


def endless_loop(n_in: int = 4) -> bytes:
    """A model that loads, then loops 2**62 times on every run."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Add", ["acc", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1, 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 1]),
        ],
        [numpy_helper.from_array(np.ones((1, 1), np.float32), "one")],
    )
    nodes = [helper.make_node("Loop", ["trips", "keep", "start"], ["s"], body=body)]
    inits = [
        numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "keep"),
        numpy_helper.from_array(np.zeros((1, 1), np.float32), "start"),
    ]
    return _first_column_plus(n_in, "s", nodes, inits)
