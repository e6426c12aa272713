"""Shared fixtures: generated samples, the real NanoAOD files, and real servers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlaas4hep.generate import generate
from mlaas4hep.localservers import NginxServer, XRootDServer, public_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
NANO_FILES = ["nano_dy.root", "nano_dimuon.root", "nano_dy_empty.root"]

#: Events per generated file in the shared sample (2 files per class).
SAMPLE_EVENTS = 20_000


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A world-readable directory holding the generated sample and the real NanoAOD files.

    ``ttH_{0,1}.root`` (label 1) and ``ttbar_{0,1}.root`` (label 0), 20k events
    each, plus ``nano_dy.root``, ``nano_dimuon.root``, ``nano_dy_empty.root``.
    """
    d = public_dir("mlaas4hep-data-")
    generate(d, events=SAMPLE_EVENTS, files=2, seed=7, show_progress=False)
    for name in NANO_FILES:
        if (SHARED_DATA / name).exists():
            shutil.copy(SHARED_DATA / name, d / name)
    for p in d.iterdir():
        p.chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd(data_dir) -> XRootDServer:
    """A real XRootD server exporting ``data_dir`` on 127.0.0.1."""
    srv = XRootDServer(data_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def http_server(data_dir) -> NginxServer:
    """nginx serving ``data_dir`` over HTTP with Range requests on 127.0.0.1."""
    srv = NginxServer(data_dir)
    yield srv
    srv.stop()


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def sample_config(data_dir: Path, cache_dir: Path | None = None, **overrides) -> dict:
    """A dataset configuration over the generated sample (signal = 1)."""
    cfg = {
        "tree": "Events",
        "files": [
            {"path": str(data_dir / "ttH_*.root"), "label": 1, "name": "ttH"},
            {"path": str(data_dir / "ttbar_*.root"), "label": 0, "name": "ttbar"},
        ],
        "branches": ["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"],
        "jagged": {"Jet": 6},
        "chunk_size": 5_000,
        "workers": 0,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "seed": 1,
    }
    cfg.update(overrides)
    return cfg
