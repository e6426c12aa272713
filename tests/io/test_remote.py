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


def test_xrootd_client_settings_reach_the_worker_processes(data_dir, xrootd):
    """A decoding worker opens root:// files with our settings, not the client's defaults.

    Without them a worker would refuse a restarted server for 30 minutes
    (``StreamErrorWindow``) and check timeouts every 15 s.
    """
    from XRootD.client import EnvGetInt

    from mlaas4hep.io.executor import process_pool
    from mlaas4hep.io.passes import file_info

    pool = process_pool(1)
    info = pool.submit(file_info, xrootd.url("ttH_0.root"), "Events", 7).result()
    assert info["entries"] == 20_000
    got = {
        k: pool.submit(EnvGetInt, k).result()
        for k in ("StreamErrorWindow", "TimeoutResolution", "ConnectionRetry")
    }
    assert got == {"StreamErrorWindow": 0, "TimeoutResolution": 1, "ConnectionRetry": 1}
