"""What a server loads to start: a replica that serves tensors never imports the reading stack.

uproot and awkward are imported only when a request needs them (raw branch values, a ROOT
file), so a replica starts in about 0.9 s of CPU instead of 1.3 (an empty repository on the
shared 2-core machine): Kubernetes' new pods, ``--workers`` front ends and the tests' 90-odd
servers all start faster. Python's own record of the imports (``PYTHONPROFILEIMPORTTIME``,
written to the server's log) is read, on the real server.
"""

from __future__ import annotations

import re

import numpy as np

from .conftest import HTTP, ServerProcess, install_copy
from .oracle import ATOL


def _imported(log: str) -> set[str]:
    """The modules a ``PYTHONPROFILEIMPORTTIME`` log says were imported."""
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", log, re.MULTILINE))


def packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_a_server_serving_tensors_never_imports_uproot_nor_awkward(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    try:
        x = tth_bundle.x[:20]
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
        }
        r = HTTP.post(srv.url + "/v2/models/tth/infer", json=body)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 1)
        np.testing.assert_allclose(got, tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
        before = _imported(srv.log.read_text())
        assert {"onnxruntime", "mlaas4hep"} <= packages(before)  # the log is read right
        assert not {"uproot", "awkward"} & packages(before)

        # raw branch values (jagged lists per event) load awkward then, and are scored exactly
        r = HTTP.post(srv.url + "/v2/models/tth/infer", json={"inputs": tth_bundle.raw_inputs()})
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 1)
        np.testing.assert_allclose(got, tth_bundle.oracle.score_raw(tth_bundle.raw), rtol=0, atol=ATOL)
        assert "awkward" in packages(_imported(srv.log.read_text()))
    finally:
        srv.stop()
