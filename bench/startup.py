"""How long a server takes to start: exec to ``/v2/health/ready``, and its CPU, tree against tree.

    python bench/startup.py --tree old=/tmp/old/src --tree new=src --bundle runs/tth/bundle

Each tree's ``mlaas4hep serve`` (``python -m mlaas4hep.serve`` with ``PYTHONPATH`` set to the
tree) starts on a repository holding the bundle as version 1 (an empty repository without
``--bundle``), the trees alternating; every start is interpreted (``MLAAS4HEP_COMPILED=0``), so
that a tree without a compiled request path is compared fairly. The CPU is the server's own,
from ``wait4`` after Ctrl-C. Prints the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mlaas4hep.localservers import free_port


def start_once(src: str, repo: Path) -> tuple[float, float]:
    """(seconds to ready, CPU seconds of the whole run) of one server from tree ``src``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src, "MLAAS4HEP_COMPILED": "0"}
    cmd = [sys.executable, "-m", "mlaas4hep.serve", "--repo", str(repo), "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = t0 + 60
    while time.perf_counter() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server of {src} exited with {proc.returncode}")
        time.sleep(0.01)
    else:
        proc.kill()
        raise SystemExit(f"the server of {src} was not ready in 60 s")
    ready = time.perf_counter() - t0
    proc.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(proc.pid, 0)
    return ready, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tree", action="append", required=True, metavar="NAME=SRC", help="a source tree (repeat)"
    )
    ap.add_argument("--bundle", type=Path, help="a bundle directory to serve (default: an empty repository)")
    ap.add_argument("--starts", type=int, default=5, help="starts of each tree (default 5)")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    repo = Path(tempfile.mkdtemp(prefix="startup-")) / "repo"
    repo.mkdir()
    if args.bundle:
        shutil.copytree(args.bundle, repo / "model" / "1")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(args.starts):
        for name, src in trees.items():
            runs[name].append(start_once(src, repo))
    print(f"load average {os.getloadavg()[0]:.2f}, {args.starts} starts each")
    print("| tree | ready s (median) | CPU s (median) |\n|---|---:|---:|")
    for name, rs in runs.items():
        ready = statistics.median(r for r, _ in rs)
        cpu = statistics.median(c for _, c in rs)
        print(f"| {name} | {ready:.2f} | {cpu:.2f} |")
    shutil.rmtree(repo.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
