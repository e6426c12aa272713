"""Object-level models: ``model(input_shapes)``, ``forward(inputs, masks)``, multi-input ONNX.

The reference files (``tth_deepsets.py``, ``tth_transformer.py``) are checked
for what a physicist relies on (padding slots and the order of the jets do
not change the score), the ONNX adapter for the bundle contract (one named
input per group and per mask, dynamic batch, parity on every input), and the
whole run on the generated ttH sample with ``inputs:`` groups.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlaas4hep import MODELS_DIR, bundle
from mlaas4hep.train import ModelFileError, train
from mlaas4hep.train.userfile import build

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from mlaas4hep.train import export  # noqa: E402
from mlaas4hep.train.torch_backend import GroupInputs, Probabilities  # noqa: E402

SHAPES = {"jets": (10, 5), "event": (2,)}
REFERENCE = ["tth_deepsets.py", "tth_transformer.py"]
JETS = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"]


def _events(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random events with 0 to 10 real jets each (the mask is True on padding)."""
    rng = np.random.default_rng(seed)
    inputs = {
        "jets": rng.normal(size=(n, 10, 5)).astype(np.float32),
        "event": rng.normal(size=(n, 2)).astype(np.float32),
    }
    n_jets = rng.integers(0, 11, n)
    return inputs, {"jets": np.arange(10)[None, :] >= n_jets[:, None]}


def _scores(module, inputs, masks) -> np.ndarray:
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in inputs.items()}
        m = {k: torch.from_numpy(v) for k, v in masks.items()}
        return module(t, m).numpy().reshape(-1)


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_models_ignore_padding_and_jet_order(name):
    um = build(MODELS_DIR / name, 0, 2, input_shapes=SHAPES)
    assert um.input_shapes == SHAPES and um.output == "logits"
    m = um.model.eval()
    inputs, masks = _events(200)
    ref = _scores(m, inputs, masks)
    assert np.isfinite(ref).all()  # events without any jet included
    # padding slots may hold anything
    noisy = dict(inputs, jets=np.where(masks["jets"][..., None], 1e3, inputs["jets"]).astype(np.float32))
    np.testing.assert_allclose(_scores(m, noisy, masks), ref, atol=1e-5)
    # the jets are a set: permuting the slots (with their mask) changes nothing
    perm = np.random.default_rng(1).permutation(10)
    shuffled = dict(inputs, jets=np.ascontiguousarray(inputs["jets"][:, perm]))
    np.testing.assert_allclose(
        _scores(m, shuffled, {"jets": np.ascontiguousarray(masks["jets"][:, perm])}), ref, atol=1e-5
    )


@pytest.mark.parametrize("name", REFERENCE)
def test_onnx_has_one_input_per_group_and_mask(name):
    um = build(MODELS_DIR / name, 0, 2, input_shapes=SHAPES)
    m = um.model.eval()
    onx = export.torch_to_onnx(Probabilities(GroupInputs(m, SHAPES), True, True), 0, "legacy", SHAPES)
    graph = onnx.load_from_string(onx).graph
    got = [
        (i.name, i.type.tensor_type.elem_type, [d.dim_value or -1 for d in i.type.tensor_type.shape.dim])
        for i in graph.input
    ]
    bool_, float_ = onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT
    assert got == [("jets", float_, [-1, 10, 5]), ("jets_mask", bool_, [-1, 10]), ("event", float_, [-1, 2])]
    inputs, masks = _events(300, seed=2)  # another batch size than the export's example
    expected = 1 / (1 + np.exp(-_scores(m, inputs, masks)))
    parity = export.check_parity(onx, export.group_feeds(SHAPES, inputs, masks), expected, 1e-5, "PyTorch")
    assert parity["events"] == 300 and parity["inputs"] == ["jets", "jets_mask", "event"]
    # a parity check that leaves an input out fails instead of passing silently
    with pytest.raises(export.ExportError, match="takes inputs"):
        export.check_parity(onx, {"jets": inputs["jets"], "event": inputs["event"]}, expected, 1e-5)


def test_object_model_on_a_flat_dataset_says_what_is_missing(make_config, tmp_path):
    with pytest.raises(ModelFileError, match="inputs:"):
        train(make_config("tth_deepsets.py"), tmp_path / "o", show_progress=False)


@pytest.fixture
def groups_config(make_config):
    """A train configuration with ``inputs:`` (jets as a set, event features), 5k events per file."""

    def make(model: str, **training) -> dict:
        if "deepsets" in model:  # the rate tth_deepsets.py was tuned at
            training.setdefault("learning_rate", 2e-3)
        cfg = make_config(model, nevts=5_000, **training)
        del cfg["branches"], cfg["jagged"]
        cfg["inputs"] = {
            "jets": {"branches": JETS, "length": 10, "sort_by": "Jet_pt"},
            "event": {"branches": ["MET_pt", "nJet"]},
        }
        return cfg

    return make


def test_deepsets_streamed_and_in_memory_and_bundle(groups_config, tmp_path):
    cfg = groups_config("tth_deepsets.py", epochs=2, plots=False)
    a = train(cfg, tmp_path / "stream", show_progress=False)
    b = train(cfg, tmp_path / "memory", in_memory=True, show_progress=False)
    assert [e["source"] for e in a.history] == ["stream", "cache"]
    assert a.metrics["val_auc"] > 0.7 and b.metrics["val_auc"] > 0.7
    assert abs(a.metrics["val_auc"] - b.metrics["val_auc"]) < 0.02
    # the same validation events on both paths, with their groups
    assert len(a.val_labels) == len(b.val_labels) == a.metrics["n_val"]
    assert a.source.val.inputs["jets"].shape == (a.metrics["n_val"], 10, 5)
    assert a.source.val.masks["jets"].dtype == bool
    parity = a.metrics["onnx_parity"]
    assert parity["inputs"] == ["jets", "jets_mask", "event"] and parity["max_abs_diff"] <= 1e-5
    meta = json.loads((a.bundle_path / "bundle.json").read_text())
    assert [t["name"] for t in meta["inputs"]["tensors"]] == ["jets", "jets_mask", "event"]
    assert meta["inputs"]["tensors"][1] == {"name": "jets_mask", "datatype": "BOOL", "shape": [-1, 10]}
    assert meta["inputs"]["preprocessing"]["groups"]
    # the bundle's predictor, fed the named tensors, gives the native validation scores
    val = a.source.val.take(slice(0, 500))
    p = bundle.load(a.bundle_path).predict(export.group_feeds(SHAPES, val.inputs, val.masks))
    np.testing.assert_allclose(p[:, 0], a.val_scores[:500], atol=1e-5)
    # resuming refuses a checkpoint of another model on the same data
    state = json.loads((tmp_path / "stream" / "checkpoint" / "state.json").read_text())
    assert state["signature"]["input_shapes"] == {"jets": [10, 5], "event": [2]}


def test_transformer_trains_on_the_jets(groups_config, tmp_path):
    r = train(groups_config("tth_transformer.py", epochs=1, plots=False), tmp_path / "t", show_progress=False)
    assert r.metrics["val_auc"] > 0.65
    assert r.metrics["onnx_parity"]["inputs"] == ["jets", "jets_mask", "event"]
