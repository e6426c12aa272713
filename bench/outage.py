"""What a storage outage costs an epoch read over ``root://``: xrootd killed and restarted.

    python bench/outage.py [--events 100000] [--outage 5] [--workers 0 2] [--timeout 10]

Generates 2 files (signal, background) of --events events, serves them from a
real XRootD server on loopback, and for each --workers setting reads one
epoch twice (chunks of --chunk events, no cache): once undisturbed, once with
the server killed (``SIGKILL``) after a quarter of the units and restarted on
the same port --outage seconds later. Prints, per setting, both epoch times,
the time lost (difference) beyond the outage itself, the retries from
``Dataset.report``, and whether every event came back (ids equal to the
undisturbed epoch's). Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mlaas4hep.generate import generate
from mlaas4hep.io import Chunk, Dataset
from mlaas4hep.io.executor import shutdown_pools
from mlaas4hep.localservers import XRootDServer, public_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model


def epoch(cfg: dict, server: XRootDServer | None = None, outage: float = 0.0) -> tuple[float, Chunk, Dataset]:
    ds = Dataset.from_config(cfg)
    _ = ds.specs  # before the clock, and before any fault
    for _ in ds.chunks(epoch=0):  # first use lays out what the specs pass read (no server reads)
        pass
    units = len(ds.units(1))
    t0 = time.perf_counter()
    chunks, timer = [], None
    for i, ch in enumerate(ds.chunks(epoch=1)):  # read from the server again (no decoded cache)
        chunks.append(ch)
        if server is not None and i == units // 4:
            server.kill()
            timer = threading.Timer(outage, server.start)
            timer.start()
    dt = time.perf_counter() - t0
    if timer is not None:
        timer.join()
    return dt, Chunk.concat(chunks), ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--outage", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()

    data = public_dir("mlaas4hep-outage-")
    generate(data, events=args.events, files=1, seed=3, show_progress=False)
    for p in data.iterdir():
        p.chmod(0o644)
    print(
        f"{cpu_model()}; 2 files x {args.events:,} events, chunks of {args.chunk:,}, timeout {args.timeout:g} s"
    )
    print(
        "workers | undisturbed s | with outage s | lost beyond the outage s | retries (waited s) | skipped | all events"
    )
    with XRootDServer(data) as srv:
        for workers in args.workers:
            cfg = {
                "files": [
                    {"path": srv.url("ttH_0.root"), "label": 1},
                    {"path": srv.url("ttbar_0.root"), "label": 0},
                ],
                "branches": ["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepFlavB"],
                "jagged": {"Jet": 6},
                "chunk_size": args.chunk,
                "shuffle": False,
                "workers": workers,
                "cache_dir": None,
                "timeout": args.timeout,
            }
            t_ok, ref, _ = epoch(cfg)
            t_fault, got, ds = epoch(cfg, srv, args.outage)
            same = len(got) == len(ref) and np.array_equal(got.event_id, ref.event_id)
            print(
                f"{workers:7d} | {t_ok:13.1f} | {t_fault:13.1f} | {t_fault - t_ok - args.outage:24.1f} | "
                f"{ds.report.retries:7d} ({ds.report.retry_wait:4.1f}) | {len(ds.report):7d} | {same} ({len(got):,})"
            )
    shutdown_pools()
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
