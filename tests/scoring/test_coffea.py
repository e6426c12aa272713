"""``mlaas4hep.coffea.BundleWrapper`` on NanoEvents, and the coffea example against a real gRPC server.

The wrapper's scores and tensors are compared with :mod:`.conftest`'s
recomputation from ``bundle.json`` (numpy and a fresh onnxruntime session), on
coffea's eager, virtual and (when dask-awkward is installed) dask NanoEvents.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import bundle
from mlaas4hep.bundle_spec import InputError
from mlaas4hep.generate import generate

from ..serve.conftest import HTTP, install_copy
from ..serve.grpc_helpers import GrpcServerProcess
from .conftest import reference_features, reference_scores

nanoevents = pytest.importorskip("coffea.nanoevents")
from mlaas4hep.coffea import BundleWrapper  # noqa: E402  (needs coffea)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVENTS = 3_000


def _events(path, mode, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cross-references the generated sample lacks
        factory = nanoevents.NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=nanoevents.NanoAODSchema, mode=mode, **kw
        )
        return factory.events()


@pytest.fixture(scope="module")
def reference(trained_bundle, data_dir):
    with uproot.open(data_dir / "ttH_0.root") as f:
        t = f["Events"]
        return reference_features(trained_bundle, t)[:EVENTS], reference_scores(trained_bundle, t)[:EVENTS]


@pytest.mark.parametrize("mode", ["eager", "virtual"])
def test_scores_on_nanoevents(mode, trained_bundle, data_dir, reference):
    """events, collections, keywords: the same scores as the recomputation, event by event."""
    x, want = reference
    w = BundleWrapper(trained_bundle.parent)  # the run directory works too
    events = _events(data_dir / "ttH_0.root", mode, entry_stop=EVENTS)
    assert "nJet" not in events.fields  # NanoEvents has no counts: the wrapper counts events.Jet
    for got in (w(events), w(events.Jet, events.MET), w(events.MET, Jet=events.Jet)):
        assert isinstance(got, ak.Array)
        assert ak.to_numpy(got).shape == (EVENTS, 1) and ak.to_numpy(got).dtype == np.float32
        np.testing.assert_allclose(ak.to_numpy(got), want, rtol=0, atol=1e-6)
    tensors = w.tensors(events)
    assert list(tensors) == [w.spec.input_name]
    np.testing.assert_array_equal(ak.to_numpy(tensors[w.spec.input_name]), x)


def test_plain_arrays_and_numpy(trained_bundle, data_dir, reference):
    """uproot's arrays (branch names as fields), and branch values by keyword (numpy, lists per event)."""
    _, want = reference
    w = BundleWrapper(trained_bundle)
    assert w.labels == ["ttbar", "ttH"]
    assert w.branches == ["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"]
    with uproot.open(data_dir / "ttH_0.root") as f:
        arrays = f["Events"].arrays(w.branches, entry_stop=EVENTS)
    np.testing.assert_allclose(ak.to_numpy(w(arrays)), want, rtol=0, atol=1e-6)
    values = {b: ak.to_numpy(arrays[b]) if arrays[b].ndim == 1 else arrays[b].to_list() for b in w.branches}
    got = w(**{b: v for b, v in values.items()})
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_pickled_without_its_session(trained_bundle, data_dir, reference):
    w = BundleWrapper(trained_bundle)
    w(_events(data_dir / "ttH_0.root", "eager", entry_stop=10))  # the session exists now
    state = w.__getstate__()
    assert state["_predictor"] is None and "_spec" not in state
    again = pickle.loads(pickle.dumps(w))
    events = _events(data_dir / "ttH_0.root", "virtual", entry_stop=EVENTS)
    np.testing.assert_allclose(ak.to_numpy(again(events)), reference[1], rtol=0, atol=1e-6)


def test_errors(trained_bundle, data_dir, tmp_path):
    w = BundleWrapper(trained_bundle)
    events = _events(data_dir / "ttH_0.root", "eager", entry_stop=10)
    with pytest.raises(InputError) as err:
        w(events.Jet)
    assert str(err.value) == (
        "model 'sklearn_sgd' reads the branch 'MET_pt', which is not in what was given: "
        "pass the events, or events.MET (or MET=...), or MET_pt=..."
    )
    with pytest.raises(bundle.BundleError, match=r"has no bundle\.json"):
        BundleWrapper(tmp_path)
    features = json.loads((trained_bundle / "bundle.json").read_text())["inputs"]["features"]
    flat = bundle.write(
        tmp_path / "flat",
        trained_bundle / "model.onnx",
        None,
        ["ttbar", "ttH"],
        "flat",
        "onnx",
        features=features,
    )
    with pytest.raises(bundle.BundleError, match="has no preprocessing, so it cannot take events"):
        BundleWrapper(flat)


def test_dask_awkward(trained_bundle, data_dir, reference):
    """NanoEvents' dask mode: lazy, one task per partition, only the model's columns read."""
    dak = pytest.importorskip("dask_awkward")
    x, want = reference
    w = BundleWrapper(trained_bundle)
    events = _events(data_dir / "ttH_0.root", "dask", steps_per_file=3)
    scores = w(events)
    assert isinstance(scores, dak.Array) and scores.npartitions == 3
    (columns,) = dak.necessary_columns(scores).values()
    assert set(columns) == set(w.branches)
    np.testing.assert_allclose(ak.to_numpy(scores.compute())[:EVENTS], want, rtol=0, atol=1e-6)
    tensors = w.tensors(events.Jet, events.MET)
    np.testing.assert_array_equal(ak.to_numpy(tensors[w.spec.input_name].compute())[:EVENTS], x)


def test_example_against_the_server(trained_bundle, data_dir, tmp_path):
    """examples/coffea_processor.py: coffea's Runner, the wrapper and triton_wrapper on a real gRPC server."""
    pytest.importorskip("tritonclient.grpc")
    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, trained_bundle, "tth")
    srv = GrpcServerProcess(repo).start()
    try:
        files = [str(p) for p in generate(tmp_path / "data", events=3_000, seed=9, show_progress=False)]
        cmd = [sys.executable, os.path.join(ROOT, "examples", "coffea_processor.py"), *files]
        cmd += ["--bundle", str(trained_bundle), "--server", srv.grpc_url, "--chunk-size", "2000"]
        env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].split() == [
            "dataset",
            "events",
            "mean",
            "in",
            "process",
            "mean",
            "on",
            "server",
            "max",
            "|diff|",
        ]
        assert [ln.split()[:2] for ln in lines[1:3]] == [["ttH", "3000"], ["ttbar", "3000"]]
        assert lines[-1].startswith("in-process and server scores agree for every event")
        stats = HTTP.get(f"{srv.url}/v2/models/tth/stats").json()["model_stats"][0]
        assert stats["inference_count"] >= 6_000  # every event went to the server (in padded batches)
    finally:
        srv.stop()
