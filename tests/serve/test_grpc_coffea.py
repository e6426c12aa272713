"""coffea's ``ml_tools.triton_wrapper``, unmodified, against our gRPC server (``triton+grpc://``).

The wrapper reads the model metadata (every input it lists must be given), the
Triton model configuration (its batch size is ``dynamic_batching.preferred_batch_size[0]``),
then sends fixed-size padded batches. It connects with TLS unless told
``client_args={"ssl": False}``. Skipped when coffea is not installed.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas4hep.io import Preprocessor

from .conftest import install_copy
from .grpc_helpers import GrpcServerProcess, self_signed
from .oracle import ATOL

pytest.importorskip("tritonclient.grpc")
triton_wrapper = pytest.importorskip("coffea.ml_tools.triton_wrapper").triton_wrapper


class TthWrapper(triton_wrapper):
    """What an analysis writes: turn awkward events into the model's feature tensor (with the
    bundle's preprocessing, read back by mlaas4hep; the expected scores come from the oracle)."""

    def __init__(self, url, preprocessor, **kw):
        super().__init__(url, **kw)
        self.pre = preprocessor

    def prepare_awkward(self, events):
        x = self.pre.transform({k: events[k] for k in self.pre.inputs}, apply_selection=False)[0]
        return [], {"output_list": ["probs"], "input_dict": {"x": ak.from_numpy(x)}}


@pytest.fixture(scope="module", params=["plain", "tls"])
def served(request, tth_bundle, tmp_path_factory):
    """``(server, client_args)``: a gRPC server without TLS, then one with a self-signed certificate."""
    work = tmp_path_factory.mktemp(f"coffea-{request.param}")
    repo = work / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    if request.param == "tls":
        cert, key = self_signed(work)
        srv = GrpcServerProcess(repo, tls=(cert, key)).start()
        args = {"ssl": True, "root_certificates": str(cert)}  # coffea's default ssl=True, our CA
    else:
        srv = GrpcServerProcess(repo).start()
        args = {"ssl": False}
    yield srv, args
    srv.stop()


def test_coffea_numpy(served, tth_bundle):
    srv, args = served
    w = TthWrapper(
        f"triton+grpc://{srv.grpc_url}/tth/1",
        Preprocessor.from_dict(tth_bundle.oracle.preprocessing),
        client_args=args,
    )
    assert w.batch_size == 256  # from dynamic_batching.preferred_batch_size
    x = tth_bundle.x[:1000]  # 3 full batches and a padded one
    got = w(["probs"], {"x": x})["probs"]
    assert got.shape == (1000, 1)
    np.testing.assert_allclose(got, tth_bundle.oracle.score(x), atol=ATOL)


def test_coffea_awkward(served, tth_bundle):
    srv, args = served
    w = TthWrapper(
        f"triton+grpc://{srv.grpc_url}/tth/1",
        Preprocessor.from_dict(tth_bundle.oracle.preprocessing),
        client_args=args,
    )
    events = ak.Array(tth_bundle.raw)  # NanoAOD-like events: flat and jagged branches
    got = w(events)["probs"]
    assert len(got) == len(events)
    np.testing.assert_allclose(ak.to_numpy(got), tth_bundle.oracle.score_raw(tth_bundle.raw), atol=ATOL)
