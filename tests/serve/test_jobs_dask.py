"""Jobs on a Dask cluster (``--jobs-scheduler``): a real ``LocalCluster``, the job's process on its worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlaas4hep.client import Client

from .conftest import TOKEN, ServerProcess
from .jobs_helpers import SLOW_MODEL, job_pids, sgd_model, train_config, wait_for

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
    ) as c:
        yield c


def test_a_job_runs_on_the_dask_cluster_and_is_served(cluster, data_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = ServerProcess(
        repo, "--jobs", "--data-dir", str(data_dir), "--jobs-scheduler", cluster.scheduler_address
    )
    srv.start()
    try:
        with Client(srv.url, token=TOKEN) as c:
            job = c.wait(
                c.submit(train_config(data_dir, tmp_path / "t.yaml"), sgd_model(), name="on-dask")["id"],
                120,
                0.3,
            )
            assert job["state"] == "succeeded", job
            assert job["engine"] == f"the Dask cluster at {cluster.scheduler_address}"
            assert job["model"] == {"name": "on-dask", "version": 1}
            assert c.metadata("on-dask")["name"] == "on-dask"
            # cancelling a job running on the cluster ends its process there
            slow = tmp_path / "slow.py"
            slow.write_text(SLOW_MODEL)
            job = c.submit(train_config(data_dir, tmp_path / "t.yaml"), slow)
            job_dir = repo / ".jobs" / job["id"]
            wait_for(lambda: c.job(job["id"])["state"] == "running" and job_pids(job_dir), 30, "running")
            # the job's process is a child of the Dask worker, not of the server
            with distributed.Client(cluster.scheduler_address) as dc:
                workers = set(dc.run(os.getpid).values())
            pid = int((job_dir / "pid").read_text())
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid in workers and ppid != srv.proc.pid
            assert c.cancel(job["id"])["state"] == "cancelled"
            assert job_pids(job_dir) == []
    finally:
        srv.stop()
