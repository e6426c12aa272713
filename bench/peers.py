"""mlaas4hep against NVIDIA Triton 2.51 and MLServer 1.7, side by side on the same cores.

    bench/peers.sh [--rounds 2] [--duration 4] [--points grpc1,grpc64,...] [--ours "LABEL=ARGS"]...

``bench/peers.sh`` builds or finds Triton, MLServer and perf_analyzer, then
runs this file. All servers serve the ONNX MLP of ``bench/serve.py``
(111-256-256-128-1) with the same dynamic batching (up to 1024 rows, 2 ms), on
127.0.0.1, all started at once and idle but for the one being measured. The
load of every point comes from Triton's own ``perf_analyzer`` (synchronous
clients, HTTP binary tensors or gRPC ``raw_input_contents``); MLServer has no
``ModelConfig``, so it gets the project's load generators instead (a grpc.aio
client with a pre-serialized request, an aiohttp client posting JSON), which
cost the machine less than perf_analyzer's 64 threads.

Triton runs two models from one repository: ``mlp`` with the 2 ms queue delay
and ``mlp_nodelay`` without one (its dynamic batcher then batches only what is
already queued), the configuration that gives Triton its best single-client
latency. The ratio of each point is ours over the **better** of the two.

Each round visits every point, and within a point every server in turn (the
order rotates by round), so the machine's drift (it is shared) falls on all of
them alike; the table gives the median over rounds, the load average (1 min)
seen at each measurement, and the server's CPU time per request (all its
processes, from ``/proc``). The table is printed and written between markers
into ``bench/RESULTS-serve.md`` (``--out``); ``--json`` keeps every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _delayproxy import delayed
from _grpcload import request_bytes
from _machine import cpu_model
from serve import SIZES, MLServer, Server, make_bundle, mlp_onnx, perf_analyzer, run_aiohttp, run_grpc

from mlaas4hep.localservers import free_port

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- bench/peers.py: begin (generated, replaced on every run) -->"
END = "<!-- bench/peers.py: end -->"

#: name -> (protocol, rows per request, concurrent clients)
POINTS: dict[str, tuple[str, int, int]] = {
    "grpc1": ("gRPC", 1, 1),
    "grpc64": ("gRPC", 1, 64),
    "http1": ("HTTP", 1, 1),
    "http64": ("HTTP", 1, 64),
    "grpc1000": ("gRPC", 1000, 4),
    "http1000": ("HTTP", 1000, 4),
}

TRITON_CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: 1024
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ {n} ] }} ]
output [ {{ name: "probs", data_type: TYPE_FP32, dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (worker processes), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(f[1])
        times[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


class Triton:
    """tritonserver (nvidia-pytriton's binary) with the onnxruntime backend built by bench/peers.sh."""

    def __init__(self, binary: str, backends: str, model: bytes, work: Path):
        repo = work / "triton"
        for name, delay in (("mlp", 2000), ("mlp_nodelay", 0)):
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "1" / "model.onnx").write_bytes(model)
            (repo / name / "config.pbtxt").write_text(
                TRITON_CONFIG.format(name=name, n=SIZES[0], delay=delay)
            )
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = work / "triton.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        cmd = [binary, "--model-repository", str(repo), "--backend-directory", backends]
        cmd += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        cmd += ["--metrics-port", str(free_port()), "--log-info", "false"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited: {self.log.read_text()[-2000:]}")
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"tritonserver did not start: {self.log.read_text()[-2000:]}")

    def version(self) -> str:
        import httpx

        return str(httpx.get(f"http://127.0.0.1:{self.http_port}/v2", timeout=5).json().get("version", "?"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_pa(
    pa: tuple[str, dict], protocol: str, url: str, model: str, rows: int, conns: int, seconds: float
) -> dict:
    """perf_analyzer: ``conns`` synchronous clients sending ``rows``-row requests; rates are rows/s.

    When it finds no stable window (the machine is shared) the mean of its
    passes is taken, and the latencies of the last pass.
    """
    cmd = [pa[0], "-m", model, "-u", url, "-i", protocol.lower(), "-b", str(rows)]
    cmd += ["--concurrency-range", str(conns), "--measurement-interval", str(int(seconds * 1000))]
    cmd += ["-s", "50", "-r", "5", "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=pa[1], timeout=600).stdout
    rps = re.search(r"Throughput: ([\d.]+) infer/sec", out)
    passes = [float(v) for v in re.findall(r"Pass \[\d+\] throughput: ([\d.]+)", out)]
    if rps is None and not passes:
        raise RuntimeError(f"perf_analyzer failed: {out[-2000:]}")
    p50 = re.findall(r"p50 latency: (\d+) usec", out)
    p99 = re.findall(r"p99 latency: (\d+) usec", out)
    return {
        "rows_per_s": float(rps.group(1)) if rps else sum(passes) / len(passes),
        "p50_ms": float(p50[-1]) / 1e3 if p50 else None,
        "p99_ms": float(p99[-1]) / 1e3 if p99 else None,
        "stable": rps is not None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tritonserver", required=True, help="the tritonserver binary (bench/peers.sh finds it)")
    ap.add_argument("--triton-backends", required=True, help="Triton's --backend-directory")
    ap.add_argument("--mlserver", help="the mlserver command of its own venv (left out: no MLServer)")
    ap.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    ap.add_argument("--rounds", type=int, default=2, help="times every point is measured on every server")
    ap.add_argument("--duration", type=float, default=4.0, help="perf_analyzer's measurement window, seconds")
    ap.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {', '.join(POINTS)}")
    ap.add_argument(
        "--ours",
        action="append",
        metavar="LABEL=ARGS",
        help='a configuration of our server: label, "=", extra `mlaas4hep.serve` options '
        '(repeatable; default "mlaas4hep=")',
    )
    ap.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="a network's round trip between perf_analyzer and every server (bench/_delayproxy.py)",
    )
    ap.add_argument("--no-triton-nodelay", action="store_true", help="only Triton's 2 ms configuration")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "RESULTS-serve.md"), help="'-': print only")
    ap.add_argument("--json", help="also write every measurement here")
    args = ap.parse_args()
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    bad = [p for p in points if p not in POINTS]
    if bad:
        ap.error(f"unknown point(s) {', '.join(bad)}: choose from {', '.join(POINTS)}")
    ours: list[tuple[str, list[str]]] = []
    for spec in args.ours or ["mlaas4hep (wire)=", "mlaas4hep (grpcio)=--grpc-frontend grpcio"]:
        label, sep, extra = spec.partition("=")
        if not sep or not label:
            ap.error(f"--ours wants LABEL=ARGS, got {spec!r}")
        ours.append((label, shlex.split(extra)))
    pa = perf_analyzer()
    if pa is None:
        sys.exit("peers.py: perf_analyzer not found (bench/peers.sh installs it; or set PERF_ANALYZER)")

    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-peers-"))
    make_bundle(work)
    model = mlp_onnx()
    servers: list[dict[str, Any]] = []
    started: list[Any] = []
    try:
        for label, extra in ours:
            grpc_port = free_port()
            srv = Server(
                work / "repo",
                "--max-batch",
                "1024",
                "--max-delay-ms",
                "2",
                "--grpc-port",
                str(grpc_port),
                *extra,
            )
            started.append(srv)
            servers.append(
                dict(
                    name=label,
                    kind="pa",
                    http=srv.url.removeprefix("http://"),
                    grpc=f"127.0.0.1:{grpc_port}",
                    model="mlp",
                    pid=srv.proc.pid,
                    args=" ".join(extra),
                )
            )
        tr = Triton(args.tritonserver, args.triton_backends, model, work)
        started.append(tr)
        tname = f"Triton {tr.version()}"
        for model_name, label in (("mlp", "2 ms"), ("mlp_nodelay", "no delay")):
            if model_name == "mlp_nodelay" and args.no_triton_nodelay:
                continue
            servers.append(
                dict(
                    name=f"{tname} ({label})",
                    kind="pa",
                    http=f"127.0.0.1:{tr.http_port}",
                    grpc=f"127.0.0.1:{tr.grpc_port}",
                    model=model_name,
                    pid=tr.proc.pid,
                    triton=True,
                )
            )
        if args.mlserver and not args.no_mlserver:
            ml = MLServer(args.mlserver, model, work)
            started.append(ml)
            servers.append(
                dict(
                    name=f"MLServer {ml.version()}",
                    kind="own",
                    http=ml.url + "/v2/models/mlp/infer",
                    grpc=f"127.0.0.1:{ml.grpc_port}",
                    model="mlp",
                    pid=ml.proc.pid,
                )
            )
        time.sleep(2.0)  # gRPC listeners of worker processes
        rows: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            for point in points:
                protocol, n, conns = POINTS[point]
                order = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
                for s in order:
                    r = measure(s, protocol, n, conns, args.duration, pa, work, args.rtt_ms)
                    if r is None:
                        continue
                    r.update(round=rnd, point=point, server=s["name"])
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        for s in started:
            s.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    text = table(rows, points, servers, args)
    print(text)
    if args.out != "-":
        write(Path(args.out), text)


def measure(
    s: dict, protocol: str, n: int, conns: int, seconds: float, pa: tuple, work: Path, rtt_ms: float = 0.0
) -> dict | None:
    """One measurement of server ``s``; None where its load generator cannot send this point
    (or, with a round trip, is not perf_analyzer)."""
    load0 = os.getloadavg()[0]
    cpu0 = cpu_seconds(s["pid"])
    t0 = time.perf_counter()
    if s["kind"] == "pa":
        with delayed(s["grpc"] if protocol == "gRPC" else s["http"], rtt_ms) as url:
            r = run_pa(pa, protocol, url, s["model"], n, conns, seconds)
    elif rtt_ms > 0:
        return None
    elif protocol == "gRPC":
        g = run_grpc(s["grpc"], request_bytes(SIZES[0], rows=n), conns, 3 * seconds, work)
        r = {"rows_per_s": g["req_per_s"] * n, "p50_ms": g["p50_ms"], "p99_ms": g["p99_ms"], "stable": True}
    elif n == 1:
        import orjson

        x = np.random.default_rng(2).random((n, SIZES[0]), dtype=np.float32)
        body = orjson.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
                ]
            }
        )
        h = run_aiohttp(s["http"], body, {"Content-Type": "application/json"}, conns, 3 * seconds, work)
        r = {"rows_per_s": h["req_per_s"] * n, "p50_ms": h["p50_ms"], "p99_ms": h["p99_ms"], "stable": True}
    else:
        return None
    dt = time.perf_counter() - t0
    # CPU per request over the whole call (warm-up windows included: a relative, not an absolute, figure)
    r["cpu_s"] = cpu_seconds(s["pid"]) - cpu0
    r["wall_s"] = dt
    r["loadavg"] = max(load0, os.getloadavg()[0])
    return r


def table(rows: list[dict], points: list[str], servers: list[dict], args: argparse.Namespace) -> str:
    def med(xs: list[float | None]) -> float | None:
        v = [x for x in xs if x is not None]
        return statistics.median(v) if v else None

    def fmt(v: float | None, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    ours = [s["name"] for s in servers if not s.get("triton") and s["kind"] == "pa"]
    lines = [
        "| point | server | rows/s (median) | p50 ms | p99 ms | ratio to best Triton | p99 ≤ Triton's "
        "| server CPU µs/row | load avg (1 min) |",
        "|---|---|---:|---:|---:|---:|:---:|---:|---|",
    ]
    for point in points:
        protocol, n, conns = POINTS[point]
        title = f"{protocol}, {'single row' if n == 1 else f'{n}-row batches'}, {conns} client{'s' if conns > 1 else ''}"
        agg = {}
        for s in servers:
            rs = [r for r in rows if r["point"] == point and r["server"] == s["name"]]
            if rs:
                agg[s["name"]] = dict(
                    thr=med([r["rows_per_s"] for r in rs]),
                    p50=med([r["p50_ms"] for r in rs]),
                    p99=med([r["p99_ms"] for r in rs]),
                    load=[r["loadavg"] for r in rs],
                    runs=[r["rows_per_s"] for r in rs],
                    # cores busy over the call / rows per second: CPU per row (warm-up windows included)
                    cpu=med(
                        [r["cpu_s"] / r["wall_s"] / r["rows_per_s"] * 1e6 for r in rs if r["rows_per_s"]]
                    ),
                )
        tri = [a for k, a in agg.items() if k.startswith("Triton")]
        best = max(tri, key=lambda a: a["thr"] or 0.0) if tri else None
        for name, a in agg.items():
            ratio = a["thr"] / best["thr"] if best and best["thr"] and a["thr"] else None
            p99ok = "–"
            if name in ours and best and a["p99"] is not None and best["p99"] is not None:
                p99ok = "yes" if a["p99"] <= best["p99"] else "no"
            runs = "/".join(f"{x / 1e3:.1f}k" for x in a["runs"])
            lines.append(
                f"| {title} | {name} | {fmt(a['thr'], ',.0f')} ({runs}) | {fmt(a['p50'], '.2f')} | "
                f"{fmt(a['p99'], '.2f')} | {fmt(ratio, '.2f')}× | {p99ok} | {fmt(a['cpu'], '.1f')} | "
                f"{', '.join(f'{x:.1f}' for x in a['load'])} |"
            )
    head = [
        BEGIN,
        "## Against Triton and MLServer, side by side (`bench/peers.sh`, issue 25)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {os.cpu_count()} cores "
        f"(shared), Python {platform.python_version()}; {args.rounds} rounds, servers alternating, "
        f"perf_analyzer windows of {args.duration:g} s"
        + (
            f", through a proxy that adds a {args.rtt_ms:g} ms round trip (`bench/_delayproxy.py`)"
            if args.rtt_ms > 0
            else ""
        )
        + ". Ours: "
        + "; ".join(
            f"{s['name']} (`--max-batch 1024 --max-delay-ms 2{' ' + s['args'] if s.get('args') else ''}`)"
            for s in servers
            if not s.get("triton") and s["kind"] == "pa"
        )
        + ". Triton: onnxruntime backend built against the same onnxruntime, 1 CPU instance, max batch 1024, "
        "one model with a 2 ms queue delay and one without. "
        + (
            "MLServer: bench/mlserver/ with its own load generators (grpc.aio, aiohttp JSON). "
            if any(s["kind"] == "own" for s in servers)
            else ""
        )
        + "Rows/s is the median over rounds (each round's figure in brackets); the ratio is to the faster "
        "Triton configuration of that point; CPU µs/row is the server's CPU time (all its processes) per row; "
        "– : perf_analyzer found no stable window (its passes' mean is taken, no latencies).",
        "",
    ]
    return "\n".join(head + lines + ["", END])


def write(path: Path, text: str) -> None:
    """Replace the generated section of ``path`` (or append it)."""
    prev = path.read_text() if path.exists() else ""
    if BEGIN in prev and END in prev:
        prev = prev[: prev.index(BEGIN)] + text + prev[prev.index(END) + len(END) :]
    else:
        prev = prev.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(prev)


if __name__ == "__main__":
    main()
