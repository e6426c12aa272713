"""Streaming throughput: our reader against plain uproot.iterate + pad, side by side.

    python bench/stream.py [--events 1000000] [--workers N] [--compression zlib] [--data DIR]
    python bench/stream.py --first-use [--events 600000] [--first-use-workers 0,1,2] [--repeats 2]

Generates (or reuses) one NanoAOD-like file of --events events, then measures,
on the same file and branches, in one run:

* baseline: ``uproot.iterate`` + ``ak.pad_none``/``ak.fill_none``/``ak.to_numpy``;
* ours, one process (decode + pad + normalise; no cache);
* ours, N worker processes;
* ours over ``root://`` (a real XRootD server on loopback) and ``http://`` (nginx);
* cached epochs (epochs >= 1 read the decoded cache), sequential and shuffled
  (epoch 1 may share the disk with the write-back of epoch 0's cache files).

Prints a table of events/s with each ratio to the baseline. Not a test.

``--first-use`` measures instead what a physicist's first run costs: each
figure is one fresh Python process, timed from its start (interpreter, imports
and worker pool start included) to the last batch of epoch 0, with an empty
cache directory (so the specs pass runs), against one plain ``uproot.iterate``
+ pad pass in a fresh process. Ours runs with 0, 1 and 2 workers, fused (one
decode per unit, the default) and, for comparison, the two-pass path
(``Dataset(fused=False)``). Runs of each kind alternate, ``--repeats`` times;
the table gives the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np
import uproot
from _machine import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlaas4hep.generate import write_sample
from mlaas4hep.io import Dataset
from mlaas4hep.io.executor import default_workers, shutdown_pools

FLAT = [
    "MET_pt",
    "MET_phi",
    "MET_sumEt",
    "PV_npvs",
    "fixedGridRhoFastjet",
    "genWeight",
    "Flag_goodVertices",
    "nJet",
    "nMuon",
    "nElectron",
]
JET = [
    "Jet_pt",
    "Jet_eta",
    "Jet_phi",
    "Jet_mass",
    "Jet_btagDeepFlavB",
    "Jet_btagDeepFlavCvL",
    "Jet_qgl",
    "Jet_nConstituents",
    "Jet_hadronFlavour",
]
LEP = [
    "Muon_pt",
    "Muon_eta",
    "Muon_phi",
    "Muon_charge",
    "Muon_pfRelIso04_all",
    "Muon_tightId",
    "Electron_pt",
    "Electron_eta",
    "Electron_phi",
    "Electron_charge",
    "Electron_pfRelIso03_all",
    "Electron_cutBased",
]
JAGGED = {"Jet": 6, "Muon": 2, "Electron": 2}
CHUNK = 100_000


def baseline(path: str) -> int:
    n = 0
    for arr in uproot.iterate(f"{path}:Events", FLAT + JET + LEP, step_size=CHUNK, library="ak"):
        cols = [ak.to_numpy(arr[b]).astype(np.float32)[:, None] for b in FLAT]
        for b in JET + LEP:
            length = JAGGED[b.split("_")[0]]
            cols.append(
                ak.to_numpy(ak.fill_none(ak.pad_none(arr[b], length, clip=True), 0.0)).astype(np.float32)
            )
        x = np.hstack(cols)
        n += len(x)
    return n


def ours(
    url: str, workers: int, cache: str | None, epochs: int = 1, shuffle: bool = False
) -> list[tuple[int, float]]:
    cfg = {
        "tree": "Events",
        "files": [{"path": url, "label": 1}],
        "branches": FLAT + JET + LEP,
        "jagged": JAGGED,
        "chunk_size": CHUNK,
        "workers": workers,
        "cache_dir": cache,
        "shuffle": shuffle,
        "normalize": "minmax",
    }
    ds = Dataset.from_config(cfg, show_progress=False)
    _ = ds.specs  # the specs pass is measured separately
    out = []
    for epoch in range(epochs):
        t0, n = time.perf_counter(), 0
        for b in ds.batches(batch_size=8192, epoch=epoch):
            n += len(b.y)
        out.append((n, time.perf_counter() - t0))
    return out


def specs_rate(url: str, workers: int) -> float:
    cfg = {
        "tree": "Events",
        "files": [{"path": url, "label": 1}],
        "branches": FLAT + JET + LEP,
        "chunk_size": CHUNK,
        "workers": workers,
        "cache_dir": None,
    }
    ds = Dataset.from_config(cfg, show_progress=False)
    _ = ds.file_infos
    t0 = time.perf_counter()
    s = ds.compute_specs()
    return s.nevents / (time.perf_counter() - t0)


def first_use_child(mode: str, path: str, workers: int, cache: str) -> int:
    """One first use (or one plain pass) in this fresh process; returns the events."""
    if mode == "plain":
        return baseline(path)
    cfg = {
        "tree": "Events",
        "files": [{"path": path, "label": 1}],
        "branches": FLAT + JET + LEP,
        "jagged": JAGGED,
        "chunk_size": CHUNK,
        "workers": workers,
        "cache_dir": cache,
        "shuffle": False,
        "normalize": "minmax",
    }
    # "fused-disk": the specs pass's raw units go to the store on disk, not to memory
    extra = {"raw_memory": 0} if mode == "fused-disk" else {}
    ds = Dataset.from_config(cfg, show_progress=False, fused=mode != "two-pass", **extra)
    n = 0
    for b in ds.batches(batch_size=8192, epoch=0):
        n += len(b.y)
    return n


def first_use(
    path: Path, workers: list[int], repeats: int, modes: list[str], before: str | None = None
) -> list[tuple[str, float, float]]:
    """Median events/s of fresh processes: plain uproot, then ours in each mode per worker count.

    ``before`` names another source tree (e.g. ``git archive main``'s ``src``):
    its default path runs too, as mode ``before``, in the same rotation.
    """
    modes = modes + (["before"] if before else [])
    kinds = [("plain", 0)] + [(m, w) for w in workers for m in modes]
    times: dict[tuple[str, int], list[float]] = {k: [] for k in kinds}
    events: dict[tuple[str, int], int] = {}
    for _ in range(repeats):
        for mode, w in kinds:
            cache = tempfile.mkdtemp(prefix="mlaas4hep-bench-first-")
            result = Path(cache) / "result.txt"
            t0 = time.time()  # the child writes when its last batch arrived
            # (to a file: its pool's helper processes may hold a stdout pipe open after it ends)
            env = dict(os.environ)
            if mode == "before" and before:
                env["PYTHONPATH"] = before
            child = "fused" if mode == "before" else mode
            subprocess.run(
                [sys.executable, __file__, "--child", child, str(w), str(path), cache, str(result)],
                check=True,
                env=env,
            )
            out = result.read_text().split()
            times[(mode, w)].append(float(out[1]) - t0)
            events[(mode, w)] = int(out[0])
            shutil.rmtree(cache, ignore_errors=True)
    rows: list[tuple[str, float, float]] = []
    base = events[("plain", 0)] / statistics.median(times[("plain", 0)])
    for mode, w in kinds:
        label = "plain uproot.iterate + pad, fresh process (baseline)"
        if mode != "plain":
            label = f"first use, {mode}, {w} worker{'s' if w != 1 else ''}"
        rate = events[(mode, w)] / statistics.median(times[(mode, w)])
        rows.append((label, rate, rate / base))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--compression", default="zlib")
    ap.add_argument("--data", help="directory for the generated file (kept); default: a temporary one")
    ap.add_argument("--no-remote", action="store_true", help="skip root:// and http://")
    ap.add_argument("--first-use", action="store_true", help="fresh processes: first use vs one plain pass")
    ap.add_argument("--first-use-workers", default="0,1,2")
    ap.add_argument(
        "--first-use-modes",
        default="fused,two-pass",
        help="fused (default path), two-pass (Dataset(fused=False)), fused-disk (raw units on disk)",
    )
    ap.add_argument("--before", help="another source tree whose default path runs too (mode 'before')")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, w, path_, cache_, result = args.child
        n = first_use_child(mode, path_, int(w), cache_)
        Path(result).write_text(f"{n} {time.time()}")  # the run ends at the last batch
        shutdown_pools()
        return

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-", dir="/tmp"))
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o755)
    path = data / f"bench_{args.events}_{args.compression}.root"
    if not path.exists():
        t0 = time.perf_counter()
        write_sample(path, args.events, signal=True, seed=1, compression=args.compression)
        print(
            f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
    path.chmod(0o644)
    if args.first_use:
        baseline(str(path))  # warm the page cache
        rows_ = first_use(
            path,
            [int(w) for w in args.first_use_workers.split(",")],
            args.repeats,
            args.first_use_modes.split(","),
            args.before,
        )
        print(
            f"\n{args.events:,} events, first use (fresh process, empty cache, to the last batch of "
            f"epoch 0), median of {args.repeats}; {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f}\n"
        )
        print(f"| {'run':<56} | {'events/s':>10} | {'x plain':>8} |")
        print(f"|{'-' * 58}|{'-' * 12}|{'-' * 10}|")
        for name, rate, ratio in rows_:
            print(f"| {name:<56} | {rate:>10,.0f} | {ratio:>8.2f} |")
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
        return
    n_features = len(FLAT) + sum(JAGGED[b.split("_")[0]] for b in JET + LEP)
    cache = tempfile.mkdtemp(prefix="mlaas4hep-bench-cache-")
    rows: list[tuple[str, float, float | None]] = []

    baseline(str(path))  # warm the page cache
    n, dt = timed(baseline, str(path))
    base = n / dt
    rows.append(("plain uproot.iterate + pad (baseline)", base, 1.0))
    ((n1, d1),) = ours(str(path), 0, None)
    rows.append(("ours, 1 process", n1 / d1, None))
    ((nn, dn),) = ours(str(path), args.workers, None)
    rows.append((f"ours, {args.workers} processes", nn / dn, None))
    rows.append(("specs pass, 1 process", specs_rate(str(path), 0), None))
    rows.append((f"specs pass, {args.workers} processes", specs_rate(str(path), args.workers), None))
    if not args.no_remote:
        from mlaas4hep.localservers import NginxServer, XRootDServer

        for label, cls in (
            ("root:// (XRootD, loopback)", XRootDServer),
            ("http:// (nginx, loopback)", NginxServer),
        ):
            try:
                srv = cls(data)
            except RuntimeError as err:
                print(f"skipping {label}: {err}", file=sys.stderr)
                continue
            try:
                ((nr, dr),) = ours(srv.url(path.name), 0, None)
                rows.append((f"ours over {label}, 1 process", nr / dr, None))
            finally:
                srv.stop()
    epochs = ours(str(path), 0, cache, epochs=3)
    rows.append(("ours, epoch 0 writing the cache, 1 process", epochs[0][0] / epochs[0][1], None))
    rows.append(("ours, cached epoch 1, sequential", epochs[1][0] / epochs[1][1], None))
    rows.append(("ours, cached epoch 2, sequential", epochs[2][0] / epochs[2][1], None))
    shutil.rmtree(cache, ignore_errors=True)
    shuffled = ours(str(path), 0, cache, epochs=3, shuffle=True)
    rows.append(("ours, epoch 0 writing the cache, shuffled", shuffled[0][0] / shuffled[0][1], None))
    rows.append(("ours, cached epoch 1, shuffled", shuffled[1][0] / shuffled[1][1], None))
    rows.append(("ours, cached epoch 2, shuffled", shuffled[2][0] / shuffled[2][1], None))
    shutdown_pools()
    shutil.rmtree(cache, ignore_errors=True)
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)

    print(
        f"\n{args.events:,} events, {len(FLAT + JET + LEP)} branches -> {n_features} features, "
        f"{args.compression}, chunk {CHUNK:,}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, uproot {uproot.__version__}\n"
    )
    print(f"| {'reader':<48} | {'events/s':>12} | {'x baseline':>10} |")
    print(f"|{'-' * 50}|{'-' * 14}|{'-' * 12}|")
    for name, rate, _ in rows:
        print(f"| {name:<48} | {rate:>12,.0f} | {rate / base:>10.2f} |")


if __name__ == "__main__":
    main()
