"""Real CMSSW-written NanoAOD (../shared/data): ~1,500 branches, bool/uint8/jagged, one empty file."""

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.cli import main
from mlaas4hep.io import Dataset
from mlaas4hep.io.inspect import inspect_file

from ..conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "nano_dy.root").exists(), reason="../shared/data missing")


def nano_config(data_dir, branches, files=("nano_dy.root",), **kw):
    cfg = {
        "tree": "Events",
        "files": [{"path": str(data_dir / f), "label": i % 2} for i, f in enumerate(files)],
        "branches": branches,
        "shuffle": False,
        "normalize": "none",
        "workers": 0,
        "cache_dir": None,
        "chunk_size": 16,
    }
    cfg.update(kw)
    return cfg


def test_inspect_lists_all_branches(data_dir):
    info = inspect_file(str(data_dir / "nano_dy.root"))
    (tree,) = [t for t in info["trees"] if t["name"] == "Events"]
    assert tree["entries"] == 40
    assert len(tree["branches"]) == 1499
    kinds = {b["name"]: b["kind"] for b in tree["branches"]}
    assert kinds["Jet_pt"] == "jagged" and kinds["nJet"] == "flat" and kinds["HLT_IsoMu24"] == "flat"


def test_inspect_cli(data_dir, capsys):
    assert main(["inspect", str(data_dir / "nano_dimuon.root"), "--filter", "Muon_*", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"Muon_pt"' in out and '"Jet_pt"' not in out


def test_wildcards_bool_and_uint8_equal_uproot(data_dir):
    branches = ["Jet_pt", "Muon_*", "HLT_IsoMu2*", "Electron_lostHits", "Electron_convVeto", "HTXS_njets25"]
    ds = Dataset.from_config(nano_config(data_dir, branches, jagged={"Jet": 4, "Muon": 3, "Electron": 2}))
    x, _ = ds.to_numpy()
    t = uproot.open(str(data_dir / "nano_dy.root"))["Events"]
    assert len(x) == 40
    names = ds.feature_names
    for name in ("HLT_IsoMu24", "HLT_IsoMu27", "HTXS_njets25"):
        np.testing.assert_array_equal(x[:, names.index(name)], t[name].array(library="np").astype(np.float32))
    assert t["Electron_lostHits"].typename == "uint8_t[]" and t["Muon_mediumId"].typename == "bool[]"
    assert t["HTXS_njets25"].typename == "uint8_t"
    for branch, length in (
        ("Muon_highPtId", 3),
        ("Muon_mediumId", 3),
        ("Electron_lostHits", 2),
        ("Electron_convVeto", 2),
        ("Jet_pt", 4),
    ):
        ref = ak.to_numpy(ak.fill_none(ak.pad_none(t[branch].array(), length, clip=True), 0)).astype(
            np.float32
        )
        cols = [names.index(f"{branch}[{i}]") for i in range(length)]
        np.testing.assert_array_equal(x[:, cols], ref)


def test_specs_equal_numpy(data_dir):
    ds = Dataset.from_config(
        nano_config(
            data_dir, ["MET_pt", "Jet_pt", "Muon_isGlobal"], files=("nano_dy.root", "nano_dimuon.root")
        )
    )
    specs = ds.specs
    vals = np.concatenate(
        [
            ak.to_numpy(ak.flatten(uproot.open(str(data_dir / f))["Events"]["Jet_pt"].array()))
            for f in ("nano_dy.root", "nano_dimuon.root")
        ]
    ).astype(np.float64)
    s = specs.stats["Jet_pt"]
    assert (s.min, s.max, s.count) == (vals.min(), vals.max(), len(vals))
    assert s.mean == pytest.approx(vals.mean(), rel=1e-12) and s.std == pytest.approx(vals.std(), rel=1e-9)
    njet = np.concatenate(
        [
            uproot.open(str(data_dir / f))["Events"]["nJet"].array(library="np")
            for f in ("nano_dy.root", "nano_dimuon.root")
        ]
    )
    assert specs.max_length("Jet_pt") == njet.max()
    assert specs.nevents == 80
    d = specs.to_dict()
    assert set(d) >= {"jdim", "minv", "maxv", "fkeys", "jkeys", "nans"}
    assert d["jdim"]["Jet_pt"] == njet.max()


def test_empty_file_yields_no_events(data_dir):
    ds = Dataset.from_config(
        nano_config(data_dir, ["MET_pt", "Jet_pt"], files=("nano_dy_empty.root",), jagged={"Jet": 3})
    )
    x, y = ds.to_numpy()
    assert x.shape == (0, 4) and len(y) == 0
    assert list(ds.batches(batch_size=8)) == []


def test_empty_file_among_others(data_dir):
    ds = Dataset.from_config(nano_config(data_dir, ["MET_pt"], files=("nano_dy.root", "nano_dy_empty.root")))
    x, _y = ds.to_numpy()
    assert len(x) == 40 and ds.specs.files[1]["entries"] == 0
