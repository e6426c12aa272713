"""A storage outage costs time, never events: a real xrootd killed and restarted mid-epoch.

Each test runs its own XRootD server (the session's shared one is never
killed). Chunks are small (1,000 events, 40 units), and reads happen only
when a unit is decoded (remote files have no array cache, and ``workers: 0``
reads nothing ahead), so what is read after the kill really comes from the
server that came back.
"""

import logging
import threading
import time

import numpy as np
import pytest

from mlaas4hep.io import Chunk, Dataset, ServerUnavailableError, sources
from mlaas4hep.localservers import XRootDServer

from ..conftest import sample_config

NAMES = [("ttH_0.root", 1), ("ttbar_0.root", 0)]
#: Small XRootD timeouts and back-off, so that a test takes seconds.
FAST = {"timeout": 3, "retry_backoff": 0.2, "chunk_size": 1_000}
#: Seconds the killed server stays down (the reads meet it: the test checks that they were retried).
OUTAGE_S = 2.0


@pytest.fixture
def server(data_dir):
    srv = XRootDServer(data_dir)
    yield srv
    srv.stop()


def config(data_dir, urls, **kw):
    cfg = sample_config(data_dir, shuffle=False, normalize="none", **FAST)
    cfg["files"] = [{"path": u, "label": lab} for u, (_, lab) in zip(urls, NAMES)]
    cfg.update(kw)
    return cfg


def local_reference(data_dir) -> Chunk:
    return Dataset.from_config(config(data_dir, [str(data_dir / n) for n, _ in NAMES])).to_chunk()


@pytest.mark.parametrize(
    "on_error, workers", [("raise", 0), ("skip", 0), ("skip", 1)], ids=["raise", "skip", "skip-worker"]
)
def test_epoch_survives_a_killed_and_restarted_xrootd(data_dir, server, caplog, on_error, workers):
    ref = local_reference(data_dir)
    ds = Dataset.from_config(
        config(
            data_dir, [server.url(n) for n, _ in NAMES], on_error=on_error, workers=workers, retry_budget=60
        )
    )
    assert ds.nevents == 40_000  # the specs pass ran before the fault
    for _ in ds.chunks(epoch=0):  # first use lays out what the specs pass read: no server reads
        pass
    before = sources.RETRIES.total
    it = ds.chunks(epoch=1)  # no decoded cache: every unit is read from the server again
    got = [next(it) for _ in range(3)]

    server.kill()
    t_kill = time.monotonic()
    restart = threading.Timer(OUTAGE_S, server.start)
    restart.start()
    with caplog.at_level(logging.WARNING, logger="mlaas4hep.io.sources"):
        got += list(it)  # bounded: 37 more units
    restart.join()
    lost = time.monotonic() - t_kill

    all_ = Chunk.concat(got)
    assert len(all_) == 40_000
    np.testing.assert_array_equal(all_.event_id, ref.event_id)
    np.testing.assert_array_equal(all_.x, ref.x)
    np.testing.assert_array_equal(all_.y, ref.y)
    assert list(ds.report) == [], "an outage must not skip anything"
    assert ds.report.retries > 0, "no read met the outage: the test did not test anything"
    assert ds.report.summary()["files_retried"] and ds.report.retry_wait > 0
    assert sources.RETRIES.total - before >= ds.report.retries  # what the server's metrics read
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry ")]
    if workers == 0:  # worker processes log on their own
        assert len(lines) == ds.report.retries
        assert "ttH_0.root" in lines[0] and "s left of the 60 s retry budget" in lines[0]
    print(
        f"\noutage {OUTAGE_S:g} s: {lost:.1f} s from the kill to the end of the epoch; {ds.report.summary()}"
    )


def test_a_server_down_longer_than_the_budget_fails_even_with_skip(data_dir, server):
    server.kill()
    ds = Dataset.from_config(
        config(data_dir, [server.url(n) for n, _ in NAMES], on_error="skip", retry_budget=2)
    )
    with pytest.raises(
        ServerUnavailableError, match=r"ttH_0\.root.*failed after \d+ attempts.*retry_budget 2 s"
    ):
        _ = ds.specs
    assert list(ds.report) == [] and ds.report.retries >= 2


def test_a_missing_file_on_a_live_server_is_skipped_not_retried(data_dir, server):
    urls = [server.url("ttH_0.root"), server.url("nothere.root")]
    ds = Dataset.from_config(config(data_dir, urls, on_error="skip", retry_budget=60))
    x, y = ds.to_numpy()
    assert len(x) == 20_000 and (y == 1).all()
    assert [r["file"] for r in ds.report] == [urls[1]] and "no such file" in ds.report[0]["error"]
    assert ds.report.retries == 0


def test_xrootd_settings_follow_the_timeout():
    s = sources.xrootd_settings(10)
    assert s["ConnectionWindow"] == s["RequestTimeout"] == s["StreamTimeout"] == 10
    assert s["ConnectionRetry"] == 1 and s["StreamErrorWindow"] == 0 and s["TimeoutResolution"] == 1
