"""Object-level Keras models: named inputs per group and mask, training, multi-input ONNX.

The counterpart of ``test_objects.py`` (whose events, shapes and train
configuration are reused) for a Keras ``model(input_shapes)``: the reference
``keras_deepsets.py`` is checked for the set properties, a whole run on the
generated ttH sample for the bundle contract (the inputs of
:func:`.export.onnx_inputs`, BOOL masks, onnxruntime equal to Keras), and a
model whose inputs are not the dataset's groups for the message it gets.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from mlaas4hep import MODELS_DIR, bundle
from mlaas4hep.train import ModelFileError, train
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.data import Part
from mlaas4hep.train.userfile import build, ensure_keras_backend

from .test_objects import SHAPES, _events, groups_config  # noqa: F401 (a fixture)

ensure_keras_backend()  # Keras on PyTorch when TensorFlow is absent
pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mlaas4hep.train import export  # noqa: E402
from mlaas4hep.train.keras_backend import KerasBackend  # noqa: E402

NAMES = ["jets", "jets_mask", "event"]


def _keras_scores(model, inputs, masks) -> np.ndarray:
    """The Keras model's probabilities (sigmoid of its logit), fed by input name."""
    logits = model.predict({**inputs, **{f"{g}_mask": m for g, m in masks.items()}}, verbose=0)
    return 1 / (1 + np.exp(-logits.reshape(-1)))


def _graph_inputs(path) -> list[tuple[str, int, list[int]]]:
    graph = onnx.load(str(path)).graph
    return [
        (i.name, i.type.tensor_type.elem_type, [d.dim_value or -1 for d in i.type.tensor_type.shape.dim])
        for i in graph.input
    ]


def test_reference_model_ignores_padding_and_jet_order():
    um = build(MODELS_DIR / "keras_deepsets.py", 0, 2, input_shapes=SHAPES)
    assert um.framework == "keras" and um.input_shapes == SHAPES and um.output == "logits"
    assert [t.name for t in um.model.inputs] == NAMES
    inputs, masks = _events(200)
    ref = _keras_scores(um.model, inputs, masks)
    assert np.isfinite(ref).all()  # events without any jet included
    noisy = dict(inputs, jets=np.where(masks["jets"][..., None], 1e3, inputs["jets"]).astype(np.float32))
    np.testing.assert_allclose(_keras_scores(um.model, noisy, masks), ref, atol=1e-5)
    perm = np.random.default_rng(1).permutation(10)
    shuffled = dict(inputs, jets=np.ascontiguousarray(inputs["jets"][:, perm]))
    got = _keras_scores(um.model, shuffled, {"jets": np.ascontiguousarray(masks["jets"][:, perm])})
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("mask_dtype", ["bool", "float32"])
def test_export_has_bool_masks_whatever_the_model_takes(tmp_path, mask_dtype):
    """A model taking float masks (1.0 on padding) still gets BOOL mask inputs in ONNX, cast in the graph."""
    f = tmp_path / "m.py"
    f.write_text(
        textwrap.dedent(f"""\
        import keras

        def model(input_shapes):
            event = keras.Input((2,), name="event")
            jets = keras.Input((10, 5), name="jets")
            mask = keras.Input((10,), name="jets_mask", dtype="{mask_dtype}")
            real = keras.ops.expand_dims(1.0 - keras.ops.cast(mask, "float32"), -1)
            pooled = keras.ops.sum(keras.layers.Dense(8)(jets) * real, axis=1)
            out = keras.layers.Dense(1)(keras.layers.Concatenate()([pooled, event]))
            return keras.Model([event, jets, mask], out)
        """)
    )
    um = build(f, 0, 2, input_shapes=SHAPES)  # inputs in another order than ONNX's: fed by name
    be = KerasBackend(um, TrainConfig(model=str(f)), 0, 2)
    inputs, masks = _events(300, seed=2)
    sample = Part(
        np.zeros((300, 0), np.float32), np.zeros(300, np.int64), np.ones(300, np.float32), inputs, masks
    )
    parity = be.export_onnx(tmp_path / "model.onnx", sample)
    assert parity["inputs"] == NAMES and parity["events"] == 300 and parity["max_abs_diff"] <= 1e-5
    bool_, float_ = onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT
    assert _graph_inputs(tmp_path / "model.onnx") == [
        ("jets", float_, [-1, 10, 5]),
        ("jets_mask", bool_, [-1, 10]),
        ("event", float_, [-1, 2]),
    ]
    # the scores are those of the Keras model; padding matters through the mask only
    np.testing.assert_allclose(be.scores(sample), _keras_scores(um.model, inputs, masks), atol=1e-6)


def test_keras_deepsets_trains_and_serves_its_named_inputs(groups_config, tmp_path):  # noqa: F811
    r = train(groups_config("keras_deepsets.py", epochs=2, plots=False), tmp_path / "k", show_progress=False)
    assert r.framework == "keras" and len(r.history) == 2
    assert [e["source"] for e in r.history] == ["stream", "cache"]
    assert r.metrics["val_auc"] > 0.7
    parity = r.metrics["onnx_parity"]
    assert parity["inputs"] == NAMES and parity["max_abs_diff"] <= 1e-5
    meta = json.loads((r.bundle_path / "bundle.json").read_text())
    assert meta["framework"] == "keras" and meta["native"] == ["model.keras"]
    assert [t["name"] for t in meta["inputs"]["tensors"]] == NAMES
    assert meta["inputs"]["tensors"][1] == {"name": "jets_mask", "datatype": "BOOL", "shape": [-1, 10]}
    # onnxruntime on the bundle's model equals Keras on the same validation events
    val = r.source.val.take(slice(0, 500))
    feeds = export.group_feeds(SHAPES, val.inputs, val.masks)
    sess = ort.InferenceSession(str(r.bundle_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_p = sess.run(None, feeds)[0][:, 0]
    np.testing.assert_allclose(onnx_p, _keras_scores(r.model, val.inputs, val.masks), atol=1e-5)
    # the bundle's predictor, fed the named tensors, gives the trainer's validation scores
    p = bundle.load(r.bundle_path).predict(feeds)
    np.testing.assert_allclose(p[:, 0], r.val_scores[:500], atol=1e-5)


def test_input_that_is_not_a_group_names_the_expected_inputs(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        textwrap.dedent("""\
        import keras

        def model(input_shapes):
            jets = keras.Input((10, 5), name="jet")
            mask = keras.Input((10,), name="jets_mask", dtype="bool")
            event = keras.Input((2,), name="event")
            pooled = keras.ops.sum(keras.layers.Dense(4)(jets), axis=1)
            return keras.Model([jets, mask, event], keras.layers.Dense(1)(pooled))
        """)
    )
    with pytest.raises(ModelFileError) as err:
        build(f, 0, 2, input_shapes=SHAPES)
    msg = str(err.value)
    assert "m.py" in msg and "['jet', 'jets_mask', 'event']" in msg
    assert "named ['jets', 'jets_mask', 'event']" in msg and "jets (n, 10, 5), event (n, 2)" in msg


def test_input_of_another_shape_is_named(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import keras\ndef model(input_shapes):\n"
        "    ins = [keras.Input((10, 4), name='jets'), keras.Input((10,), name='jets_mask'),"
        " keras.Input((2,), name='event')]\n"
        "    return keras.Model(ins, keras.layers.Dense(1)(ins[2]))\n"
    )
    with pytest.raises(
        ModelFileError, match=r"input 'jets' of shape \(None, 10, 4\); the dataset gives \(n, 10, 5\)"
    ):
        build(f, 0, 2, input_shapes=SHAPES)


def test_flat_model_with_a_logit_output_exports(tmp_path):
    """The probabilities wrapper is shared with flat models, whose export needed it called first too."""
    f = tmp_path / "flat.py"
    f.write_text(
        "import keras\ndef model(idim):\n    return keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1)])\n"
    )
    um = build(f, 6, 2)
    assert um.output == "logits"
    be = KerasBackend(um, TrainConfig(model=str(f)), 6, 2)
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    parity = be.export_onnx(tmp_path / "model.onnx", Part(x, np.zeros(50, np.int64), np.ones(50, np.float32)))
    assert parity["events"] == 50 and parity["max_abs_diff"] <= 1e-5 and "inputs" not in parity
    ((_, dtype, shape),) = _graph_inputs(tmp_path / "model.onnx")  # one input, its name Keras's
    assert dtype == onnx.TensorProto.FLOAT and shape == [-1, 6]
