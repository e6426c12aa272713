"""Bad model files fail with clear messages, before any event is read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlaas4hep.train import ModelFileError, TrainError, train
from mlaas4hep.train.split import validation_mask
from mlaas4hep.train.userfile import detect_framework


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "model.py"
    p.write_text(textwrap.dedent(body))
    return p


def _nothing_read(cache: Path) -> bool:
    """Neither the specs pass nor any decoded chunk has been written."""
    return not (cache / "specs").exists() and not (cache / "chunks").exists()


@pytest.mark.parametrize(
    "body, message",
    [
        ("def model(idim)\n    return None\n", "syntax error in model file"),
        (
            "import torch\ndef build(idim):\n    return torch.nn.Linear(idim, 1)\n",
            "defines no function 'model'",
        ),
        (
            "import torch\ndef model(idim):\n    return torch.nn.Linear(7, 1)\n",
            "cannot take the dataset's input",
        ),
        ("import torch\ndef model(idim):\n    return torch.nn.Linear(idim, 3)\n", "returns shape (2, 3)"),
        ("import nonexistent_package_xyz\ndef model(idim):\n    pass\n", "failed to import at line 1"),
        ("def model(idim):\n    return 42\n", "neither a PyTorch"),
    ],
    ids=["syntax", "no-model", "wrong-input", "wrong-output", "import-error", "unknown-type"],
)
def test_bad_model_file_fails_before_reading(tmp_path, make_config, body, message):
    cache = tmp_path / "cache"
    cfg = make_config(_write(tmp_path, body), cache=cache)
    with pytest.raises(ModelFileError) as err:
        train(cfg, tmp_path / "out", show_progress=False)
    assert message in str(err.value)
    assert "model.py" in str(err.value)
    assert _nothing_read(cache)


def test_wrong_input_message_names_both_sizes(tmp_path, make_config):
    cfg = make_config(
        _write(tmp_path, "import torch\ndef model(idim):\n    return torch.nn.Linear(7, 1)\n"),
        cache=tmp_path / "cache",
    )
    with pytest.raises(ModelFileError, match=r"gives 32 features"):
        train(cfg, tmp_path / "out", show_progress=False)


def test_estimator_without_partial_fit_needs_opt_in(tmp_path, make_config):
    body = "from sklearn.ensemble import RandomForestClassifier\ndef model():\n    return RandomForestClassifier()\n"
    cache = tmp_path / "cache"
    with pytest.raises(TrainError, match="accumulate: true"):
        train(make_config(_write(tmp_path, body), cache=cache), tmp_path / "out", show_progress=False)
    assert _nothing_read(cache)


def test_missing_model_key(data_dir, tmp_path):
    from tests.conftest import sample_config

    with pytest.raises(Exception, match="names no model file"):
        train(sample_config(data_dir, tmp_path / "c"), tmp_path / "out")


def test_framework_detection():
    import torch
    from sklearn.linear_model import SGDClassifier
    from xgboost import XGBClassifier

    assert detect_framework(torch.nn.Linear(2, 1)) == "pytorch"
    assert detect_framework(SGDClassifier()) == "sklearn"
    assert detect_framework(XGBClassifier()) == "xgboost"


def test_split_is_deterministic_and_independent_of_chunking():
    import numpy as np

    ids = np.stack([np.repeat(np.arange(4), 10_000), np.tile(np.arange(10_000), 4)], axis=1)
    m = validation_mask(ids, 0.2, seed=5)
    assert abs(m.mean() - 0.2) < 0.01
    # any chunking, any order: the same events are held out
    perm = np.random.default_rng(0).permutation(len(ids))
    parts = np.array_split(perm, 7)
    again = np.zeros(len(ids), bool)
    for p in parts:
        again[p] = validation_mask(ids[p], 0.2, seed=5)
    assert (again == m).all()
    assert (validation_mask(ids, 0.2, seed=6) != m).any()
