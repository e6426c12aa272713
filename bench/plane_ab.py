"""The data plane alone (no network): CPU and time per single-row ``DataPlane.infer``, tree A against B.

``python bench/plane_ab.py main=/work/main/src new=src [--rounds 5] [--seconds 2]``

What happens between a front end admitting a request and its reply (batcher,
watchdog, onnxruntime session), without the front ends' parsing and syscalls,
which on a shared machine drown it: each tree (``LABEL=SRC_DIR``, first on
``PYTHONPATH`` of a child process) serves the ONNX MLP of ``bench/serve.py``
through a real :class:`DataPlane` on uvloop, to 1 and to 64 concurrent callers
(each counted in flight as the front ends count them). Printed per
measurement: calls/s, the process's CPU per call (all threads), and the rows
per onnxruntime call; then the medians per tree, alternating by round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
import numpy as np, uvloop
sys.path.insert(0, sys.argv[3])
from serve import make_bundle
from mlaas4hep.serve.auth import Auth
from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.dataplane import DataPlane, InferRequest
from mlaas4hep.serve.metrics import Metrics
from mlaas4hep.serve.repository import Repository

work, seconds = Path(sys.argv[1]), float(sys.argv[2])
if not (work / "repo").exists():
    make_bundle(work)
plane = DataPlane(Repository(work / "repo"), Auth(None), ServeConfig(repo=str(work / "repo"),
                  max_batch=1024, max_delay_ms=2), Metrics(lambda err: 200))
x = np.random.default_rng(1).random((1, 111), dtype=np.float32)

async def client(stop, lat):
    n = 0
    while time.perf_counter() < stop:
        t = time.perf_counter()
        with plane.admitted():
            await asyncio.sleep(0)  # a front end's own turn of the loop (its task starting)
            await plane.infer(InferRequest("mlp", {"x": x}))
        lat.append(time.perf_counter() - t)
        n += 1
    return n

async def main():
    out = {}
    for conc in (1, 64):
        await asyncio.gather(*(client(time.perf_counter() + 0.3, []) for _ in range(conc)))  # warm-up
        h0 = list(plane.metrics.batch.get("mlp", [0.0, 0.0]))
        t0, c0 = time.perf_counter(), time.process_time()
        lat = []
        n = sum(await asyncio.gather(*(client(time.perf_counter() + seconds, lat) for _ in range(conc))))
        t1, c1 = time.perf_counter(), time.process_time()
        h1 = plane.metrics.batch["mlp"]
        calls = sum(h1[:-1]) - sum(h0[:-1])
        out[conc] = {"calls_per_s": n / (t1 - t0), "cpu_us": (c1 - c0) / n * 1e6, "rows": n / max(calls, 1),
                     "p50_us": float(np.percentile(lat, 50)) * 1e6, "p99_us": float(np.percentile(lat, 99)) * 1e6}
    return out

print(json.dumps(uvloop.run(main())))
plane.close()
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", help="LABEL=SRC_DIR")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    a = p.parse_args()
    trees = [t.split("=", 1) for t in a.trees]
    work = tempfile.mkdtemp(prefix="plane-ab-")
    res: dict[tuple[str, int], list[dict]] = {}
    print(
        "| round | tree | callers | calls/s | CPU µs/call | rows/batch | load |\n|---|---|---:|---:|---:|---:|---:|"
    )
    for r in range(a.rounds):
        for label, src in trees[r % len(trees) :] + trees[: r % len(trees)]:
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
            bench = str(Path(__file__).resolve().parent)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, work, str(a.seconds), bench],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for conc, m in json.loads(out.splitlines()[-1]).items():
                res.setdefault((label, int(conc)), []).append(m)
                print(
                    f"| {r} | {label} | {conc} | {m['calls_per_s']:,.0f} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | {m['cpu_us']:.1f} | {m['rows']:.1f} "
                    f"| {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
    print(
        "\n| tree | callers | calls/s (median) | p50 µs | p99 µs | CPU µs/call (median) | rows/batch |"
        "\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for (label, conc), ms in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rate = statistics.median(m["calls_per_s"] for m in ms)
        cpu = statistics.median(m["cpu_us"] for m in ms)
        rows = statistics.median(m["rows"] for m in ms)
        p50 = statistics.median(m["p50_us"] for m in ms)
        p99 = statistics.median(m["p99_us"] for m in ms)
        print(f"| {label} | {conc} | {rate:,.0f} | {p50:.0f} | {p99:.0f} | {cpu:.1f} | {rows:.1f} |")


if __name__ == "__main__":
    main()
