"""The server's configuration (:mod:`mlaas4hep.serve.config`): one home for every option, three sources.

The sources are checked as a container platform uses them: a YAML file, ``MLAAS4HEP_*``
environment variables, the command line; a real ``mlaas4hep serve`` configured only by
its environment answers on the port the environment named, and reports where each
setting came from.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.localservers import free_port
from mlaas4hep.serve import config as cfg

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def test_sources_in_order_file_then_environment_then_command_line(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text("repo: models/\nport: 8000\nmax_batch: 512\ndata_dir: [data, more]\nprivate: true\n")
    env = {"MLAAS4HEP_PORT": "8100", "MLAAS4HEP_MAX_DELAY_MS": "0.5", "MLAAS4HEP_URL": "http://x"}
    c, sources = cfg.load({"max_batch": "64"}, f, env)
    assert (c.repo, c.port, c.max_batch, c.max_delay_ms, c.data_dir, c.private) == (
        "models/",
        8100,
        64,
        0.5,
        ("data", "more"),
        True,
    )
    assert sources == {
        "repo": "serve.yaml",
        "port": "MLAAS4HEP_PORT",
        "max_batch": "--max-batch",
        "data_dir": "serve.yaml",
        "private": "serve.yaml",
        "max_delay_ms": "MLAAS4HEP_MAX_DELAY_MS",
    }
    assert cfg.changed(c, sources) == (
        "repo=models/ (serve.yaml), port=8100 (MLAAS4HEP_PORT), private=True (serve.yaml), "
        "max_batch=64 (--max-batch), max_delay_ms=0.5 (MLAAS4HEP_MAX_DELAY_MS), data_dir=data,more (serve.yaml)"
    )
    # the config file may itself come from the environment
    c2, _ = cfg.load(
        {}, None, {"MLAAS4HEP_CONFIG": str(f), "MLAAS4HEP_WORKERS": "2", "MLAAS4HEP_NO_AUTH": "yes"}
    )
    assert (c2.port, c2.workers, c2.no_auth) == (8000, 2, True)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("repo: m\nprot: 8000\n", {}, "serve.yaml: unknown option 'prot' (did you mean 'port'?)"),
        ("repo: m\nport: [1]\n", {}, "serve.yaml: port = [1]: expected a whole number"),
        ("repo: m\nport: 80\n  bad: indent\n", {}, "serve.yaml: not valid YAML (line 3, column"),
        ("repo: m\n", {"MLAAS4HEP_PORT": "http"}, "MLAAS4HEP_PORT: port = 'http': expected a whole number"),
        (
            "repo: m\n",
            {"MLAAS4HEP_PRIVATE": "maybe"},
            "MLAAS4HEP_PRIVATE: private = 'maybe': expected true or false",
        ),
        ("repo: m\n", {"MLAAS4HEP_PORT": "70000"}, "port 70000 is not a port number (0-65535)"),
        (
            "repo: m\n",
            {"MLAAS4HEP_WORKERS": "atuo"},
            "MLAAS4HEP_WORKERS: workers = 'atuo': expected a whole number or auto",
        ),
        ("repo: m\nworkers: 0\n", {}, "workers must be at least 1, not 0"),
        ("repo: m\nbody_timeout: 0\n", {}, "body_timeout must be a positive number of seconds, not 0"),
        ("repo: m\n", {"MLAAS4HEP_BODY_TIMEOUT": "-5"}, "body_timeout must be a positive number of seconds"),
        ("repo: m\nbody_timeout: .inf\n", {}, "body_timeout must be a positive number of seconds, not inf"),
        ("repo: m\nhead_timeout: 0\n", {}, "head_timeout must be a positive number of seconds, not 0"),
        ("repo: m\n", {"MLAAS4HEP_HEAD_TIMEOUT": "nan"}, "head_timeout must be a positive number of seconds"),
        (
            "repo: m\n",
            {"MLAAS4HEP_BODY_TIMEOUT": "soon"},
            "MLAAS4HEP_BODY_TIMEOUT: body_timeout = 'soon': expected a number",
        ),
        (
            "repo: m\nbody_timout: 5\n",
            {},
            "serve.yaml: unknown option 'body_timout' (did you mean 'body_timeout'?)",
        ),
        ("repo: m\nport: 8000\nmetrics_port: 8000\n", {}, "port and metrics_port are both 8000: each needs"),
        (
            "port: 80\n",
            {},
            "the server needs a model repository: --repo DIR, $MLAAS4HEP_REPO or 'repo:' in --config",
        ),
    ],
)
def test_a_wrong_option_names_its_source(tmp_path, text, env, message):
    f = tmp_path / "serve.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        cfg.load({}, f, env)
    assert str(err.value).startswith(message), str(err.value)
    assert err.value.exit_status == 2


def test_the_documented_table_is_the_configuration():
    text = DOCS.read_text()
    assert cfg.options_table() in text, "docs/serve.md: paste mlaas4hep.serve.config.options_table() there"
    for name in cfg.FIELDS:  # and --help says the variable of each option
        assert cfg.env_name(name) in cfg.options_table()


def test_a_config_survives_the_trip_to_worker_processes():
    c = cfg.ServeConfig(repo="m", data_dir=("a", "b"), allow_remote=("eos.cern.ch",), grpc_port=8001)
    assert cfg.ServeConfig.from_json(c.to_json()) == c


def _serve(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "mlaas4hep"), "serve", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {seconds} s")


def test_a_server_configured_by_its_environment_alone(tmp_path):
    """As a container runs it: no options, MLAAS4HEP_* variables, Triton's metrics port."""
    port, mport = free_port(), free_port()
    (tmp_path / "serve.yaml").write_text("max_batch: 128\n")
    env = {
        "MLAAS4HEP_REPO": str(tmp_path / "models"),
        "MLAAS4HEP_PORT": str(port),
        "MLAAS4HEP_METRICS_PORT": str(mport),
        "MLAAS4HEP_CONFIG": str(tmp_path / "serve.yaml"),
        "MLAAS4HEP_NO_AUTH": "1",
    }
    proc = _serve([], env, tmp_path)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert "mlaas4hep_models_loaded" in metrics
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    banner = out.split("\n")
    assert banner[0] == f"mlaas4hep serve: http://127.0.0.1:{port}  (stop with Ctrl-C)", out
    assert f"  metrics:      http://127.0.0.1:{mport}/metrics (no token)" in banner
    settings = next(line for line in banner if line.startswith("  settings:"))
    assert f"port={port} (MLAAS4HEP_PORT)" in settings and "max_batch=128 (serve.yaml)" in settings
    assert "no_auth=True (MLAAS4HEP_NO_AUTH)" in settings


def test_a_typo_on_the_command_line_or_in_the_environment_stops_the_server_with_one_line(tmp_path):
    proc = _serve(["--repo", "m", "--port", "eighty"], {}, tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2 and out.strip() == "error: --port: port = 'eighty': expected a whole number"
    proc = _serve([], {"MLAAS4HEP_REPO": "m", "MLAAS4HEP_MAX_BATCH": "0"}, tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2 and out.strip() == "error: max_batch must be at least 1, not 0"
    proc = _serve(["--help"], {}, tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and re.search(r"--grpc-port N\s+also serve Triton's gRPC API", out)
    assert "$MLAAS4HEP_GRPC_PORT" in out and "--config FILE" in out


@pytest.mark.parametrize("environ, spins", [({}, "0"), ({"MLAAS4HEP_SPIN": "1"}, "1")])
def test_spin_reaches_every_onnxruntime_session(environ, spins, tth_bundle, tmp_path):
    """``--spin`` / ``$MLAAS4HEP_SPIN``: idle onnxruntime threads busy-wait (as Triton's); off by default."""
    from mlaas4hep.serve.app import create_app

    from .conftest import install_copy

    install_copy(tmp_path / "repo", tth_bundle.path, "tth")
    config, _ = cfg.load({"repo": str(tmp_path / "repo")}, environ=environ)
    plane = create_app(config=config).plane
    predictor = plane.repo.predictor("tth", 1)
    for session in (predictor.session, predictor.small):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins


class Counted:
    """An onnxruntime session that counts its calls."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, *args):
        self.calls += 1
        return self.session.run(*args)


def test_calls_of_a_few_rows_run_on_one_thread_with_the_same_scores(tth_bundle, tmp_path):
    """A served model answers calls of up to SMALL_ROWS rows on a one-thread session (a lone
    request's latency), bit for bit what its main session answers; larger calls use the main one."""
    from mlaas4hep.bundle import SMALL_ROWS
    from mlaas4hep.serve.app import create_app

    from .conftest import install_copy

    install_copy(tmp_path / "repo", tth_bundle.path, "tth")
    config, _ = cfg.load({"repo": str(tmp_path / "repo")}, environ={})
    predictor = create_app(config=config).plane.repo.predictor("tth", 1)
    assert predictor.small.get_session_options().intra_op_num_threads == 1
    assert (
        predictor.session.get_session_options().intra_op_num_threads == 0
    )  # onnxruntime's default: all cores
    x = np.random.default_rng(7).normal(size=(SMALL_ROWS + 1, len(predictor.features))).astype(np.float32)
    name, out = predictor.input_name, predictor.output_name
    for i in range(SMALL_ROWS):  # a row at a time, as lone requests come
        alone = predictor.run({name: x[i : i + 1]})
        np.testing.assert_array_equal(alone, predictor.session.run([out], {name: x[i : i + 1]})[0])
    main, small = Counted(predictor.session), Counted(predictor.small)
    predictor.session, predictor.small = main, small
    predictor.run({name: x[:SMALL_ROWS]})
    assert (main.calls, small.calls) == (0, 1)
    predictor.run({name: x})
    assert (main.calls, small.calls) == (1, 1)

    config, _ = cfg.load({"repo": str(tmp_path / "repo"), "threads": 1}, environ={})
    assert create_app(config=config).plane.repo.predictor("tth", 1).small is None  # one thread already


def _cgroup(root: Path, own: str, quotas: dict[str, str], v1: bool = False) -> Path:
    """A cgroup tree under ``root`` with ``quotas`` (folder -> cpu.max text, or v1 "quota period"),
    and the /proc/self/cgroup that puts this process in ``own``; returns that file."""
    for folder, text in quotas.items():
        d = root / ("cpu" if v1 else "") / folder.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        if v1:
            quota, period = text.split()
            (d / "cpu.cfs_quota_us").write_text(quota + "\n")
            (d / "cpu.cfs_period_us").write_text(period + "\n")
        else:
            (d / "cpu.max").write_text(text + "\n")
    proc = root / "proc-self-cgroup"
    proc.write_text(f"2:cpu,cpuacct:{own}\n1:memory:/x\n" if v1 else f"0::{own}\n")
    return proc


def test_workers_auto_counts_the_cpus_a_container_may_use(tmp_path, monkeypatch):
    """``--workers auto``: the process's CPU affinity, capped by the CPU quota of its cgroup or of
    any cgroup above it, rounded up (a pod limited to 1.5 CPUs gets 2 workers)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    cases = [
        ({"/": "max 100000"}, "/", False, 8),  # no limit: the affinity
        ({"/kubepods/pod1": "150000 100000", "/kubepods": "max 100000"}, "/kubepods/pod1", False, 2),
        ({"/kubepods": "300000 100000"}, "/kubepods/pod1/ctr", False, 3),  # a parent's limit holds too
        ({"/a": "1600000 100000"}, "/a", False, 8),  # a quota above the affinity
        ({"/docker/c1": "50000 100000"}, "/docker/c1", True, 1),  # cgroup v1, half a CPU
        ({"/docker/c1": "-1 100000"}, "/docker/c1", True, 8),  # v1 without a quota
    ]
    for i, (quotas, own, v1, expected) in enumerate(cases):
        root = tmp_path / str(i)
        proc = _cgroup(root, own, quotas, v1)
        assert cfg.usable_cpus(root, proc) == expected, (quotas, own)
    # no cgroup file at all (not Linux's): the affinity
    assert cfg.usable_cpus(tmp_path / "none", tmp_path / "none" / "cgroup") == 8


def test_workers_auto_from_every_source(tmp_path, monkeypatch):
    monkeypatch.setattr(cfg, "usable_cpus", lambda: 3)
    (tmp_path / "serve.yaml").write_text("repo: m\nworkers: auto\n")
    assert cfg.load({}, tmp_path / "serve.yaml", {})[0].workers == 3
    assert cfg.load({}, None, {"MLAAS4HEP_REPO": "m", "MLAAS4HEP_WORKERS": "Auto"})[0].workers == 3
    assert cfg.load({"repo": "m", "workers": "auto"}, None, {})[0].workers == 3
    assert cfg.ServeConfig(repo="m", workers="auto").check().workers == 3  # type: ignore[arg-type]
