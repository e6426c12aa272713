"""The command line: generate, specs and stream end to end, and helpful --help."""

import subprocess
import sys

import numpy as np
import pytest
import uproot
import yaml

from mlaas4hep.cli import main
from mlaas4hep.generate import generate_events


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("generate", "inspect", "specs", "stream", "root://"):
        assert word in out


def test_generate_specs_stream(tmp_path, capsys):
    out = tmp_path / "data"
    assert (
        main(
            [
                "generate",
                "--out",
                str(out),
                "--events",
                "3000",
                "--files",
                "1",
                "--seed",
                "5",
                "--compression",
                "lz4",
            ]
        )
        == 0
    )
    t = uproot.open(str(out / "ttH_0.root"))["Events"]
    assert t.num_entries == 3000 and "LZ4" in str(t.file.compression)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "files": [{"path": "data/ttH_*.root", "label": 1}, {"path": "data/ttbar_*.root", "label": 0}],
                "branches": ["MET_pt", "Jet_pt"],
                "jagged": {"Jet": 4},
                "chunk_size": 1000,
                "cache_dir": str(tmp_path / "cache"),
            }
        )
    )
    assert main(["specs", str(cfg), "-o", str(tmp_path / "s.json"), "--workers", "0"]) == 0
    assert main(["stream", str(cfg), "--epochs", "2", "--workers", "0", "--batch-size", "500"]) == 0
    text = capsys.readouterr().out
    assert "6,000 events" in text and "epoch 1:" in text and "label-1 fraction 0.500" in text


def test_errors_are_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"files": [{"path": str(tmp_path / "missing.root"), "label": 1}], "workers": 0})
    )
    assert main(["stream", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.root" in err


def test_generator_is_deterministic_and_physical():
    a = generate_events(20_000, True, np.random.default_rng(3))
    b = generate_events(20_000, True, np.random.default_rng(3))
    np.testing.assert_array_equal(a["MET_pt"], b["MET_pt"])
    bkg = generate_events(20_000, False, np.random.default_rng(4))
    import awkward as ak

    def nb(ev):
        return ak.to_numpy(ak.sum(ev["Jet"].btagDeepFlavB > 0.5, axis=1))

    def ht(ev):
        return ak.to_numpy(ak.sum(ev["Jet"].pt, axis=1))

    # signal: more b-tags and harder HT, but the distributions overlap
    assert nb(a).mean() > nb(bkg).mean() + 0.5
    assert ht(a).mean() > ht(bkg).mean()
    assert (nb(bkg) >= 3).mean() > 0.05 and (nb(a) <= 2).mean() > 0.1
    pt = a["Jet"].pt
    assert ak.all(pt[:, :-1] >= pt[:, 1:])  # jets ordered by pT, as in NanoAOD
    assert ak.min(ak.flatten(pt)) > 25 and ak.max(abs(ak.flatten(a["Jet"].eta))) < 2.5


def test_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "mlaas4hep.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "mlaas4hep" in r.stdout
