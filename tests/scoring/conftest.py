"""Fixtures for scoring files without a server: bundles, and scores recomputed independently.

:func:`reference_scores` does not use :class:`mlaas4hep.bundle.Predictor` nor the
:class:`~mlaas4hep.io.Preprocessor`: it reads the branches with uproot, applies
the preprocessing written in ``bundle.json`` with awkward and numpy (pad/clip,
``(v - offset) * scale``, the pad value) and runs ``model.onnx`` in a fresh
onnxruntime session.
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import bundle
from mlaas4hep.io import Dataset
from mlaas4hep.train import train

from ..conftest import sample_config
from ..serve.conftest import mlp_onnx


def reference_features(bundle_dir: Path, events: uproot.TTree) -> np.ndarray:
    """The model's ``(n, F)`` input for every entry of ``events``, from ``bundle.json``'s description."""
    meta = json.loads((Path(bundle_dir) / "bundle.json").read_text())
    pre = meta["inputs"]["preprocessing"]
    names = list(pre["flat"]) + [b for b, _ in pre["jagged"]]
    arrays = events.arrays(names, library="ak")
    off, sc = pre["offset"], pre["scale"]
    cols = []
    for b in pre["flat"]:
        v = ak.to_numpy(arrays[b]).astype(np.float32)
        cols.append(((v - np.float32(off.get(b, 0.0))) * np.float32(sc.get(b, 1.0)))[:, None])
    for b, length in pre["jagged"]:
        padded = ak.to_numpy(ak.fill_none(ak.pad_none(arrays[b], length, clip=True, axis=1), np.nan))
        v = padded.astype(np.float32)
        v = (v - np.float32(off.get(b, 0.0))) * np.float32(sc.get(b, 1.0))
        v[np.isnan(padded)] = np.float32(pre["pad_value"])
        cols.append(v)
    if not len(arrays):
        return np.zeros((0, len(meta["inputs"]["features"])), np.float32)
    return np.hstack(cols).astype(np.float32)


def reference_scores(bundle_dir: Path, events: str | Path | uproot.TTree) -> np.ndarray:
    """The bundle's scores for every entry of ``events`` (a file's ``Events`` tree, or the tree):
    ``model.onnx`` in a fresh onnxruntime session on :func:`reference_features`."""
    import onnxruntime as ort

    if not isinstance(events, uproot.TTree):
        with uproot.open(events) as f:
            return reference_scores(bundle_dir, f["Events"])
    x = reference_features(bundle_dir, events)
    sess = ort.InferenceSession(str(Path(bundle_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


@pytest.fixture(scope="session")
def trained_bundle(data_dir, tmp_path_factory) -> Path:
    """A bundle that ``mlaas4hep.train`` wrote (scikit-learn SGD, one epoch on 4 x 2,000 events)."""
    work = tmp_path_factory.mktemp("trained")
    cfg = sample_config(data_dir, work / "cache", nevts=2_000)
    cfg["model"] = str(Path(bundle.__file__).with_name("models") / "sklearn_sgd.py")
    cfg["training"] = {"epochs": 1, "batch_size": 512, "early_stopping": 0, "seed": 3, "plots": False}
    result = train(cfg, work / "run", show_progress=False)
    return Path(result.bundle_path)


@pytest.fixture(scope="session")
def multiclass_bundle(data_dir, tmp_path_factory) -> Path:
    """Three outputs (softmax) over the ttH sample's preprocessing; labels with a character to clean."""
    work = tmp_path_factory.mktemp("multiclass")
    ds = Dataset.from_config(sample_config(data_dir, None, nevts=2_000))
    return bundle.write(
        work / "b",
        mlp_onnx(ds.n_features, n_out=3, seed=5),
        ds.preprocessor,
        ["ttbar", "ttH", "tt+bb"],
        name="three",
        framework="onnx",
    )


@pytest.fixture(scope="session")
def nano_bundle(data_dir, tmp_path_factory) -> Path:
    """A bundle over real CMS NanoAOD (coffea's samples): muons and MET, Drell-Yan vs collision data."""
    if not (data_dir / "nano_dy.root").exists():
        pytest.skip("the real NanoAOD samples (../shared/data) are not there")
    work = tmp_path_factory.mktemp("nano")
    cfg = {
        "tree": "Events",
        "files": [
            {"path": str(data_dir / "nano_dy.root"), "label": 1, "name": "dy"},
            {"path": str(data_dir / "nano_dimuon.root"), "label": 0, "name": "data"},
        ],
        "branches": ["MET_pt", "nMuon", "Muon_pt", "Muon_eta", "Muon_phi"],
        "jagged": {"Muon": 2},
        "workers": 0,
        "cache_dir": None,
    }
    ds = Dataset.from_config(cfg)
    return bundle.write(
        work / "nano",
        mlp_onnx(ds.n_features, seed=11),
        ds.preprocessor,
        ["data", "dy"],
        name="nano",
        framework="onnx",
        identifier=["run", "luminosityBlock", "event"],
    )
