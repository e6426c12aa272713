"""The passes on a real Dask cluster (2 worker processes on 127.0.0.1) give exactly the local results."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from mlaas4hep.io import Dataset
from mlaas4hep.io.chunk import Chunk
from mlaas4hep.io.errors import CorruptFileError

from ..conftest import sample_config

distributed = pytest.importorskip("distributed")

BRANCHES = ["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepFlavB"]


def new_cluster():
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    )


@pytest.fixture(scope="module")
def cluster():
    from mlaas4hep.scale.dask import shutdown_executors

    with new_cluster() as c:
        yield c
        shutdown_executors()  # the clients that the datasets connected


def cfgs(data_dir, cache_dir, scheduler, **kw):
    kw.setdefault("branches", BRANCHES)
    local = sample_config(data_dir, cache_dir / "local" if cache_dir else None, **kw)
    dask = sample_config(
        data_dir, cache_dir / "dask" if cache_dir else None, executor="dask", scheduler=scheduler, **kw
    )
    return local, dask


def concat(chunks) -> Chunk:
    return Chunk.concat([Chunk(*(np.array(getattr(c, f)) for f in Chunk.FIELDS)) for c in chunks])


def assert_same(a: Chunk, b: Chunk) -> None:
    for f in Chunk.FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def assert_same_specs(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    for k in (
        "fkeys",
        "jkeys",
        "jdim",
        "jdim_p99",
        "minv",
        "maxv",
        "count",
        "nans",
        "lengths",
        "nevents",
        "files",
    ):
        assert da[k] == db[k], k
    for k in ("mean", "std"):  # merged in another order: equal to rounding
        assert da[k].keys() == db[k].keys()
        for name in da[k]:
            assert db[k][name] == pytest.approx(da[k][name], rel=1e-12, abs=1e-12), (k, name)


def test_executor_is_dask(cluster):
    from mlaas4hep.io.executor import get_executor

    ex = get_executor("dask", None, cluster.scheduler_address)
    assert ex.shares_filesystem is False and ex.nworkers == 2
    assert get_executor("local", None, cluster.scheduler_address) is ex  # a scheduler implies dask
    # identical submissions are not merged, and results come back in order
    out = [f.result() for f in [ex.submit(pow, 2, 10) for _ in range(3)]]
    assert out == [1024] * 3


def test_specs_equal_local(cluster, data_dir, cache_dir):
    local, dask = cfgs(
        data_dir,
        cache_dir,
        cluster.scheduler_address,
        chunk_size=3_000,
        new_variables={"HT": "sum(Jet_pt)"},
        selection="nJet >= 2",
    )
    sl = Dataset.from_config(local).compute_specs()
    sd = Dataset.from_config(dask).compute_specs()
    assert_same_specs(sl, sd)
    assert sum(f["selected"] for f in sd.files) < 80_000  # the selection ran on the workers


def test_stream_equals_local_and_fills_local_cache(cluster, data_dir, cache_dir):
    local, dask = cfgs(data_dir, cache_dir, cluster.scheduler_address)
    dl, dd = Dataset.from_config(local), Dataset.from_config(dask)
    ref = concat(dl.chunks(epoch=0))
    assert len(ref) == 80_000
    # bounded memory: the client holds the prefetch window, the chunk being handed out and the reader
    client = dd._executor().client
    prefetch = 2 * dd._executor().nworkers + 1
    chunks, held = [], []
    for ch in dd.chunks(epoch=0):
        held.append(len(client.futures))
        chunks.append(ch)
    assert_same(concat(chunks), ref)
    assert max(held) <= prefetch + 2  # + the future holding the reader
    # the workers returned arrays and this process wrote its own cache; epoch 1 reads it back
    assert dd.cache is not None and len(list(dd.cache.root.iterdir())) == len(dd.units(0))
    assert_same(concat(dd.chunks(epoch=1)), concat(dl.chunks(epoch=1)))
    xl, yl = dl.to_numpy()
    xd, yd = dd.to_numpy()
    np.testing.assert_array_equal(xd, xl)
    np.testing.assert_array_equal(yd, yl)
    stats = dd._executor().worker_stats()
    assert len(stats) == 2 and sum(s["events"] for s in stats.values()) >= 80_000


def test_worker_killed_mid_epoch(data_dir):
    """SIGKILL a busy worker after the first chunks arrive: its tasks re-run, every event once."""
    with new_cluster() as cluster, distributed.Client(cluster, set_as_default=False) as client:
        local, dask = cfgs(data_dir, None, cluster.scheduler_address, chunk_size=1_000, shuffle=True)
        ref = concat(Dataset.from_config(local).chunks(epoch=0))
        ds = Dataset.from_config(dask)
        pids = client.run(os.getpid)
        chunks, killed = [], None
        for ch in ds.chunks(epoch=0):
            chunks.append(ch)
            if killed is None and len(chunks) >= 3:
                busy = {w: ks for w, ks in client.processing().items() if ks}
                if busy:
                    killed = max(busy, key=lambda w: len(busy[w]))
                    os.kill(pids[killed], signal.SIGKILL)
        assert killed is not None, "no worker was busy: the test did not kill anything"
        got = concat(chunks)
        assert len(got) == len(ref) == 80_000
        assert len({tuple(e) for e in got.event_id}) == 80_000  # each event exactly once
        assert_same(got, ref)
        # the nanny restarted the killed worker
        deadline = time.monotonic() + 30
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert killed not in client.scheduler_info()["workers"]


def corrupt_copy(src, dst) -> None:
    """A copy whose middle (baskets, not the header or the tree's metadata) is garbage."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 200_000] = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_corrupt_file_follows_on_error(cluster, data_dir, tmp_path):
    bad = tmp_path / "corrupt.root"
    corrupt_copy(data_dir / "ttbar_0.root", bad)
    files = [{"path": str(data_dir / "ttH_0.root"), "label": 1}, {"path": str(bad), "label": 0}]

    def make(executor, **kw):  # own specs cache each: both run the specs pass, which also skips
        cfg = sample_config(data_dir, tmp_path / executor, branches=BRANCHES, shuffle=False, **kw)
        cfg["files"] = files
        if executor == "dask":
            cfg.update(executor="dask", scheduler=cluster.scheduler_address)
        return Dataset.from_config(cfg)

    with pytest.raises(CorruptFileError, match=r"corrupt\.root"):  # the type survives the trip
        make("dask").to_numpy()
    dl, dd = make("local", on_error="skip"), make("dask", on_error="skip")
    xl, yl = dl.to_numpy()
    xd, yd = dd.to_numpy()
    np.testing.assert_array_equal(xd, xl)
    np.testing.assert_array_equal(yd, yl)
    assert 20_000 <= len(xd) < 40_000
    key = lambda r: (r["file"], tuple(r.get("entries", ())), r["type"])  # noqa: E731
    assert sorted(map(key, dd.report)) == sorted(map(key, dl.report)) and dd.report
    assert all(r["type"] == "CorruptFileError" for r in dd.report)


def test_workers_read_xrootd(cluster, data_dir, xrootd):
    names = [("ttH_1.root", 1), ("ttbar_1.root", 0)]

    def make(urls, **kw):
        cfg = sample_config(data_dir, None, branches=BRANCHES, shuffle=False, **kw)
        cfg["files"] = [{"path": u, "label": lab} for u, lab in urls]
        return Dataset.from_config(cfg)

    local = make([(str(data_dir / n), lab) for n, lab in names])
    remote = make(
        [(xrootd.url(n), lab) for n, lab in names], executor="dask", scheduler=cluster.scheduler_address
    )
    assert remote.urls[0].startswith("root://")
    xl, yl = local.to_numpy()
    xr, yr = remote.to_numpy()
    assert xr.shape == (40_000, 2 + 3 * 6)
    np.testing.assert_array_equal(xr, xl)
    np.testing.assert_array_equal(yr, yl)
    for k in ("minv", "maxv", "count", "jdim"):
        assert remote.specs.to_dict()[k] == local.specs.to_dict()[k]
