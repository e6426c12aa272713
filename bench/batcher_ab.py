"""Single-row latency of two source trees of the server, alternating: ``python bench/batcher_ab.py A B``.

``python bench/batcher_ab.py main=/work/main/src new=src [--rounds 3] [--seconds 3] [--points grpc1,http1,grpc64,http64] [--extra "new=--threads 1"] [--env "new=MLAAS4HEP_COMPILED=0"]``

Each argument is a ``src`` directory (put first on ``PYTHONPATH`` of the
server process; ``LABEL=DIR`` names it). For each round, each point and each
tree in turn (the order rotates by round, so the shared machine's drift falls
on both alike), a fresh server (``--max-batch 1024 --max-delay-ms 2
--grpc-frontend wire``) serves the ONNX MLP of ``bench/serve.py`` and Triton's
perf_analyzer sends it single-row requests (``grpc1`` ... ``http64``: protocol
and clients), 1000-row requests from 4 clients (``grpc1000``, ``http1000``), or
1000-row requests from one gRPC client while 8 HTTP clients send single rows to
a second model (``beside1000``). Printed per measurement: rows/s (the column
says req/s: single rows), p50/p99, the server's CPU per request of the measured model
(user + system, from ``/proc``; with ``beside1000`` it includes the other
model's work), the measured model's mean batch size
(``/metrics``), and the load average; then the medians and the ratio of each
tree to the first.

``--rtt-ms 1`` puts a proxy that delays every byte by half that each way
(``bench/_delayproxy.py``) between perf_analyzer and the server: a network's
round trip, which loopback does not have (the CPU the proxy takes is the
same for every tree).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _delayproxy import delayed
from grpc_ab import _cpu, _served
from serve import Server, make_bundle, perf_analyzer, run_pa

from mlaas4hep.localservers import free_port

POINTS = {
    "grpc1": ("grpc", 1, 1),
    "http1": ("http", 1, 1),
    "grpc64": ("grpc", 64, 1),
    "http64": ("http", 64, 1),
    "grpc1000": ("grpc", 4, 1000),  # 1000-row requests, 4 clients
    "http1000": ("http", 4, 1000),
    "beside1000": ("grpc", 1, 1000),  # 1 client of 1000-row requests while another model serves single rows
    "grpc1000x1": ("grpc", 1, 1000),  # 1000-row requests, one client: a call's latency
}
#: The points measured while perf_analyzer's clients (this many, single rows over HTTP) load a second model.
BESIDE = {"beside1000": 8}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", help="[LABEL=]SRC_DIR of each server build")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--points", default="grpc1,http1,grpc64,http64", help=f"of {', '.join(POINTS)}")
    p.add_argument(
        "--extra", action="append", default=[], help="LABEL=ARGS: more server options of one build"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        help="LABEL=VAR=VALUE: an environment variable of one build's server (e.g. MLAAS4HEP_COMPILED=0)",
    )
    p.add_argument(
        "--rtt-ms", type=float, default=0.0, help="a network's round trip between client and server"
    )
    a = p.parse_args()
    pa = perf_analyzer()
    if pa is None:
        raise SystemExit("perf_analyzer not found (.ci/perf-analyzer.sh installs it)")
    trees = [(t.split("=", 1) if "=" in t else (t, t)) for t in a.trees]
    extra = {k: shlex.split(v) for k, v in (e.split("=", 1) for e in a.extra)}
    envs: dict[str, dict[str, str]] = {}
    for e in a.env:
        label, var, value = e.split("=", 2)
        envs.setdefault(label, {})[var] = value
    work = Path(tempfile.mkdtemp(prefix="batcher-ab-"))
    make_bundle(work)
    shutil.copytree(work / "repo" / "mlp", work / "repo" / "other")  # the model of the BESIDE load
    rows: dict[tuple[str, str], list[dict]] = {}
    print("| round | point | tree | req/s | p50 ms | p99 ms | CPU µs/req | rows/batch | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in range(a.rounds):
        for point in a.points.split(","):
            proto, conns, batch = POINTS[point]
            order = trees[r % len(trees) :] + trees[: r % len(trees)]
            for label, src in order:
                own = {"PYTHONPATH": str(Path(src).resolve()), **envs.get(label, {})}
                saved = {k: os.environ.get(k) for k in own}
                os.environ.update(own)
                grpc_port = free_port()
                try:
                    srv = Server(
                        work / "repo",
                        *("--max-batch", "1024", "--max-delay-ms", "2"),
                        *("--grpc-port", str(grpc_port), "--grpc-frontend", "wire"),
                        *extra.get(label, []),
                    )
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k)
                        else:
                            os.environ[k] = v
                beside = None
                try:
                    url = f"127.0.0.1:{grpc_port}" if proto == "grpc" else srv.url.removeprefix("http://")
                    beside = _load_beside(pa, srv, BESIDE[point]) if point in BESIDE else None
                    with delayed(url, a.rtt_ms) as url:
                        run_pa(pa, proto, url, conns, 1.0, batch)  # warm-up
                        c0, n0, b0 = _cpu(srv.proc.pid), _served(srv), srv.batches()
                        m = run_pa(pa, proto, url, conns, a.seconds, batch)
                        c1, n1, b1 = _cpu(srv.proc.pid), _served(srv), srv.batches()
                finally:
                    if beside is not None:
                        beside.kill()
                        beside.wait()
                    srv.stop()
                m["cpu_us"] = (c1 - c0) / max(n1 - n0, 1) * 1e6
                m["rows_per_batch"] = (b1[1] - b0[1]) / max(b1[0] - b0[0], 1)
                m["load"] = os.getloadavg()[0]
                rows.setdefault((point, label), []).append(m)
                f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
                print(
                    f"| {r} | {point} | {label} | {m['req_per_s']:,.0f} | {f(m['p50_ms'])} | {f(m['p99_ms'])} "
                    f"| {m['cpu_us']:.0f} | {m['rows_per_batch']:.1f} | {m['load']:.1f} |",
                    flush=True,
                )
    print("\n| point | tree | req/s (median) | ratio | p50 ms | p99 ms | CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for point in a.points.split(","):
        base = None
        for label, _ in trees:
            ms = rows[(point, label)]

            def med(k: str, ms: list[dict] = ms) -> str:
                vs = [m[k] for m in ms if m[k] is not None]
                return f"{statistics.median(vs):.2f}" if vs else "–"

            rps = statistics.median(m["req_per_s"] for m in ms)
            base = base or rps
            cpu = statistics.median(m["cpu_us"] for m in ms)
            print(
                f"| {point} | {label} | {rps:,.0f} | {rps / base:.2f}× | {med('p50_ms')} | {med('p99_ms')} "
                f"| {cpu:.0f} |"
            )


def _load_beside(pa: tuple[str, dict], srv: Server, clients: int) -> subprocess.Popen:
    """perf_analyzer's ``clients`` sending single rows to the model ``other`` until killed."""
    cmd = [pa[0], "-m", "other", "-u", srv.url.removeprefix("http://"), "-i", "http"]
    cmd += ["--concurrency-range", str(clients), "--measurement-interval", "60000", "-s", "99", "-r", "10"]
    return subprocess.Popen(cmd, env=pa[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
