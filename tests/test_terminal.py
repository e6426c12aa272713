"""Every command that shows progress, run on a real pseudo-terminal as a person would.

Progress bars draw (with their rate) only on a terminal; the same commands in a
pipe write no control characters at all.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from mlaas4hep import MODELS_DIR
from mlaas4hep.generate import generate

from .terminal import bar_lines, cli, on_pty, terminal_env

EVENTS = 3000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A directory with 1 + 1 small generated files and a dataset YAML over them."""
    d = tmp_path_factory.mktemp("pty")
    generate(d / "data", events=EVENTS, files=1, seed=11, show_progress=False)
    cfg = {
        "files": [
            {"path": "data/ttH_*.root", "label": 1, "name": "ttH"},
            {"path": "data/ttbar_*.root", "label": 0, "name": "ttbar"},
        ],
        "branches": ["MET_pt", "nJet", "Jet_pt", "Jet_btagDeepFlavB"],
        "jagged": {"Jet": 4},
        "chunk_size": 1000,
        "workers": 0,
        "cache_dir": str(d / "cache"),
    }
    (d / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    cfg["model"] = str(MODELS_DIR / "tth_mlp.py")
    cfg["training"] = {"epochs": 1, "batch_size": 256, "early_stopping": 0, "seed": 1}
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_generate_shows_a_bar_with_its_rate(tmp_path):
    rc, text = on_pty(cli("generate", "--out", str(tmp_path / "d"), "--events", "20000"))
    assert rc == 0, text
    assert bar_lines(text, "generate"), text
    assert "wrote 2 files, 40,000 events" in text


def test_specs_on_a_terminal(small):
    rc, text = on_pty(cli("specs", "dataset.yaml", "-o", "specs.json"), cwd=small)
    assert rc == 0, text
    assert bar_lines(text, "specs"), text
    assert (small / "specs.json").exists()


def test_stream_on_a_terminal(small):
    rc, text = on_pty(cli("stream", "dataset.yaml", "--epochs", "2", "--no-cache"), cwd=small)
    assert rc == 0, text
    assert bar_lines(text, "epoch 0") and bar_lines(text, "epoch 1"), text
    assert "epoch 1: 6,000 events" in text


def test_train_on_a_terminal(small, tmp_path):
    pytest.importorskip("torch")
    rc, text = on_pty(cli("train", "train.yaml", "-o", str(tmp_path / "run")), cwd=small)
    assert rc == 0, text
    assert bar_lines(text, "epoch 0"), text
    assert "val AUC" in text and (tmp_path / "run" / "bundle").is_dir()


def test_pipes_get_no_control_characters(tmp_path):
    r = subprocess.run(
        cli("generate", "--out", str(tmp_path / "d"), "--events", "2000"),
        capture_output=True,
        env=terminal_env(),
    )
    assert r.returncode == 0, r.stderr
    for stream in (r.stdout, r.stderr):
        assert b"\x1b" not in stream and "━".encode() not in stream
    assert r.stdout.decode().split() == [
        str(tmp_path / "d" / "ttH_0.root"),
        str(tmp_path / "d" / "ttbar_0.root"),
    ]


def test_ci_gets_no_bar_even_on_a_terminal(tmp_path):
    rc, text = on_pty(cli("generate", "--out", str(tmp_path / "d"), "--events", "2000"), CI="true")
    assert rc == 0 and "━" not in text and "wrote 2 files" in text
