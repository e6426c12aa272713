"""Shared fixtures: generated samples, the real NanoAOD files, and real servers."""

from __future__ import annotations

import os

# OpenMP threads (PyTorch's, XGBoost's) sleep while they wait instead of spinning, in this
# process and in every process it starts, as under the `mlaas4hep` command (cli.py). Set before
# PyTorch loads: the tests train in this process, and the documents' scripts and the tests'
# subprocesses call train() outside the command; on CI's 2 cores, shared by the documents'
# lane and the servers, spinning threads took the cores from them (an in-process training of
# the ttH network: 10-11.5 s of CPU spinning, 3.8-4.5 s sleeping). The results are the same.
# A value already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
from pathlib import Path

import pytest
import yaml

from mlaas4hep import MODELS_DIR
from mlaas4hep.generate import generate
from mlaas4hep.localservers import NginxServer, XRootDServer, public_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
NANO_FILES = ["nano_dy.root", "nano_dimuon.root", "nano_dy_empty.root"]

#: Events per generated file in the shared sample (2 files per class).
SAMPLE_EVENTS = 20_000
#: Events per generated file in the small sample (1 file per class).
SMALL_EVENTS = 3000
#: The ``training:`` of the small sample's ``train.yaml``; a module's ``SMALL_TRAINING`` dict updates it.
SMALL_TRAINING = {"epochs": 1, "batch_size": 256, "early_stopping": 0, "seed": 1}


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


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """``ttH_0.root`` (label 1) and ``ttbar_0.root`` (label 0), 3000 events each, generated once."""
    d = tmp_path_factory.mktemp("small-data")
    generate(d, events=SMALL_EVENTS, files=1, seed=5, show_progress=False)
    return d


@pytest.fixture(scope="module")
def small(small_data, tmp_path_factory, request) -> Path:
    """A directory of the module's own: ``data/`` (a copy of :func:`small_data`), ``dataset.yaml``
    over it (relative paths, a decoded cache in ``cache/``) and ``train.yaml`` (the dataset, the
    reference network, :data:`SMALL_TRAINING` updated by the module's own ``SMALL_TRAINING``)."""
    d = tmp_path_factory.mktemp("small")
    shutil.copytree(small_data, d / "data")
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
    cfg["training"] = {**SMALL_TRAINING, **getattr(request.module, "SMALL_TRAINING", {})}
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    return d


def in_worker() -> bool:
    """Whether this session is one of pytest-xdist's workers (``make test`` runs the suite on
    several: ``pytest -n``)."""
    return "PYTEST_XDIST_WORKER" in os.environ


def is_document(item) -> bool:
    """Whether ``item`` is one document's test (tests/docs/test_docs.py)."""
    return getattr(item, "originalname", None) == "test_document_runs" and hasattr(item, "callspec")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's workers get each module's tests together, so that a module's fixtures (a
    server, a trained model, a container image) are made once; the documents' tests, each a
    long independent run, are spread one by one. (xdist's ``loadgroup`` would say the same with
    marks, but it renames tests in a way pytest 9 no longer sees.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order of the collection: the documents first

    class ModulesAndDocuments(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if "::test_document_runs[" in nodeid else nodeid.split("::", 1)[0]

    return ModulesAndDocuments(config, log)


def pytest_collection_modifyitems(config, items):
    """On xdist's workers the documents' tests come first, the longest first, so that no worker
    is left with one at the end."""
    if not in_worker():
        return
    from .docs.pool import LONGEST_FIRST

    def rank(item) -> int:
        doc = item.callspec.params["doc"]
        return LONGEST_FIRST.index(doc) if doc in LONGEST_FIRST else len(LONGEST_FIRST)

    items[:] = sorted((i for i in items if is_document(i)), key=rank) + [
        i for i in items if not is_document(i)
    ]


@pytest.fixture(scope="session", autouse=True)
def doc_pool(request, tmp_path_factory):
    """The documents that tests/docs runs, started on one lane with the session's first test
    (they are independent of every other test: see tests/docs/pool.py); None when no
    document test is selected, and on xdist's workers, where each document's test runs it."""
    from .docs.pool import DocPool, selected_documents

    docs = selected_documents(request.session.items)
    if not docs or in_worker():
        yield None
        return
    pool = DocPool(docs, tmp_path_factory.mktemp("docs"))
    pool.open_lanes(1)
    yield pool
    pool.close()


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
