"""Fixtures for the inference service: a real bundle, and real servers on loopback.

``tth_bundle`` trains nothing: it builds the preprocessing from the generated
ttH/ttbar sample (the real specs pass) and a small MLP whose weights are drawn
from a fixed seed, written as ONNX with ``onnx.helper``. Its expected scores come
from :class:`~.oracle.Oracle` (onnxruntime on ``model.onnx`` and the preprocessing
of ``bundle.json`` recomputed with NumPy), never from the server's own ``Predictor``. ``server`` runs
``python -m mlaas4hep.serve`` in a subprocess on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlaas4hep import bundle
from mlaas4hep.io import Dataset
from mlaas4hep.localservers import free_port

from ..conftest import sample_config
from .oracle import Oracle

TOKEN = "test-token-0123456789"
#: One shared client: a new httpx.Client per request (httpx.get) costs tens of ms for its SSL context.
HTTP = httpx.Client(timeout=30)
#: Without keep-alive: each request opens a new connection (to reach every worker process).
HTTP_NEW = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
RAW_EVENTS = 200


def mlp_onnx(n_in: int, hidden: int = 32, seed: int = 3, n_out: int = 1) -> bytes:
    """A (n_in -> hidden -> relu -> n_out -> sigmoid/softmax) MLP as ONNX bytes, weights from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(n_out, np.float32)
    last = (
        helper.make_node("Sigmoid", ["z"], ["probs"])
        if n_out == 1
        else helper.make_node("Softmax", ["z"], ["probs"], axis=1)
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["z0"]),
            helper.make_node("Add", ["z0", "b2"], ["z"]),
            last,
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", n_out])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class BundleInfo:
    path: Path
    oracle: Oracle  # the expected scores, from the bundle's files alone
    x: np.ndarray  # feature rows of the sample
    raw: dict  # raw branch values of RAW_EVENTS events of ttH_0.root, read by uproot (jagged as lists of lists)
    data_dir: Path

    def raw_inputs(self) -> list[dict]:
        """:attr:`raw` as the ``inputs`` of a v2 JSON request: one FP64 tensor per branch."""
        return [
            {"name": k, "datatype": "FP64", "shape": [RAW_EVENTS], "data": v} for k, v in self.raw.items()
        ]


@pytest.fixture(scope="session")
def tth_bundle(data_dir, tmp_path_factory) -> BundleInfo:
    work = tmp_path_factory.mktemp("bundle")
    ds = Dataset.from_config(sample_config(data_dir, work / "cache", workers=0))
    pre = ds.preprocessor
    path = bundle.write(
        work / "tth",
        mlp_onnx(len(ds.feature_names)),
        pre,
        ["ttbar", "ttH"],
        name="tth",
        framework="onnx",
        metrics={"auc": 0.5},
        description="test MLP on ttH vs ttbar",
    )
    x, _ = ds.to_numpy()
    oracle = Oracle(path)
    raw = {k: v.to_list() for k, v in oracle.read_root(data_dir / "ttH_0.root", 0, RAW_EVENTS).items()}
    return BundleInfo(path, oracle, x[:20_000].astype(np.float32), raw, data_dir)


class ServerProcess:
    """``python -m mlaas4hep.serve`` in a subprocess on 127.0.0.1."""

    def __init__(self, repo: Path, *args: str, token: str | None = TOKEN, env: dict | None = None):
        self.repo, self.args, self.token = Path(repo), list(args), token
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log = self.repo.parent / f"server-{os.getpid()}-{id(self)}.log"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "mlaas4hep.serve",
            "--repo",
            str(self.repo),
            "--port",
            str(self.port),
            *self.args,
        ]
        env = dict(os.environ)
        env.pop("MLAAS4HEP_TOKEN", None)  # only what the test asks for
        if self.token:
            tf = self.repo.parent / "token.txt"
            tf.write_text(self.token + "\n")
            cmd += ["--token-file", str(tf)]
        self._log_file = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env={**env, **(self.env or {})}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            try:
                if HTTP.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
            self._log_file = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def admin(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


def install_copy(repo: Path, src: Path, name: str, version: int = 1) -> None:
    """Put a bundle directory into a repository by hand (as an admin could)."""
    dst = repo / name / str(version)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


def repo_of(tmp_path_factory, prefix: str, **bundles: Path) -> Path:
    """A new repository holding a copy of each bundle directory under its name (version 1)."""
    repo = tmp_path_factory.mktemp(prefix) / "repo"
    repo.mkdir()
    for name, src in bundles.items():
        install_copy(repo, src, name)
    return repo


@pytest.fixture(scope="session")
def server(tth_bundle, tmp_path_factory, data_dir) -> ServerProcess:
    """A server with model ``tth`` (version 1) installed, local reads allowed under ``data_dir``,
    remote ones from loopback (the tests' nginx and XRootD servers)."""
    repo = tmp_path_factory.mktemp("srv") / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, "--data-dir", str(data_dir), "--allow-remote", "127.0.0.1").start()
    yield srv
    srv.stop()
