"""ONNX export per framework, and the parity check that guards it.

Every bundle's ``model.onnx`` takes float32 features ``(n, F)`` (batch dimension
dynamic) and returns *probabilities*: ``(n, 1)`` for a binary classifier (the
probability of label 1), ``(n, K)`` for K classes. What each framework needs:

* PyTorch: ``torch.onnx.export`` of the model wrapped with the sigmoid/softmax
  when it emits logits (the legacy TorchScript exporter by default: a fraction of
  a second, against seconds for the dynamo exporter, ``onnx_exporter: dynamo``).
  An object-level model (``model(input_shapes)``) gets one named input per
  group, float32 ``(n, *shape)``, and one per object group's mask, bool ``(n,
  length)`` named ``<group>_mask``, in the order of :func:`onnx_inputs`;
* Keras 3: ``model.export(format="onnx")`` (torch backend, or tf2onnx under
  TensorFlow), the activation appended when the model emits logits; an
  object-level model gets the inputs of :func:`onnx_inputs` as PyTorch's does;
* scikit-learn: skl2onnx, without the ZipMap, keeping the probability output;
* XGBoost: onnxmltools' converter, likewise.

:func:`check_parity` then runs the ONNX model with onnxruntime on a sample of
validation events and compares it with the native model's probabilities; a
difference above the tolerance (:data:`TOLERANCE`, absolute, on probabilities)
fails the export loudly instead of shipping a model that serves other numbers.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from .errors import ExportError

#: Largest absolute difference allowed between ONNX and native probabilities.
#: float32 networks agree to ~1e-6; scikit-learn computes in float64 and tree
#: ensembles sum leaves in another order, hence the looser bound there.
TOLERANCE = {"pytorch": 1e-5, "keras": 1e-5, "sklearn": 1e-4, "xgboost": 1e-4}
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def onnx_inputs(input_shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], str]]:
    """The ONNX inputs of an object-level model: ``(name, per-event shape, "FP32" | "BOOL")``, in order.

    For each group in the layout's order: the group, then (object groups, whose
    shape is ``(length, features)``) its mask ``<group>_mask`` of shape ``(length,)``.
    """
    out: list[tuple[str, tuple[int, ...], str]] = []
    for g, shape in input_shapes.items():
        out.append((g, tuple(shape), "FP32"))
        if len(shape) == 2:
            out.append((f"{g}_mask", (shape[0],), "BOOL"))
    return out


def zero_feeds(input_shapes: Mapping[str, tuple[int, ...]], n: int) -> dict[str, np.ndarray]:
    """``n`` events of zeros for each input of :func:`onnx_inputs` (every object slot real)."""
    return {
        name: np.zeros((n, *shape), bool if kind == "BOOL" else np.float32)
        for name, shape, kind in onnx_inputs(input_shapes)
    }


def group_feeds(
    input_shapes: Mapping[str, tuple[int, ...]], inputs: Mapping[str, Any], masks: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The ONNX feeds of an object-level model from a batch's ``inputs`` and ``masks`` (NumPy)."""
    feeds = {}
    for name, _, kind in onnx_inputs(input_shapes):
        if kind == "BOOL":
            feeds[name] = np.ascontiguousarray(masks[name[: -len("_mask")]], bool)
        else:
            feeds[name] = np.ascontiguousarray(inputs[name], np.float32)
    return feeds


def torch_to_onnx(
    module,
    n_features: int,
    exporter: str = "legacy",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> bytes:
    """Export a PyTorch module with a dynamic batch dimension.

    It takes ``(n, n_features)`` float32 features, or, with ``input_shapes``,
    the tensors of :func:`onnx_inputs`, positionally in that order
    (:class:`mlaas4hep.train.torch_backend.GroupInputs` adapts a model to that).
    """
    import torch

    module = module.eval()
    if input_shapes:
        specs = onnx_inputs(input_shapes)
        names = [n for n, _, _ in specs]
        examples = tuple(
            torch.zeros((4, *shape), dtype=torch.bool if kind == "BOOL" else torch.float32)
            for _, shape, kind in specs
        )
    else:
        names, examples = [INPUT_NAME], (torch.zeros(4, n_features),)
    if exporter == "legacy":
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    examples,
                    cast(Any, buf),  # a file object works; the stubs only name paths
                    input_names=names,
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
                    dynamo=False,
                )
            return buf.getvalue()
        except Exception as err:  # the legacy exporter cannot trace everything: try dynamo
            warnings.warn(f"legacy ONNX export failed ({err}); trying the dynamo exporter", stacklevel=2)
    try:
        batch = torch.export.Dim("batch")
        prog = torch.onnx.export(
            module,
            examples,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamo=True,
            dynamic_shapes=tuple({0: batch} for _ in names),
            external_data=False,
            verbose=False,
        )
        assert prog is not None  # dynamo=True returns the program
        return prog.model_proto.SerializeToString()
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed: {type(err).__name__}: {err}") from err


def keras_to_onnx(model, path) -> bytes:
    """Export a Keras 3 model with ``model.export(format="onnx")``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(path), format="onnx", verbose=False)
    except TypeError:  # older Keras: no verbose argument
        model.export(str(path), format="onnx")
    except Exception as err:
        raise ExportError(f"Keras ONNX export failed: {type(err).__name__}: {err}") from err
    with open(path, "rb") as f:
        return f.read()


def sklearn_to_onnx(estimator, n_features: int, binary: bool) -> bytes:
    """skl2onnx conversion, reduced to one probabilities output."""
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        onx = to_onnx(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options={"zipmap": False},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    except Exception as err:
        raise ExportError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {type(err).__name__}: {err}"
        ) from err
    return probabilities_output(onx, binary).SerializeToString()


def xgboost_to_onnx(classifier, n_features: int, binary: bool) -> bytes:
    """onnxmltools conversion of an ``XGBClassifier``, reduced to one probabilities output."""
    try:
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = convert_xgboost(
            classifier, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], target_opset=15
        )
    except Exception as err:
        raise ExportError(
            f"onnxmltools cannot convert the XGBoost model: {type(err).__name__}: {err}"
        ) from err
    return probabilities_output(onx, binary).SerializeToString()


def probabilities_output(model, binary: bool):
    """Keep only the probability output of a converted classifier, as ``probabilities``.

    Converters return ``(label, probabilities)``; a binary classifier's
    probabilities are ``(n, 2)``, reduced here to column 1 as ``(n, 1)``.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    prob = next((o for o in graph.output if "prob" in o.name.lower()), graph.output[-1])
    src = prob.name + "_raw"
    nodes = list(graph.node)
    for node in nodes:  # free the name "probabilities" for the final output
        node.input[:] = [src if i == prob.name else i for i in node.input]
        node.output[:] = [src if o == prob.name else o for o in node.output]
    inits = list(graph.initializer)
    if binary:
        inits += [
            helper.make_tensor("_p_start", TensorProto.INT64, [1], [1]),
            helper.make_tensor("_p_end", TensorProto.INT64, [1], [2]),
            helper.make_tensor("_p_axis", TensorProto.INT64, [1], [1]),
        ]
        nodes.append(helper.make_node("Slice", [src, "_p_start", "_p_end", "_p_axis"], [OUTPUT_NAME]))
        width: Any = 1
    else:
        nodes.append(helper.make_node("Identity", [src], [OUTPUT_NAME]))
        dims = prob.type.tensor_type.shape.dim
        width = dims[1].dim_value if len(dims) > 1 and dims[1].dim_value else None
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", width])
    new_graph = helper.make_graph(
        nodes, graph.name, list(graph.input), [out], inits, value_info=list(graph.value_info)
    )
    opsets = list(model.opset_import)
    if not any(o.domain in ("", "ai.onnx") for o in opsets):  # tree converters may import ai.onnx.ml only
        opsets.append(helper.make_opsetid("", 15))
    new = helper.make_model(new_graph, opset_imports=opsets, producer_name=model.producer_name)
    new.ir_version = model.ir_version
    onnx.checker.check_model(new)
    return new


def check_parity(
    onnx_model: bytes | str,
    x: np.ndarray | Mapping[str, np.ndarray],
    expected: np.ndarray,
    atol: float,
    framework: str = "",
) -> dict[str, Any]:
    """Compare ONNX probabilities with ``expected`` on ``x``; raise :class:`ExportError` when off.

    ``x`` is the feature rows of a flat model, or the feeds of every named input
    (:func:`group_feeds`): the ONNX model must take exactly those inputs.
    Returns ``{"events", "max_abs_diff", "tolerance"}`` (and ``"inputs"``, the
    names fed, for a model of several inputs) for the bundle's metrics.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in sess.get_inputs()]
    if isinstance(x, Mapping):
        if sorted(x) != sorted(wanted):
            raise ExportError(
                f"the exported {framework} ONNX model takes inputs {wanted}, the parity check fed {list(x)}"
            )
        feeds = dict(x)
    else:
        feeds = {wanted[0]: np.ascontiguousarray(x, np.float32)}
    n = len(next(iter(feeds.values())))
    got = sess.run(None, feeds)[0]
    exp = np.asarray(expected, np.float32)
    exp = exp.reshape(n, -1)
    if got.shape != exp.shape:
        raise ExportError(
            f"the exported {framework} ONNX model returns shape {got.shape}, the native model {exp.shape}"
        )
    diff = float(np.max(np.abs(got - exp))) if n else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(
            f"ONNX export of the {framework} model disagrees with the native model: max |diff| = {diff:.3g} "
            f"over {n} validation events, tolerance {atol:g}"
        )
    out: dict[str, Any] = {"events": n, "max_abs_diff": diff, "tolerance": float(atol)}
    if len(feeds) > 1:
        out["inputs"] = wanted
    return out
