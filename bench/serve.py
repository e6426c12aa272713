"""Benchmark of the inference server against in-process onnxruntime.

    .venv/bin/python bench/serve.py [--duration 10] [--out bench/RESULTS-serve.md]

What it does, all in one run so the numbers are comparable:

1. builds a bundle of the reference MLP (111 -> 256 -> 256 -> 128 -> 1, sigmoid;
   random weights, fixed seed) and measures **in-process onnxruntime**: single
   row calls/s and rows/s for 10k-row batches (the baseline);
2. starts ``python -m mlaas4hep.serve`` on 127.0.0.1 (a subprocess), with
   dynamic batching on (``--max-batch 256 --max-delay-ms 2``) and off
   (``--max-batch 1``);
3. drives it from a **separate process**: ``wrk`` (Debian package) with a Lua
   script posting a fixed body, or, without wrk, an aiohttp load generator in a
   child process. It reports req/s and p50/p99 latency for single-row JSON
   requests (OIP ``/v2/models/m/infer``) at 1, 16 and 64 connections, TFaaS
   ``/json`` at 64, and rows/s for binary 10k-row batches;
4. writes a Markdown table (``--out``) and prints JSON.

``--protocols`` compares the protocols instead (``bench/RESULTS-serve-grpc.md``):
single-row requests over gRPC and HTTP at 1 and 64 clients, one and two
workers, loaded by wrk, an aiohttp client, a grpc.aio client
(``bench/_grpcload.py``) and Triton's ``perf_analyzer`` (installed by
``.ci/perf-analyzer.sh``; skipped when absent), and **MLServer 1.7** serving
the same ONNX MLP (``bench/mlserver/``; ``--mlserver`` names its ``mlserver``
command, by default ``/tmp/mlserver-venv/bin/mlserver`` when present).

The load generators share the machine's cores with the server: on a 2-core
machine that costs the server part of a core, and the figures include it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_model

from mlaas4hep.localservers import free_port

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_BIN = "/tmp/mlserver-venv/bin/mlserver"
SIZES = (111, 256, 256, 128, 1)


def mlp_onnx(sizes=SIZES, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        act = "Relu" if i < len(sizes) - 2 else "Sigmoid"
        prev = "probs" if act == "Sigmoid" else f"h{i}"
        nodes.append(helper.make_node(act, [f"a{i}"], [prev]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_bundle(root: Path) -> Path:
    from mlaas4hep import bundle

    path = root / "repo" / "mlp" / "1"
    bundle.write(
        path,
        mlp_onnx(),
        None,
        ["bkg", "sig"],
        name="mlp",
        framework="onnx",
        features=[f"f{i}" for i in range(SIZES[0])],
        description="reference MLP 111-256-256-128-1",
    )
    return path


# ----------------------------------------------------------------- baseline
def in_process(path: Path, seconds: float) -> dict:
    """onnxruntime in this process, same bundle, default threads: the baseline."""
    from mlaas4hep import bundle

    p = bundle.load(path)
    rng = np.random.default_rng(1)
    one = rng.random((1, SIZES[0]), dtype=np.float32)
    big = rng.random((10_000, SIZES[0]), dtype=np.float32)
    for _ in range(200):
        p.predict(one)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            p.predict(one)
        n += 100
    single = n / (time.perf_counter() - t0)
    p.predict(big)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        p.predict(big)
        n += 1
    rows = n * 10_000 / (time.perf_counter() - t0)
    return {"single_row_calls_per_s": single, "batch_10k_rows_per_s": rows}


# ----------------------------------------------------------------- server
class Server:
    def __init__(self, repo: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="mlaas4hep-bench-", suffix=".log", delete=False)  # noqa: SIM115 (lives with the server)
        cmd = [
            sys.executable,
            "-m",
            "mlaas4hep.serve",
            "--repo",
            str(repo),
            "--port",
            str(self.port),
            "--no-auth",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")

    def batches(self) -> tuple[float, float]:
        import httpx

        text = httpx.get(self.url + "/metrics").text
        c = re.search(r'mlaas4hep_batch_size_rows_count\{model="mlp"\} (\S+)', text)
        s = re.search(r'mlaas4hep_batch_size_rows_sum\{model="mlp"\} (\S+)', text)
        return (float(c.group(1)), float(s.group(1))) if c else (0.0, 0.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


# ----------------------------------------------------------------- load generators
LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "{ctype}"
{extra}
"""


def _unit(v: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", v)
    num, unit = float(m.group(1)), m.group(2)
    return num * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: bytes, headers: dict, conns: int, seconds: float, work: Path) -> dict:
    bf, lf = work / f"body-{conns}-{len(body)}", work / f"post-{conns}-{len(body)}.lua"
    bf.write_bytes(body)
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    lf.write_text(LUA.format(body=bf, ctype=headers.get("Content-Type", "application/json"), extra=extra))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(lf),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {p: _unit(v) for p, v in re.findall(r"\s(50|99)%\s+(\S+)", out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": rps,
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "errors": int(errors.group(1)) if errors else 0,
    }


def run_aiohttp(url: str, body: bytes, headers: dict, conns: int, seconds: float, work: Path) -> dict:
    """Fallback load generator: aiohttp in a child process."""
    bf = work / f"body-{conns}-{len(body)}"
    bf.write_bytes(body)
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, str(bf), json.dumps(headers), str(conns), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _loadgen(url: str, body_file: str, headers: str, conns: int, seconds: float) -> None:
    import aiohttp

    body, hdrs = Path(body_file).read_bytes(), json.loads(headers)
    lat: list[float] = []
    errors = 0

    async def worker(s, stop):
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers=hdrs) as r:
                await r.read()
                errors += r.status != 200
            lat.append(time.perf_counter() - t0)

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(s, t0 + seconds) for _ in range(conns)))
            return time.perf_counter() - t0

    dt = asyncio.run(main())
    a = np.array(lat) * 1e3
    print(
        json.dumps(
            {
                "req_per_s": len(a) / dt,
                "p50_ms": float(np.percentile(a, 50)),
                "p99_ms": float(np.percentile(a, 99)),
                "errors": errors,
            }
        )
    )


# ----------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-serve.md"))
    ap.add_argument("--loadgen", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument(
        "--protocols",
        action="store_true",
        help="only compare gRPC with HTTP (single-row requests, 1 and 64 clients); "
        "writes bench/RESULTS-serve-grpc.md unless --out is given",
    )
    ap.add_argument(
        "--mlserver",
        help=f"with --protocols: the mlserver command of a separate venv (default {MLSERVER_BIN} when present)",
    )
    args = ap.parse_args()
    if args.loadgen:
        url, bf, hdr, conns, secs = args.loadgen
        _loadgen(url, bf, hdr, int(conns), float(secs))
        return
    if args.protocols:
        out = args.out if "--out" in sys.argv else str(ROOT / "bench" / "RESULTS-serve-grpc.md")
        mlserver = args.mlserver or (MLSERVER_BIN if Path(MLSERVER_BIN).exists() else None)
        protocols(args.duration, out, mlserver)
        return
    import orjson

    load = run_wrk if shutil.which("wrk") else run_aiohttp
    tool = "wrk 4.1 (1 thread)" if load is run_wrk else "aiohttp client process"
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-"))
    path = make_bundle(work)
    loadavg = os.getloadavg()
    base = in_process(path, min(args.duration, 5.0))
    print("in-process onnxruntime:", base, flush=True)

    rng = np.random.default_rng(2)
    row = rng.random(SIZES[0], dtype=np.float32)
    single = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SIZES[0]], "data": row.tolist()}]}
    )
    tfaas = orjson.dumps({"model": "mlp", "keys": [f"f{i}" for i in range(SIZES[0])], "values": row.tolist()})
    big = rng.random((10_000, SIZES[0]), dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(big.shape),
                    "parameters": {"binary_data_size": big.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    binary = header + big.tobytes()
    bin_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }

    rows: list[dict] = []
    configs = [
        ("on", 1, ["--max-batch", "256", "--max-delay-ms", "2"], (1, 16, 64), True),
        ("off", 1, ["--max-batch", "1"], (1, 16, 64), False),
        ("on", 2, ["--max-batch", "256", "--max-delay-ms", "2", "--workers", "2"], (16, 64), False),
    ]
    for mode, workers, extra, clients, with_binary in configs:
        srv = Server(work / "repo", *extra)
        try:
            infer = srv.url + "/v2/models/mlp/infer"
            load(infer, single, {}, 4, 2, work)  # warm-up
            for conns in clients:
                b0 = srv.batches() if workers == 1 else (0.0, 0.0)
                r = load(infer, single, {}, conns, args.duration, work)
                b1 = srv.batches() if workers == 1 else (0.0, 0.0)
                r.update(
                    kind="single row, JSON, /v2 infer",
                    batching=mode,
                    workers=workers,
                    clients=conns,
                    loadavg=os.getloadavg()[0],
                )
                if workers == 1:
                    r["rows_per_batch"] = (b1[1] - b0[1]) / max(1.0, b1[0] - b0[0])
                rows.append(r)
                print(r, flush=True)
            r = load(srv.url + "/json", tfaas, {}, 64, args.duration, work)
            r.update(
                kind="single row, TFaaS /json",
                batching=mode,
                workers=workers,
                clients=64,
                loadavg=os.getloadavg()[0],
            )
            rows.append(r)
            print(r, flush=True)
            if with_binary:
                for conns in (1, 2):
                    # the baseline again, right before, so both see the same machine load
                    ref = in_process(path, min(args.duration, 5.0))["batch_10k_rows_per_s"]
                    r = load(infer, binary, bin_headers, conns, args.duration, work)
                    r.update(
                        kind="10k-row binary batch",
                        batching=mode,
                        workers=workers,
                        clients=conns,
                        rows_per_s=r["req_per_s"] * 10_000,
                        baseline_rows_per_s=ref,
                        loadavg=os.getloadavg()[0],
                    )
                    rows.append(r)
                    print(r, flush=True)
        finally:
            srv.stop()
    shutil.rmtree(work, ignore_errors=True)

    result = {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "loadavg_at_start": loadavg,
        },
        "load_generator": tool,
        "baseline": base,
        "server": rows,
    }
    text, prev = markdown(result), Path(args.out).read_text() if Path(args.out).exists() else ""
    if HAND in prev:  # keep the sections written by other benchmarks below the generated table
        text += "\n" + prev[prev.index(HAND) :]
    Path(args.out).write_text(text)
    print(json.dumps(result, indent=1))


# ----------------------------------------------------------------- gRPC vs HTTP
def run_grpc(addr: str, body: bytes, conns: int, seconds: float, work: Path) -> dict:
    """Triton's ModelInfer over gRPC: a grpc.aio client in a child process (bench/_grpcload.py)."""
    bf = work / f"grpc-body-{len(body)}"
    bf.write_bytes(body)
    script = Path(__file__).with_name("_grpcload.py")
    out = subprocess.run(
        [sys.executable, str(script), addr, str(bf), str(conns), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


PA_DIR = ROOT / ".venv" / "perf_analyzer"  # where .ci/perf-analyzer.sh installs it


def perf_analyzer() -> tuple[str, dict] | None:
    """(binary, environment) of Triton's perf_analyzer, or None (``.ci/perf-analyzer.sh`` installs it)."""
    pa = os.environ.get("PERF_ANALYZER") or (str(PA_DIR / "perf_analyzer") if PA_DIR.exists() else None)
    pa = pa or shutil.which("perf_analyzer")
    if not pa:
        return None
    env = dict(os.environ)
    lib = Path(pa).resolve().parent / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    ok = subprocess.run([pa, "--version"], capture_output=True, env=env).returncode == 0
    return (pa, env) if ok else None


def run_pa(pa: tuple[str, dict], protocol: str, url: str, conns: int, seconds: float, batch: int = 1) -> dict:
    """perf_analyzer, requests of ``batch`` rows, ``conns`` concurrent synchronous clients.

    When it does not reach a stable measurement (the machine is shared), the
    mean of its passes is taken and the latencies are left out.
    """
    cmd = [
        pa[0],
        "-m",
        os.environ.get("PA_MODEL", "mlp"),
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        str(batch),
        "--concurrency-range",
        str(conns),
    ]
    cmd += ["--measurement-interval", str(int(seconds * 1000)), "-s", "30", "-r", "6", "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=pa[1], timeout=600).stdout

    def grab(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    rps = grab(r"Throughput: ([\d.]+) infer/sec")
    passes = [float(v) for v in re.findall(r"Pass \[\d+\] throughput: ([\d.]+)", out)]
    if rps is None and not passes:
        raise RuntimeError(f"perf_analyzer failed: {out[-2000:]}")
    p50, p99 = grab(r"p50 latency: (\d+) usec"), grab(r"p99 latency: (\d+) usec")
    return {
        "req_per_s": rps if rps is not None else sum(passes) / len(passes),
        "p50_ms": None if rps is None or p50 is None else p50 / 1e3,
        "p99_ms": None if rps is None or p99 is None else p99 / 1e3,
        "errors": 0,
        "stable": rps is not None,
    }


MLSERVER_DIR = Path(__file__).with_name("mlserver")
HAND = "<!-- written by hand below: bench/serve.py --protocols keeps it -->"


class MLServer:
    """MLServer 1.7 serving the same ONNX MLP with bench/mlserver/ (onnxruntime runtime, adaptive batching).

    ``mlserver`` is the command from a separate virtual environment
    (``python -m venv /tmp/mlserver-venv && /tmp/mlserver-venv/bin/pip install "mlserver==1.7.*" onnxruntime``):
    MLServer pins its own FastAPI, Starlette and protobuf, so it stays out of the project's.
    """

    def __init__(self, mlserver: str, model: bytes, work: Path):
        d = work / "mlserver"
        d.mkdir()
        for f in ("runtime.py", "settings.json", "model-settings.json"):
            shutil.copy(MLSERVER_DIR / f, d / f)
        (d / "model.onnx").write_bytes(model)
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(
            MLSERVER_HTTP_PORT=str(self.http_port),
            MLSERVER_GRPC_PORT=str(self.grpc_port),
            MLSERVER_METRICS_PORT=str(free_port()),
        )
        self.log = d / "mlserver.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [mlserver, "start", str(d)], cwd=d, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v2/models/mlp/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlserver did not start: {self.log.read_text()[-2000:]}")

    def version(self) -> str:
        import httpx

        return str(httpx.get(self.url + "/v2", timeout=5).json().get("version", "?"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def protocols(seconds: float, out: str, mlserver: str | None) -> None:
    """Single-row requests, HTTP vs gRPC, on our server (1 and 2 workers) and on MLServer, one run.

    Load generators, each a separate process: wrk (HTTP JSON), an aiohttp
    client, a grpc.aio client sending a pre-serialized ModelInferRequest
    (raw_input_contents), and Triton's perf_analyzer (HTTP binary tensors and
    gRPC, when installed: ``.ci/perf-analyzer.sh``). perf_analyzer needs
    Triton's ModelConfig, which MLServer lacks, so MLServer gets the others.
    """
    import orjson
    from _grpcload import request_bytes

    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-"))
    path = make_bundle(work)
    base = in_process(path, min(seconds, 3.0))
    row = np.random.default_rng(2).random(SIZES[0], dtype=np.float32)
    single = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SIZES[0]], "data": row.tolist()}]}
    )
    grpc_body = request_bytes(SIZES[0])
    pa = perf_analyzer()
    has_wrk = shutil.which("wrk") is not None
    rows: list[dict] = []
    loadavg0 = os.getloadavg()

    def point(
        server: str, kind: str, tool: str, clients: int, srv: Any, fn: Callable[..., dict], *a: Any
    ) -> None:
        b0 = srv.batches() if srv is not None else None
        r = fn(*a)
        if srv is not None and b0 is not None:
            b1 = srv.batches()
            r["rows_per_batch"] = (b1[1] - b0[1]) / max(1.0, b1[0] - b0[0])
        r.update(server=server, kind=kind, tool=tool, clients=clients, loadavg=os.getloadavg()[0])
        rows.append(r)
        print(r, flush=True)

    try:
        for workers in (1, 2):
            grpc_port = free_port()
            extra = ["--max-batch", "256", "--max-delay-ms", "2", "--grpc-port", str(grpc_port)]
            if workers > 1:
                extra += ["--workers", str(workers)]
            srv = Server(work / "repo", *extra)
            name = f"mlaas4hep, {workers} worker{'s' if workers > 1 else ''}"
            mon = srv if workers == 1 else None  # with 2 workers /metrics is one worker's
            try:
                infer = srv.url + "/v2/models/mlp/infer"
                addr = f"127.0.0.1:{grpc_port}"
                time.sleep(1.0 if workers == 1 else 3.0)  # the workers' gRPC listeners
                run_aiohttp(infer, single, {}, 4, 2, work)  # warm-up
                run_grpc(addr, grpc_body, 4, 2, work)
                for conns in (1, 64) if workers == 1 else (64,):
                    point(
                        name,
                        "gRPC, raw_input_contents",
                        "grpc.aio client",
                        conns,
                        mon,
                        run_grpc,
                        addr,
                        grpc_body,
                        conns,
                        seconds,
                        work,
                    )
                    if workers == 1:
                        point(
                            name,
                            "HTTP, JSON",
                            "aiohttp client",
                            conns,
                            mon,
                            run_aiohttp,
                            infer,
                            single,
                            {},
                            conns,
                            seconds,
                            work,
                        )
                    if has_wrk:
                        point(
                            name,
                            "HTTP, JSON",
                            "wrk (1 thread)",
                            conns,
                            mon,
                            run_wrk,
                            infer,
                            single,
                            {},
                            conns,
                            seconds,
                            work,
                        )
                if pa is not None:
                    for _ in range(2):  # twice, alternating: the machine's load drifts
                        point(
                            name,
                            "gRPC, raw_input_contents",
                            "perf_analyzer",
                            64,
                            mon,
                            run_pa,
                            pa,
                            "grpc",
                            addr,
                            64,
                            seconds,
                        )
                        point(
                            name,
                            "HTTP, binary tensors",
                            "perf_analyzer",
                            64,
                            mon,
                            run_pa,
                            pa,
                            "http",
                            srv.url.removeprefix("http://"),
                            64,
                            seconds,
                        )
            finally:
                srv.stop()
        if mlserver:
            ml = MLServer(mlserver, (path / "model.onnx").read_bytes(), work)
            name = f"MLServer {ml.version()}"
            try:
                infer = ml.url + "/v2/models/mlp/infer"
                addr = f"127.0.0.1:{ml.grpc_port}"
                hdr = {"Content-Type": "application/json"}
                run_aiohttp(infer, single, hdr, 4, 2, work)  # warm-up
                run_grpc(addr, grpc_body, 4, 2, work)
                for conns in (1, 64):
                    point(
                        name,
                        "gRPC, raw_input_contents",
                        "grpc.aio client",
                        conns,
                        None,
                        run_grpc,
                        addr,
                        grpc_body,
                        conns,
                        seconds,
                        work,
                    )
                    if has_wrk:
                        point(
                            name,
                            "HTTP, JSON",
                            "wrk (1 thread)",
                            conns,
                            None,
                            run_wrk,
                            infer,
                            single,
                            hdr,
                            conns,
                            seconds,
                            work,
                        )
                    else:
                        point(
                            name,
                            "HTTP, JSON",
                            "aiohttp client",
                            conns,
                            None,
                            run_aiohttp,
                            infer,
                            single,
                            hdr,
                            conns,
                            seconds,
                            work,
                        )
            finally:
                ml.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = [
        "## gRPC vs HTTP, and MLServer (`bench/serve.py --protocols`)",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}; load average "
        f"at start {', '.join(f'{v:.1f}' for v in loadavg0)}: other jobs share the cores (last column), so "
        "compare rows measured close together, not with other runs. Model: MLP 111-256-256-128-1 (ONNX), "
        "single-row requests. mlaas4hep: `--max-batch 256 --max-delay-ms 2`, HTTP and gRPC in the same "
        "process(es). MLServer: bench/mlserver/ (onnxruntime runtime, adaptive batching 256 rows / 2 ms, "
        f"`parallel_workers: 0`). Each load generator is a separate process on the same cores; {seconds:g} s "
        f"per point. In-process onnxruntime, same run: {base['single_row_calls_per_s']:,.0f} single-row calls/s.",
        "",
        "| server | protocol | load generator | clients | req/s | p50 ms | p99 ms | rows/batch | errors | load avg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rows:
        rb = num(x.get("rows_per_batch"), ".1f")
        lines.append(
            f"| {x['server']} | {x['kind']} | {x['tool']} | {x['clients']} | {x['req_per_s']:,.0f} | "
            f"{num(x['p50_ms'], '.2f')} | {num(x['p99_ms'], '.2f')} | {rb} | {x['errors']} | {x['loadavg']:.1f} |"
        )
    if any(x.get("stable") is False for x in rows):
        lines += ["", "–: perf_analyzer found no stable window; req/s is the mean of its passes."]
    text = "\n".join(lines) + "\n"
    prev = Path(out).read_text() if Path(out).exists() else ""
    if HAND in prev:  # keep the analysis written by hand below the generated table
        text += "\n" + prev[prev.index(HAND) :]
    Path(out).write_text(text)
    print(json.dumps(rows, indent=1))


def markdown(r: dict) -> str:
    m, b = r["machine"], r["baseline"]
    lines = [
        "## Inference server (`bench/serve.py`)",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}; load average at start "
        f"{', '.join(f'{v:.1f}' for v in m['loadavg_at_start'])} (other jobs share the cores: see the last column). "
        f"Load generator: {r['load_generator']}, a separate process on the same cores. "
        "Model: MLP 111-256-256-128-1 (ONNX). Server: `mlaas4hep serve` (uvicorn + uvloop + httptools).",
        "",
        f"Baseline, in-process onnxruntime, same run: **{b['single_row_calls_per_s']:,.0f} single-row calls/s**, "
        f"**{b['batch_10k_rows_per_s']:,.0f} rows/s** in 10k-row batches.",
        "",
        "| requests | batching | workers | clients | req/s | p50 ms | p99 ms | rows/batch | rows/s (vs in-process) "
        "| load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["server"]:
        rb = f"{x['rows_per_batch']:.1f}" if "rows_per_batch" in x else ""
        rs = (
            (
                f"{x['rows_per_s']:,.0f} ({x['rows_per_s'] / x['baseline_rows_per_s']:.2f}× of "
                f"{x['baseline_rows_per_s']:,.0f})"
            )
            if "rows_per_s" in x
            else ""
        )
        lines.append(
            f"| {x['kind']} | {x['batching']} | {x['workers']} | {x['clients']} | {x['req_per_s']:,.0f} | "
            f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {rb} | {rs} | {x['loadavg']:.1f} |"
        )
    lines += ["", "TFaaS (Go, 16 cores, `hey`): 400–480 req/s at 100–200 clients.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
