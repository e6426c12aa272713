"""Files that differ (real CMSSW NanoAOD: MC and collision data), and the configuration mistakes met there.

``nano_dy.root`` (Drell-Yan MC) has three ``Jet_*`` branches of generator truth
that ``nano_dimuon.root`` (data) lacks, as NanoAOD versions differ in their
``Jet_*`` branches: ``branches_policy`` decides, and a typo in ``jagged:`` or in
a branch pattern is told at once.
"""

import json
import logging
import subprocess
import sys

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from mlaas4hep.io import Dataset

from ..conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "nano_dy.root").exists(), reason="../shared/data missing")

DY = str(SHARED_DATA / "nano_dy.root")
DIMUON = str(SHARED_DATA / "nano_dimuon.root")
#: The Jet branches of the MC file that the data file lacks.
MC_ONLY = ["Jet_genJetIdx", "Jet_hadronFlavour", "Jet_partonFlavour"]


def config(**kw):
    cfg = {
        "tree": "Events",
        "files": [{"path": DY, "label": 1}, {"path": DIMUON, "label": 0}],
        "branches": ["Jet_*", "MET_pt"],
        "jagged": {"Jet": 4},
        "normalize": "none",
        "shuffle": False,
        "workers": 0,
        "cache_dir": None,
    }
    cfg.update(kw)
    return cfg


def cli(tmp_path, command, cfg, name="c.yaml", text=None):
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", command, name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, r.stdout, r.stderr


def test_strict_lists_every_difference_at_once(tmp_path):
    code, _, err = cli(tmp_path, "stream", config())
    assert code == 2
    assert err == (
        f"error: 1 of 2 files differ from the dataset's schema (as in 1 of 2 files, e.g. {DY!r}) in 3 branches: "
        f"{DIMUON!r}: no {', '.join(MC_ONLY)}\n"
        "set 'branches_policy: common' to use the branches every file has, or exclude these\n"
    )


def test_strict_with_one_difference_keeps_the_one_branch_message():
    ds = Dataset.from_config(config(branches=["Jet_pt", "Jet_hadronFlavour"]))
    with pytest.raises(KeyError, match="no branch matching 'Jet_hadronFlavour' in tree of file") as info:
        ds.schema  # noqa: B018
    assert type(info.value).__name__ == "BranchNotFoundError"


def test_common_uses_the_branches_every_file_has(caplog):
    with caplog.at_level(logging.WARNING, logger="mlaas4hep"):
        ds = Dataset.from_config(config(branches_policy="common"))
        x, y = ds.to_numpy()
    dy, dimuon = (uproot.open(f)["Events"] for f in (DY, DIMUON))
    jets = [b.name for b in dy.branches if b.name.startswith("Jet_") and b.name not in MC_ONLY]
    assert [b.name for b in dimuon.branches if b.name.startswith("Jet_")] == jets  # what both files have
    assert ds.schema.jagged == jets and ds.schema.flat == ["MET_pt"]
    assert ds.report.dropped_branches == {name: [DIMUON] for name in MC_ONLY}
    assert ds.report.summary()["dropped_branches"] == MC_ONLY
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "branches_policy: common: 3 selected branches left out, as not every file has them: "
        + ", ".join(f"{n} (1 of 2 files lack it)" for n in MC_ONLY)
    ]
    assert x.shape == (80, 1 + 4 * len(jets)) and y.tolist() == [1] * 40 + [0] * 40
    names = ds.feature_names
    for tree, rows in ((dy, slice(0, 40)), (dimuon, slice(40, 80))):
        for b in ("Jet_pt", "Jet_btagDeepB", "Jet_jetId"):
            ref = ak.to_numpy(ak.fill_none(ak.pad_none(tree[b].array(), 4, clip=True), 0)).astype(np.float32)
            np.testing.assert_array_equal(x[rows][:, [names.index(f"{b}[{i}]") for i in range(4)]], ref)
        np.testing.assert_array_equal(x[rows][:, names.index("MET_pt")], tree["MET_pt"].array(library="np"))


def test_common_on_the_command_line_warns_once(tmp_path):
    code, out, err = cli(tmp_path, "stream", config(branches_policy="common"))
    assert code == 0, err
    assert out.splitlines()[0] == f"2 files, 80 events, {1 + 4 * 33} features, labels ['0', '1']"
    assert err.count("branches_policy: common: 3 selected branches left out") == 1


def test_common_lists_the_dropped_branches_in_the_json_output(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(branches_policy="common")))
    r = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", "stream", "c.yaml", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dropped_branches"] == MC_ONLY and out["epochs"][0]["events"] == 80


def test_common_is_part_of_the_specs_key():
    strict = Dataset.from_config(config(branches=["Jet_pt"]))
    common = Dataset.from_config(config(branches=["Jet_pt"], branches_policy="common"))
    assert strict._specs_key() != common._specs_key()
    assert "branches_policy" not in Dataset.from_config(config()).config.to_dict()["extra"]


def test_branches_policy_is_checked(tmp_path):
    code, _, err = cli(tmp_path, "stream", config(branches_policy="union"))
    assert code == 2
    assert err == (
        "error: c.yaml, line 16: branches_policy must be strict (every file has every selected branch) "
        "or common (the branches all files share), got 'union'\n"
    )


def test_a_jagged_key_that_matches_nothing_is_an_error(tmp_path):
    cfg = config(branches_policy="common", jagged={"Jets": 6})
    code, _, err = cli(tmp_path, "stream", cfg)
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: c.yaml, line 11: jagged: 'Jets' matches no jagged collection or branch of the selection "
        "(did you mean 'Jet'?)"
    )
    code, _, err = cli(tmp_path, "stream", config(branches_policy="common", jagged={"Jet": 4, "Muon": 2}))
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: c.yaml, line 12: jagged: 'Muon' matches no jagged collection or branch of the selection; "
        "the selection's jagged collections: Jet"
    )


def test_a_jagged_key_may_name_a_branch():
    ds = Dataset.from_config(
        config(
            files=[{"path": DY, "label": 1}], branches=["Jet_pt", "Jet_eta"], jagged={"Jet_pt": 2, "Jet": 3}
        )
    )
    assert ds.n_features == 5


def test_a_pattern_that_matches_nothing_counts_every_branch(tmp_path):
    code, _, err = cli(
        tmp_path, "stream", config(files=[{"path": DY, "label": 1}], branches=["Jte_*", "MET_pt"])
    )
    assert code == 2
    assert err == (
        f"error: no branch matching 'Jte_*' in tree of file {DY!r}; 1,499 branches there; "
        "did you mean 'Jet_*' or 'SubJet_*' or 'FatJet_*'?\n"
    )


def test_invalid_yaml_says_line_and_column(tmp_path):
    code, _, err = cli(tmp_path, "stream", None, text="tree: Events\nbranches: Jet_pt: 3\n")
    assert code == 2
    assert err == "error: c.yaml, line 2, column 17: not valid YAML: mapping values are not allowed here\n"
    code, _, err = cli(tmp_path, "stream", None, text="files:\n  - {path: a.root, label: 1\nbranches: [x]\n")
    assert code == 2
    assert err == (
        "error: c.yaml, line 3, column 9: not valid YAML: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping, line 2)\n"
    )
