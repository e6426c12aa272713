"""Server CPU per HTTP inference request, source tree A against B, alternating: ``python bench/http_ab.py``.

``python bench/http_ab.py --src main=/work/main/src --src new=src [--seconds 3] [--rounds 3]``

Each ``--src NAME=DIR`` is one build of the server (its sources first on
``PYTHONPATH``). For each round every build serves the ONNX MLP of
``bench/serve.py`` (``--max-batch 1024 --max-delay-ms 2``) and perf_analyzer
sends it HTTP requests with binary tensors (as tritonclient does): single rows
at 1 and 64 concurrent clients, and 1000-row batches at 4 clients. Printed per
point: req/s, p50/p99, and the server's CPU per request (user + system of all
its threads from ``/proc/PID/stat`` over the requests ``/metrics`` counted),
which hardly depends on how much of the shared machine the server got, and the
load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from grpc_ab import _served
from serve import Server, make_bundle, perf_analyzer, run_pa

from mlaas4hep.localservers import free_port


def _cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--points", default="1x1,1x64,1000x4", help="ROWSxCLIENTS,... (default %(default)s)")
    p.add_argument(
        "--grpc", action="store_true", help="also single rows over gRPC (wire front end), 64 clients"
    )
    p.add_argument("--src", action="append", required=True, help="NAME=DIR: a source tree to serve from")
    a = p.parse_args()
    pa = perf_analyzer()
    if pa is None:
        raise SystemExit("perf_analyzer not found (.ci/perf-analyzer.sh installs it)")
    builds = [s.split("=", 1) for s in a.src]
    points = [tuple(int(v) for v in pt.split("x")) for pt in a.points.split(",")]
    work = Path(tempfile.mkdtemp(prefix="http-ab-"))
    make_bundle(work)
    print(
        "| round | build | point | req/s | rows/s | p50 ms | p99 ms | server CPU µs/request (system) | load avg |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for rnd in range(1, a.rounds + 1):
        for name, src in builds:
            saved = dict(os.environ)
            os.environ["PYTHONPATH"] = str(Path(src).resolve())
            grpc = ["--grpc-port", str(free_port()), "--grpc-frontend", "wire"] if a.grpc else []
            try:
                srv = Server(work / "repo", "--max-batch", "1024", "--max-delay-ms", "2", *grpc)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            url = srv.url.removeprefix("http://")
            try:
                time.sleep(0.5)
                run_pa(pa, "http", url, 8, 1.0)  # warm-up
                runs = [("http", url, rows, conns) for rows, conns in points]
                if a.grpc:
                    runs.append(("grpc", f"127.0.0.1:{grpc[1]}", 1, 64))
                for protocol, where, rows, conns in runs:
                    c0, n0 = _cpu(srv.proc.pid), _served(srv)
                    r = run_pa(pa, protocol, where, conns, a.seconds, rows)
                    c1, n1 = _cpu(srv.proc.pid), _served(srv)
                    n = max(n1 - n0, 1)
                    us, sys_us = (sum(c1) - sum(c0)) / n * 1e6, (c1[1] - c0[1]) / n * 1e6
                    point = f"{protocol}, {rows} row{'s' if rows > 1 else ''} × {conns}"
                    rps = r["req_per_s"]
                    p50, p99 = (("–" if v is None else f"{v:.2f}") for v in (r["p50_ms"], r["p99_ms"]))
                    print(
                        f"| {rnd} | {name} | {point} | {rps / rows:,.0f} | {rps:,.0f} | {p50} "
                        f"| {p99} | {us:,.0f} ({sys_us:,.0f}) | {os.getloadavg()[0]:.1f} |",
                        flush=True,
                    )
            finally:
                srv.stop()


if __name__ == "__main__":
    main()
