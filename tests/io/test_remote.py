"""Reading through real XRootD and HTTP servers gives exactly the local arrays."""

import numpy as np
import pytest
import uproot

from mlaas4hep.io import Dataset

from ..conftest import sample_config

BRANCHES = ["MET_pt", "nJet", "Jet_pt", "Jet_btagDeepFlavB"]


def remote_config(data_dir, urls):
    cfg = sample_config(data_dir, branches=BRANCHES, shuffle=False, normalize="none")
    cfg["files"] = [{"path": u, "label": lab} for u, lab in urls]
    return cfg


@pytest.mark.parametrize("server", ["xrootd", "http_server"])
def test_remote_equals_local(request, data_dir, server):
    srv = request.getfixturevalue(server)
    names = [("ttH_0.root", 1), ("ttbar_1.root", 0)]
    local = Dataset.from_config(remote_config(data_dir, [(str(data_dir / n), lab) for n, lab in names]))
    remote = Dataset.from_config(remote_config(data_dir, [(srv.url(n), lab) for n, lab in names]))
    xl, yl = local.to_numpy()
    xr, yr = remote.to_numpy()
    assert xr.shape == (40_000, 2 + 2 * 6)
    np.testing.assert_array_equal(xr, xl)
    np.testing.assert_array_equal(yr, yl)
    assert remote.specs.to_dict()["maxv"] == local.specs.to_dict()["maxv"]


@pytest.mark.parametrize("server", ["xrootd", "http_server"])
def test_remote_matches_plain_uproot(request, data_dir, server):
    srv = request.getfixturevalue(server)
    url = srv.url("ttbar_0.root")
    ref = uproot.open(str(data_dir / "ttbar_0.root"))["Events"].arrays(["MET_pt"], library="np")["MET_pt"]
    ds = Dataset.from_config(remote_config(data_dir, [(url, 0)]))
    x, _ = ds.to_numpy()
    np.testing.assert_array_equal(x[:, 0], ref.astype(np.float32))
