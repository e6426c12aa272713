"""Fixtures of the training tests: small train configurations over the shared sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlaas4hep import MODELS_DIR

from ..conftest import sample_config

ROOT = Path(__file__).resolve().parents[2]
MODELS = MODELS_DIR

#: Events per file read by most tests (4 files): small enough for ~1 s epochs on 2 cores.
NEVTS = 10_000


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """A decoded cache shared by the tests of a module (epoch 0 decodes once)."""
    return tmp_path_factory.mktemp("train-cache")


def train_config(data_dir: Path, cache: Path, model: str | Path, nevts: int = NEVTS, **training) -> dict:
    """A train configuration dict over the shared sample: ``model`` (a path, or a file of
    :data:`MODELS`), ``nevts`` events per file, ``training`` updating the defaults."""
    path = Path(model)
    if not path.is_absolute() and not path.exists():
        path = MODELS / model
    cfg = sample_config(data_dir, cache, nevts=nevts)
    cfg["model"] = str(path)
    cfg["training"] = {"epochs": 2, "batch_size": 512, "early_stopping": 0, "seed": 3, **training}
    return cfg


@pytest.fixture
def make_config(data_dir, shared_cache):
    """``make_config(model_file, **training)`` -> a train configuration dict (:func:`train_config`)."""

    def make(model: str | Path, nevts: int = NEVTS, cache: Path | None = None, **training) -> dict:
        return train_config(data_dir, cache or shared_cache, model, nevts, **training)

    return make
