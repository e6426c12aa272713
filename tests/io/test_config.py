"""The dataset configuration: YAML, and MLaaS4HEP's files.txt / labels.txt / params.json trio."""

import json

import pytest

from mlaas4hep.io import ConfigError, Dataset, DatasetConfig


def test_yaml_config(tmp_path, data_dir):
    text = f"""
tree: Events
files:
  - {{path: "{data_dir}/ttH_*.root", label: 1, name: ttH}}
  - {{path: "{data_dir}/ttbar_0.root", label: 0, name: ttbar}}
branches: ["MET_pt", "Jet_*"]
exclude: ["Jet_hadronFlavour", "Jet_nConstituents"]
identifier: [run, luminosityBlock, event]
jagged: {{Jet: 4}}
pad_value: -1.0
normalize: standard
selection: "nJet >= 4"
new_variables: {{HT: "sum(Jet_pt)"}}
chunk_size: 7000
nevts: -1
shuffle: true
seed: 3
workers: 0
cache_dir: null
on_error: skip
"""
    p = tmp_path / "config.yaml"
    p.write_text(text)
    c = DatasetConfig.from_yaml(p)
    assert [u for u, _ in c.resolve_files()] == [
        f"{data_dir}/ttH_0.root",
        f"{data_dir}/ttH_1.root",
        f"{data_dir}/ttbar_0.root",
    ]
    assert c.label_list() == ["ttbar", "ttH"]
    ds = Dataset(c)
    names = ds.feature_names
    assert names[:2] == ["MET_pt", "HT"]
    assert "Jet_hadronFlavour[0]" not in names and "Jet_btagDeepFlavCvL[3]" in names
    assert len(names) == 2 + 7 * 4


def test_relative_paths_and_lfn_redirector(tmp_path):
    c = DatasetConfig.from_dict(
        {"files": [{"path": "data/x.root", "label": 0}, {"path": "/store/mc/x.root", "label": 1}]},
        base_dir=tmp_path,
    )
    urls = [u for u, _ in c.resolve_files()]
    assert urls == [str(tmp_path / "data/x.root"), "root://cms-xrd-global.cern.ch//store/mc/x.root"]


def test_mlaas4hep_trio(tmp_path, data_dir):
    files = tmp_path / "files.txt"
    files.write_text(f"# signal first\n{data_dir}/ttH_0.root\n{data_dir}/ttbar_0.root\n/store/user/x.root\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("# comments are skipped\n1\n0\n0\n")
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps(
            {
                "nevts": 1000,
                "chunk_size": 500,
                "epochs": 2,
                "batch_size": 100,
                "shuffle": False,
                "branch": "Events",
                "identifier": "run,event,luminosityBlock",
                "selected_branches": "MET_pt,nJet,Jet_pt",
                "exclude_branches": [],
                "redirector": "root://eos.cms:1094",
                "nan": -999,
                "verbose": 1,
                "training": "standard",
            }
        )
    )
    c = DatasetConfig.from_mlaas4hep(files, labels, params)
    assert [g.label for g in c.files] == [1, 0, 0]
    assert c.resolve_files()[2][0] == "root://eos.cms:1094//store/user/x.root"
    assert c.branches == ["MET_pt", "nJet", "Jet_pt"] and c.identifier == ["run", "event", "luminosityBlock"]
    assert (c.nevts, c.chunk_size, c.pad_value, c.shuffle) == (1000, 500, -999.0, False)
    assert c.extra["epochs"] == 2 and c.extra["batch_size"] == 100
    # comma-list labels and a label branch
    assert [g.label for g in DatasetConfig.from_mlaas4hep(files, "1,0,0", params).files] == [1, 0, 0]
    assert DatasetConfig.from_mlaas4hep(files, "isSignal", params).label_branch == "isSignal"
    with pytest.raises(ConfigError, match=r"3 files .* 2 labels"):
        DatasetConfig.from_mlaas4hep(files, "1,0", params)


def test_trio_reads_data(tmp_path, data_dir):
    files = tmp_path / "files.txt"
    files.write_text(f"{data_dir}/ttH_0.root\n{data_dir}/ttbar_0.root\n")
    params = {
        "nevts": 300,
        "chunk_size": 100,
        "branch": "Events",
        "selected_branches": ["MET_pt", "Jet_pt"],
        "shuffle": False,
    }
    ds = Dataset.from_mlaas4hep(files, "1,0", params)
    ds.config.cache_dir, ds.config.workers = None, 0
    x, y = ds.to_numpy()
    assert len(x) == 600 and y.tolist() == [1] * 300 + [0] * 300


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        DatasetConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("files: [ {label: 1} ]\n")
    with pytest.raises(ConfigError, match="needs a 'path'"):
        DatasetConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="jagged"):
        DatasetConfig(jagged={"Jet": -1})
