"""Replicas behind nginx against one replica direct: ``python bench/replicas.py``.

    .venv/bin/python bench/replicas.py [--seconds 8] [--rounds 1] [--out FILE]

Starts three ``mlaas4hep serve`` replicas of the reference MLP of ``bench/serve.py`` on one
repository and, for 1, 2 and 3 of them, nginx with the shipped ``deploy/nginx/mlaas4hep.conf``
pointed at them (``mlaas4hep.localservers.LoadBalancer``). Triton's perf_analyzer sends
single-row requests at concurrency 32, over HTTP and over gRPC: to replica 1 directly, then
through nginx with 1, 2 and 3 replicas, all in one run. It prints a Markdown table: req/s, p99,
and the load average after each point. On a 2-core machine this shows what the balancer costs
(every process shares the same two cores); on a many-core host, how the replicas scale.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve import make_bundle, perf_analyzer, run_pa

from mlaas4hep.localservers import LoadBalancer, Replica

CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "mlaas4hep.conf"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    pa = perf_analyzer()
    if pa is None:
        raise SystemExit("perf_analyzer not found (.ci/perf-analyzer.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="replicas-"))
    make_bundle(work)
    replicas = [Replica(work / "repo", "--no-auth").start() for _ in range(3)]
    rows = ["| setup | protocol | req/s | p99 (ms) | load avg |", "|---|---|---:|---:|---:|"]
    try:
        for _ in range(a.rounds):
            points = [("replica 1 direct", None, replicas[0])] + [
                (f"nginx, {n} replica{'s' if n > 1 else ''}", n, None) for n in (1, 2, 3)
            ]
            for label, n, direct in points:
                lb = LoadBalancer(CONF, replicas[:n]) if n else None
                try:
                    for proto in ("http", "grpc"):
                        if direct is not None:
                            url = f"127.0.0.1:{direct.port if proto == 'http' else direct.grpc_port}"
                        else:
                            assert lb is not None
                            url = f"127.0.0.1:{lb.port if proto == 'http' else lb.grpc_port}"
                        r = run_pa(pa, proto, url, 32, a.seconds)
                        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
                        row = f"| {label} | {proto} | {r['req_per_s']:,.0f} | {p99} | {os.getloadavg()[0]:.1f} |"
                        rows.append(row)
                        print(row, flush=True)
                finally:
                    if lb is not None:
                        lb.stop()
    finally:
        for r in replicas:
            r.stop()
    table = "\n".join(rows)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
