"""The procedure of docs/scale.md: a cluster started with the ``dask`` CLI, reached with ``--scheduler``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlaas4hep.io import Dataset
from mlaas4hep.io.specs import Specs

from ..conftest import sample_config
from .test_dask import BRANCHES, assert_same_specs

pytest.importorskip("distributed")
BIN = Path(sys.executable).parent
WORKER_YAML = """\
distributed:
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
  worker:
    profile:
      enabled: false
"""


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler --scheduler-file`` and ``dask worker --nworkers 2 --nthreads 1`` on 127.0.0.1."""
    d = tmp_path_factory.mktemp("dask-cli")
    sched_file = d / "scheduler.json"
    (d / "config").mkdir()
    (d / "config" / "mlaas4hep-worker.yaml").write_text(WORKER_YAML)  # as docs/scale.md says
    env = {"DASK_CONFIG": str(d / "config"), "PATH": str(BIN)}
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), "the scheduler did not start"
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    "--scheduler-file",
                    str(sched_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        )
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
            settings = c.run(
                lambda: (
                    __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"),  # by value
                    __import__("dask").config.get("distributed.worker.profile.enabled"),
                )
            )
        assert list(settings.values()) == [(None, False)] * 2, settings
        yield sched_file, json.loads(sched_file.read_text())["address"]
    finally:
        from mlaas4hep.scale.dask import shutdown_executors

        shutdown_executors()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cli_specs_with_scheduler_file_and_address(cli_cluster, data_dir, tmp_path):
    sched_file, address = cli_cluster
    cfg = sample_config(data_dir, tmp_path / "cache", branches=BRANCHES)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    ref = Dataset.from_config(cfg).compute_specs()
    for i, sched in enumerate([str(sched_file), address]):
        out = tmp_path / f"specs{i}.json"
        r = subprocess.run(
            [
                str(BIN / "mlaas4hep"),
                "specs",
                str(tmp_path / "config.yaml"),
                "-o",
                str(out),
                "--scheduler",
                sched,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert_same_specs(ref, Specs.load(out))


def test_stream_with_scheduler_file(cli_cluster, data_dir, tmp_path):
    sched_file, _ = cli_cluster
    cfg = sample_config(data_dir, tmp_path / "cache", branches=BRANCHES, shuffle=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [
            str(BIN / "mlaas4hep"),
            "stream",
            str(tmp_path / "config.yaml"),
            "--epochs",
            "2",
            "--scheduler",
            str(sched_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("80,000 events in") == 2, r.stdout


def test_private_cluster_is_quiet_unless_asked(data_dir, tmp_path):
    """``executor: dask`` without a scheduler: distributed's start/stop chatter stays out of the terminal."""
    cfg = sample_config(data_dir, tmp_path / "cache", branches=BRANCHES, executor="dask", workers=2)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [str(BIN / "mlaas4hep"), "stream", str(tmp_path / "config.yaml"), "--epochs", "1"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "80,000 events in" in quiet.stdout
    assert "distributed" not in quiet.stderr, quiet.stderr  # was ~30 INFO lines and a WARNING at exit
    verbose = subprocess.run([cmd[0], "-v", *cmd[1:]], capture_output=True, text=True, timeout=120)
    assert "a private LocalCluster of 2 workers, dashboard http://127.0.0.1:" in verbose.stderr


def test_unreachable_scheduler_is_a_clear_error():
    import dask

    from mlaas4hep.errors import ConfigError, Mlaas4hepError
    from mlaas4hep.scale.dask import dask_executor

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(Mlaas4hepError, match="cannot connect to the Dask scheduler"),
    ):
        dask_executor("tcp://127.0.0.1:9")
    with pytest.raises(ConfigError, match="does not exist"):
        dask_executor("/nonexistent/scheduler.json")
    with pytest.raises(ConfigError, match="gateway:CLUSTER_NAME"):
        dask_executor("gateway://traefik:80/ns.abc")
