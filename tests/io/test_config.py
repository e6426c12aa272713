"""The dataset configuration: YAML, and MLaaS4HEP's files.txt / labels.txt / params.json trio."""

import dataclasses
import json
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from mlaas4hep.io import ConfigError, Dataset, DatasetConfig
from mlaas4hep.io.config import ConfigWarning, PhysicsConfig, RuntimeConfig


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


# --------------------------------------------------------------------- strict keys
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str, name: str = "dataset.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def test_a_typo_in_a_key_names_its_line_and_the_closest_key(tmp_path):
    # `branchs:` used to be ignored: the dataset then held every branch, MC truth included
    p = write(
        tmp_path,
        """
        tree: Events
        files:
          - {path: "ttH_*.root", label: 1, name: ttH}
          - {path: "ttbar_*.root", label: 0, name: ttbar}
        # the branches the model sees
        identifier: [run, luminosityBlock, event]
        branchs: [MET_pt, nJet, "Jet_*"]
        """,
    )
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == f"{p}, line 7: unknown key 'branchs' (did you mean 'branches'?)"


def test_every_unknown_key_is_listed_with_its_line(tmp_path):
    p = write(tmp_path, "files: [a.root]\nChunk_Size: 10\nworkers: 0\nflux_capacitor: 3\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value).splitlines() == [
        f"{p}, line 2: unknown key 'Chunk_Size' (did you mean 'chunk_size'?)",
        f"{p}, line 4: unknown key 'flux_capacitor' "
        "(the known keys are listed in the README, 'The dataset configuration')",
    ]


def test_unknown_key_in_a_file_group(tmp_path):
    p = write(
        tmp_path,
        """
        files:
          - {path: "ttH_*.root", label: 1}
          - path: "ttbar_*.root"
            lable: 0
        """,
    )
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == f"{p}, line 4: unknown key 'lable' in a file group (did you mean 'label'?)"


def test_a_key_given_twice_is_an_error(tmp_path):
    p = write(tmp_path, "files: [a.root]\nbranches: [MET_pt]\nseed: 1\nbranches: ['*']\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == f"{p}, line 4: key 'branches' is given twice (first on line 2)"


@pytest.mark.parametrize(
    "line, message",
    [
        ("chunk_size: abc", "chunk_size must be a positive integer, got 'abc'"),
        ("chunk_size: 0", "chunk_size must be a positive integer, got 0"),
        (
            "workers: two",
            "workers must be an integer >= 0 (0: decode in the calling process), "
            "or null for one per core, got 'two'",
        ),
        ("shuffle: maybe", "shuffle must be true or false, got 'maybe'"),
        ("timeout: -1", "timeout must be a positive number of seconds, got -1"),
        ("executor: fibers", "executor must be local, processes, threads or dask, got 'fibers'"),
        ("jagged: {Jet: six}", "jagged must map collection names to lengths >= 0, got {'Jet': 'six'}"),
        ("branches: {MET_pt: 1}", "branches must be a list or a comma-separated string, got {'MET_pt': 1}"),
        ("nevts: 0", "nevts must be a positive integer, or -1 for all events, got 0"),
    ],
)
def test_a_wrong_type_names_the_key_and_its_line(tmp_path, line, message):
    p = write(tmp_path, f"tree: Events\nfiles: [a.root]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == f"{p}, line 3: {message}"


def test_files_as_a_string_or_with_bad_values(tmp_path):
    p = write(tmp_path, "tree: Events\nfiles: data/*.root\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == (
        f'{p}, line 2: files must be a list of file groups, such as files: [{{path: "data/*.root", label: 1}}]; '
        "got the string 'data/*.root'"
    )
    p = write(tmp_path, "files:\n  - {path: a.root, label: 1}\n  - {path: b.root, label: signal}\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    assert str(err.value) == f"{p}, line 3: a file group's label must be an integer class id, got 'signal'"


def test_a_glob_without_match_names_its_group_line(tmp_path):
    p = write(tmp_path, "files:\n  - {path: a.root, label: 1}\n  - {path: 'nothing_*.root', label: 0}\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p).resolve_files()
    assert str(err.value) == f"{p}, line 3: the pattern {str(tmp_path / 'nothing_*.root')!r} matches no file"


def test_documented_configurations_use_only_known_keys():
    """The README's key list and the shipped examples read without error."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The dataset configuration", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = DatasetConfig.from_dict(yaml.safe_load(block))
    assert cfg.branches == ["MET_pt", "nJet", "Jet_*"] and cfg.workers == 2
    for name in ("dataset.yaml", "train.yaml"):
        DatasetConfig.from_yaml(ROOT / "examples" / name)


def test_dict_configs_are_strict_too():
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_dict({"files": ["a.root"], "selction": "nJet >= 4"})
    assert str(err.value) == "unknown key 'selction' (did you mean 'selection'?)"
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'branchs' \(did you mean 'branches'\?\)"
    ):
        DatasetConfig(branchs=["x"])


def test_training_sections_name_the_line_too(tmp_path):
    from mlaas4hep.train.config import split_config

    p = write(
        tmp_path,
        """
        files: [a.root]
        model: {path: m.py, nmae: x}
        training:
          epochs: 2
          batchsize: 64
        """,
    )
    with pytest.raises(ConfigError) as err:
        split_config(p)
    assert str(err.value) == f"{p}, line 2: unknown key 'nmae' in the model section (did you mean 'name'?)"
    p.write_text(p.read_text().replace("{path: m.py, nmae: x}", "m.py"))
    with pytest.raises(ConfigError) as err:
        split_config(p)
    assert (
        str(err.value)
        == f"{p}, line 5: unknown key 'batchsize' in the training section (did you mean 'batch_size'?)"
    )


# --------------------------------------------------------------------- params.json
def test_params_keys_that_no_layer_uses_warn(tmp_path):
    files = tmp_path / "files.txt"
    files.write_text("a.root\nb.root\n")
    params = tmp_path / "params.json"
    every_known = {
        "nevts": 10, "chunk_size": 5, "epochs": 2, "batch_size": 4, "shuffle": True, "branch": "Events",
        "identifier": "run,event", "selected_branches": "MET_pt", "exclude_branches": [],
        "redirector": "root://x", "nan": 0, "verbose": 1, "metrics": True, "training": "standard",
        "learning_rate": 0.01, "validation_fraction": 0.3, "seed": 1,
    }  # fmt: skip
    params.write_text(json.dumps(every_known))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetConfig.from_mlaas4hep(files, "1,0", params)
    params.write_text(json.dumps({**every_known, "chunksize": 100, "flux": 1}))
    with pytest.warns(ConfigWarning) as record:
        DatasetConfig.from_mlaas4hep(files, "1,0", params)
    assert [str(w.message) for w in record] == [
        f"{params}: key 'chunksize' is not used by mlaas4hep and is ignored (did you mean 'chunk_size'?)",
        f"{params}: key 'flux' is not used by mlaas4hep and is ignored",
    ]


def test_params_wrong_types_are_config_errors(tmp_path):
    files = tmp_path / "files.txt"
    files.write_text("a.root\n")
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_mlaas4hep(files, "1", {"chunk_size": "abc"})
    assert str(err.value) == "params: chunk_size must be an integer, got 'abc'"
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_mlaas4hep(files, "1", {"chunk_size": -5})
    assert str(err.value) == "params: chunk_size must be a positive integer, got -5"


# --------------------------------------------------------------------- physics / runtime
def test_physics_and_runtime_are_separate_parts_of_one_config(tmp_path):
    c = DatasetConfig(files=["a.root"], branches="MET_pt,nJet", workers=0, timeout=5, chunk_size=7)
    assert isinstance(c.physics, PhysicsConfig) and isinstance(c.runtime, RuntimeConfig)
    assert (c.physics.branches, c.physics.chunk_size) == (["MET_pt", "nJet"], 7)
    assert (c.runtime.workers, c.runtime.timeout, c.runtime.retry_budget) == (0, 5, 300.0)
    assert {f.name for f in dataclasses.fields(PhysicsConfig)}.isdisjoint(
        f.name for f in dataclasses.fields(RuntimeConfig)
    )
    # the flat view reads and writes the parts
    c.workers, c.branches = 3, ["MET_pt"]
    assert (c.runtime.workers, c.physics.branches) == (3, ["MET_pt"])
    # a copy is independent of its original
    d = dataclasses.replace(c, workers=0)
    assert (c.workers, d.workers, d.branches) == (3, 0, ["MET_pt"])
    d.seed = 9
    assert c.seed == 42 and d != c
    # every setting of both parts is a field and a keyword of the whole
    flat = [f.name for f in dataclasses.fields(DatasetConfig)]
    parts = [f.name for f in dataclasses.fields(PhysicsConfig) + dataclasses.fields(RuntimeConfig)]
    assert flat == parts + ["extra", "base_dir", "source"]
    assert DatasetConfig(**{k: getattr(c, k) for k in parts}) == c


def test_cache_keys_depend_on_physics_only():
    from mlaas4hep.io.dataset import CHUNK_FIELDS, SPECS_FIELDS

    cfg = {
        "files": [{"path": "a.root", "label": 1, "name": "s"}, {"path": "b.root", "label": 0}],
        "branches": ["MET_pt", "Jet_*"], "jagged": {"Jet": 6}, "pad_value": 0, "chunk_size": 5000,
        "selection": "nJet >= 4", "new_variables": {"HT": "sum(Jet_pt)"}, "workers": 0, "nevts": 1000,
    }  # fmt: skip
    a = DatasetConfig.from_dict(cfg)
    # the keys the caches had before the split: existing caches stay valid
    assert (a.digest(*SPECS_FIELDS), a.digest(*CHUNK_FIELDS)) == ("bbf8d47dab88de13", "af0a86fbde616e15")
    assert set(CHUNK_FIELDS) <= {f.name for f in dataclasses.fields(PhysicsConfig)}
    runtime = {"workers": 4, "executor": "processes", "cache_dir": None, "timeout": 3, "retries": 0,
               "retry_backoff": 2.0, "retry_budget": 10, "on_error": "skip", "cache_max_gb": 1}  # fmt: skip
    b = DatasetConfig.from_dict({**cfg, **runtime})
    assert b.digest(*CHUNK_FIELDS) == a.digest(*CHUNK_FIELDS)
    assert DatasetConfig.from_dict({**cfg, "jagged": {"Jet": 5}}).digest(*CHUNK_FIELDS) != a.digest(
        *CHUNK_FIELDS
    )
