"""``mlaas4hep capacity``: the arithmetic of the worked examples of docs/capacity.md, recomputed here
from the measured figures as published, the sources those figures cite, and the command's errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlaas4hep.capacity import FIGURES, inference, training
from mlaas4hep.cli import main
from mlaas4hep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "capacity.md"


def cli(*args: str) -> subprocess.CompletedProcess:
    """``mlaas4hep capacity ARGS`` in this process: exit status, standard output and error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["capacity", *args])
        except SystemExit as exit:  # argparse's usage errors
            code = int(exit.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_command_runs_as_installed():
    r = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", "capacity", "--infer-rate", "1000", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["cores"] == math.ceil(
        (1000 * 480e-6 + 1000 / 112_150) / 0.7
    )


def test_training_example_cms_run3_nanoaod():
    """10^9 events, 10 epochs, 24 h, on CPUs (ZLIB, as NanoAOD)."""
    plan = json.loads(cli("--events", "1e9", "--epochs", "10", "--hours", "24", "--json").stdout)
    # by hand, from the figures as published: 1.5M ev/s decoding over 16 processes; 65,821 ev/s
    # training on 2 cores; 1,118,691 ev/s reading the cache shuffled; 2 processes 1.58x one
    decode, train, cache, eff = 1.5e6 / 16, 65_821 / 2, 1_118_691, 1.58 / 2
    core_s = 1e9 / decode + 1e10 / train + 9e9 / cache
    assert plan["core_hours"] == pytest.approx(core_s / 3600) == pytest.approx(89.60, abs=0.01)
    assert plan["cores"] == math.ceil(core_s / (24 * 3600 * eff)) == 5
    assert plan["nodes"] == 1 and plan["workers_per_node"] == 5
    epoch0 = 1e9 * (1 / decode + 1 / train) / (5 * eff)
    assert plan["epoch0_hours"] == pytest.approx(epoch0 / 3600) == pytest.approx(2.887, abs=0.001)
    # 238 MB per million events read, once
    assert plan["read_bytes"] == pytest.approx(238e9)
    assert (
        plan["network_gbit_s_epoch0"]
        == pytest.approx(238e9 * 8 / epoch0 / 1e9)
        == pytest.approx(0.1832, abs=1e-4)
    )
    assert plan["cache_bytes"] == 1e9 * 111 * 4
    assert set(plan["figures"]) == {"decode_zlib", "bytes_zlib", "train_cpu", "cache_read", "efficiency"}


def test_training_with_a_gpu_is_bound_by_feeding_it():
    plan = training(1e9, 10, 24, gpus=1)
    # epochs 1-9 from the cache at 5.2M ev/s need 6 cores reading it; epoch 0 then decodes on them
    assert plan["cores"] == math.ceil(5.2e6 / (1_118_691 * 0.79)) == 6
    assert plan["gpu_hours"] == pytest.approx(1e10 / 5.2e6 / 3600)
    assert plan["epoch0_hours"] == pytest.approx(1e9 / (6 * 93_750 * 0.79) / 3600)


def test_inference_example_sonic_1e5_events_per_s():
    """10^5 events/s, 10 rows per event in one gRPC call, 50 ms budget."""
    plan = json.loads(
        cli("--infer-rate", "1e5", "--inferences-per-event", "10", "--latency-ms", "50", "--json").stdout
    )
    # 480 us of server CPU per gRPC call; 224,300 rows/s on 2 cores; 70% utilization (50 ms >= p99 42.5 ms)
    busy = 1e5 * 480e-6 + 1e6 / (224_300 / 2)
    assert plan["busy_cores"] == pytest.approx(busy) == pytest.approx(56.92, abs=0.01)
    assert plan["utilization"] == 0.7
    assert plan["cores"] == math.ceil(busy / 0.7) == 82
    assert (plan["replicas"], plan["workers_per_replica"], plan["replicas_with_spare"]) == (6, 14, 7)
    # 10 x 111 float32 in and 10 float32 out per call, plus 100 bytes each way
    assert plan["network_gbit_s_in"] == pytest.approx(1e5 * (4440 + 100) * 8 / 1e9) == pytest.approx(3.632)
    assert plan["network_gbit_s_out"] == pytest.approx(1e5 * (40 + 100) * 8 / 1e9) == pytest.approx(0.112)


def test_inference_tight_budget_http_and_batched_requests():
    tight = inference(1e5, 10, latency_ms=20)  # below gRPC's measured p99 of 42.5 ms: 50%
    assert tight["utilization"] == 0.5 and tight["cores"] == math.ceil((48 + 1e6 / 112_150) / 0.5) == 114
    http = inference(1e5, 10, latency_ms=20, protocol="http")  # at or above HTTP's 14.5 ms: 70%
    assert http["cores"] == math.ceil((1e5 * 120e-6 + 1e6 / 112_150) / 0.7) == 30
    batched = inference(1e5, 10, rows_per_request=1000)  # 1,000 calls/s of 1,000 rows
    assert (
        batched["requests_per_s"] == 1000
        and batched["cores"] == math.ceil((0.48 + 1e6 / 112_150) / 0.7) == 14
    )


def test_budget_below_one_call_is_refused():
    r = cli("--infer-rate", "1e5", "--latency-ms", "0.1")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: a 0.1 ms budget is below the 0.61 ms that one grpc call takes with no load at all "
        "(p50, one client): more servers cannot meet it"
    )
    with pytest.raises(ConfigError, match=r"need 5\.3 h for epochs 1-99 alone"):
        training(1e9, 100, 1, gpus=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a training workload (--events N --epochs E --hours H) or an inference load"),
        (["--events", "1e9"], "--events needs --hours"),
        (["--events", "1e9", "--hours", "1", "--infer-rate", "5"], "give a training workload"),
        (["--events", "lots", "--hours", "1"], "argument --events: not a number: 'lots'"),
        (["--infer-rate", "-5"], "argument --infer-rate: must be a positive number, not -5"),
        (
            ["--infer-rate", "1e5", "--hours", "3"],
            "--hours is a training option: give --events, or leave --hours out",
        ),
        (["--events", "1e9", "--hours", "3", "--latency-ms", "5"], "--latency-ms is an inference option"),
    ],
)
def test_usage_errors(args, message):
    r = cli(*args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_every_figure_cites_a_source_that_says_so():
    """Each figure names the files it comes from, and every number it quotes is in them."""
    brief = ROOT / ".." / "shared" / "BRIEF.md"
    for name, f in FIGURES.items():
        if name in ("request_overhead", "bytes_zstd"):
            assert "not measured" in f.source
            continue
        files = re.findall(r"bench/RESULTS[\w-]*\.md|\.\./shared/BRIEF\.md", f.source)
        assert files, name
        if "../shared/BRIEF.md" in files and not brief.exists():
            continue  # the brief lies beside the repository on the project's machines only
        text = "\n".join((ROOT / p).read_text() for p in files)
        for number in re.findall(r"\d+(?:[.,]\d+)*", f.source):
            if len(number) >= 2 and number not in ("111", "256", "128", "1024", "8192"):
                assert number in text or number.replace(",", "") in text.replace(",", ""), (name, number)


def test_documented_outputs_are_what_the_command_prints():
    """docs/capacity.md shows each example's output as the command prints it."""
    text = DOC.read_text()
    blocks = re.findall(r"```console\n\$ (mlaas4hep capacity [^\n]*)\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for command, shown in blocks:
        r = cli(*command.split()[2:])
        assert r.returncode == 0, r.stderr
        assert shown.strip() == r.stdout.strip(), command
