"""Server CPU per gRPC ModelInfer, front end A against B, alternating: ``python bench/grpc_ab.py``.

``python bench/grpc_ab.py [--seconds 8] [--rounds 2] [--env NAME=VALUE ...]``

Each ``--env`` is one server build (environment variables for ``mlaas4hep
serve``, e.g. ``MLAAS4HEP_GRPC_THREADS=16``; ``-`` is the default build). For
each round every build serves the ONNX MLP of ``bench/serve.py`` and
perf_analyzer sends it single-row gRPC requests at 64 concurrent calls, then
HTTP binary-tensor requests on the same server as a reference. Printed: req/s
and the server's CPU per request (user + system of all its threads from
``/proc/PID/stat`` over the requests ``/metrics`` counted), which hardly depends
on how much of a shared machine the server got, and the load average.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve import Server, make_bundle, perf_analyzer, run_pa

from mlaas4hep.localservers import free_port


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _served(srv: Server) -> float:
    import httpx

    text = httpx.get(srv.url + "/metrics").text
    return sum(
        float(v) for v in re.findall(r'mlaas4hep_inference_requests_total\{model="mlp"[^}]*\} (\S+)', text)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--env", action="append", default=None, help="NAME=VALUE[,NAME=VALUE] per build; - = default"
    )
    a = p.parse_args()
    pa = perf_analyzer()
    if pa is None:
        raise SystemExit("perf_analyzer not found (.ci/perf-analyzer.sh installs it)")
    builds = a.env or ["-", "MLAAS4HEP_GRPC_THREADS=16"]
    work = Path(tempfile.mkdtemp(prefix="grpc-ab-"))
    make_bundle(work)
    print("| build | protocol | req/s | server CPU per request (µs) | load avg |\n|---|---|---:|---:|---:|")
    for _ in range(a.rounds):
        for build in builds:
            env = dict(kv.split("=", 1) for kv in build.split(",") if kv != "-")
            saved = dict(os.environ)
            os.environ.update(env)
            grpc_port = free_port()
            try:
                srv = Server(
                    work / "repo", "--max-batch", "256", "--max-delay-ms", "2", "--grpc-port", str(grpc_port)
                )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            try:
                time.sleep(1.0)
                run_pa(pa, "grpc", f"127.0.0.1:{grpc_port}", 8, 1)  # warm-up
                for proto, url in (
                    ("grpc", f"127.0.0.1:{grpc_port}"),
                    ("http", srv.url.removeprefix("http://")),
                ):
                    c0, n0 = _cpu(srv.proc.pid), _served(srv)
                    r = run_pa(pa, proto, url, 64, a.seconds)
                    c1, n1 = _cpu(srv.proc.pid), _served(srv)
                    us = (c1 - c0) / max(n1 - n0, 1) * 1e6
                    load = os.getloadavg()[0]
                    print(
                        f"| {build} | {proto} | {r['req_per_s']:,.0f} | {us:,.0f} | {load:.1f} |", flush=True
                    )
            finally:
                srv.stop()


if __name__ == "__main__":
    main()
