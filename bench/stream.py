"""Streaming throughput: our reader against plain uproot.iterate + pad, side by side.

    python bench/stream.py [--events 1000000] [--workers N] [--compression zlib] [--data DIR]
    python bench/stream.py --first-use [--events 600000] [--first-use-workers 0,1,2] [--repeats 2]
        [--first-use-configs specs-shuffled,given-ordered] [--first-use-branches five]
    python bench/stream.py --peers [--events 2000000] [--peer-workers 0,1,2] [--epochs 3]

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
the table gives the median. ``--first-use-configs`` picks the configurations
(jagged lengths given or from the specs pass; shuffled or not), and the CPU
column is that of the child's whole process tree, workers included.

``--peers`` runs ROOT's own loader (``ROOT.Experimental.ML.RDataLoader``, ROOT
6.40 from ``pip install root==0.1a12``) against ours, on the file rewritten by
ROOT (its clusters, its compression), the same columns (``Jet`` padded to 6),
batch size 1024 and shuffling, ``--epochs`` epochs of one fresh process each
(epoch 0 of ours is a first use: empty cache), kinds alternating.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def baseline(path: str, names: list[str] | None = None) -> int:
    names = FLAT + JET + LEP if names is None else names
    flat = [b for b in names if b.split("_")[0] not in JAGGED]
    n = 0
    for arr in uproot.iterate(f"{path}:Events", names, step_size=CHUNK, library="ak"):
        cols = [ak.to_numpy(arr[b]).astype(np.float32)[:, None] for b in flat]
        for b in names:
            if b in flat:
                continue
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


#: The branches of a first-use configuration: ``--first-use-branches`` names them (or ``all``).
FIVE = ["MET_pt", "PV_npvs", "Jet_pt", "Jet_eta", "Jet_phi"]

#: First-use configurations: whether the jagged lengths are given and whether epoch 0 is shuffled.
CONFIGS = {
    "specs-shuffled": (False, True),
    "given-shuffled": (True, True),
    "specs-ordered": (False, False),
    "given-ordered": (True, False),
}


def branch_list(spec: str) -> list[str]:
    return FLAT + JET + LEP if spec == "all" else spec.split(",")


def first_use_child(
    mode: str, path: str, workers: int, cache: str, config: str = "given-ordered", branches: str = "all"
) -> int:
    """One first use (or one plain pass) in this fresh process; returns the events.

    ``config`` (a key of :data:`CONFIGS`) says whether the jagged lengths are
    given (else they come from the specs pass) and whether epoch 0 is shuffled;
    the plain pass pads to the given lengths either way.
    """
    names = branch_list(branches)
    if mode == "plain":
        return baseline(path, names)
    given, shuffle = CONFIGS[config]
    cfg = {
        "tree": "Events",
        "files": [{"path": path, "label": 1}],
        "branches": names,
        "chunk_size": CHUNK,
        "workers": workers,
        "cache_dir": cache,
        "shuffle": shuffle,
        "normalize": "minmax",
    }
    if mode in ("threads", "processes"):  # the default path on that executor
        cfg["executor"] = mode
    if given:
        cfg["jagged"] = {k: v for k, v in JAGGED.items() if any(b.startswith(k + "_") for b in names)}
    # "fused-disk": the specs pass's raw units go to the store on disk, not to memory
    extra = {"raw_memory": 0} if mode == "fused-disk" else {}
    ds = Dataset.from_config(cfg, show_progress=False, fused=mode != "two-pass", **extra)
    n = 0
    for b in ds.batches(batch_size=8192, epoch=0):
        n += len(b.y)
    return n


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process, its threads and every process below it,
    alive or reaped (a worker pool's fork server and workers are not this process's children
    to wait for, so ``os.times`` in the parent would miss them)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    me, total = os.getpid(), 0.0
    for pid in cpu:
        p = pid
        while p not in (0, 1, me) and p in parent:
            p = parent[p]
        if p == me:
            total += cpu[pid]
    return total


def first_use(
    path: Path,
    workers: list[int],
    repeats: int,
    modes: list[str],
    before: str | None = None,
    configs: list[str] | None = None,
    branches: str = "all",
) -> list[tuple[str, float, float, float]]:
    """Median events/s of fresh processes: plain uproot, then ours per configuration, mode and
    worker count, all alternating within each repeat; rows ``(label, events/s, x plain, CPU s)``.

    ``before`` names another source tree (e.g. ``git archive main``'s ``src``):
    its default path runs too, as mode ``before``, in the same rotation.
    CPU is the median user + system time of the child, its threads and its workers, until
    its last batch (:func:`tree_cpu`).
    """
    modes = modes + (["before"] if before else [])
    configs = configs or ["given-ordered"]
    kinds = [("plain", "-", 0)] + [(m, c, w) for c in configs for w in workers for m in modes]
    times: dict[tuple[str, str, int], list[float]] = {k: [] for k in kinds}
    cpus: dict[tuple[str, str, int], list[float]] = {k: [] for k in kinds}
    events: dict[tuple[str, str, int], int] = {}
    for _ in range(repeats):
        for kind in kinds:
            mode, config, w = kind
            cache = tempfile.mkdtemp(prefix="mlaas4hep-bench-first-")
            result = Path(cache) / "result.txt"
            env = dict(os.environ)
            if mode == "before" and before:
                env["PYTHONPATH"] = before
            child = "fused" if mode == "before" else mode
            argv = [sys.executable, __file__, "--child", child, str(w), str(path), cache, str(result)]
            argv += [
                "--child-config",
                config if config != "-" else "given-ordered",
                "--child-branches",
                branches,
            ]
            t0 = time.time()  # the child writes when its last batch arrived
            # (to a file: its pool's helper processes may hold a stdout pipe open after it ends)
            subprocess.run(argv, check=True, env=env)
            out = result.read_text().split()
            times[kind].append(float(out[1]) - t0)
            cpus[kind].append(float(out[2]))
            events[kind] = int(out[0])
            shutil.rmtree(cache, ignore_errors=True)
    rows: list[tuple[str, float, float, float]] = []
    base = events[kinds[0]] / statistics.median(times[kinds[0]])
    for kind in kinds:
        mode, config, w = kind
        label = "plain uproot.iterate + pad, fresh process (baseline)"
        if mode != "plain":
            label = f"first use, {config}, {mode}, {w} worker{'s' if w != 1 else ''}"
        rate = events[kind] / statistics.median(times[kind])
        rows.append((label, rate, rate / base, statistics.median(cpus[kind])))
    return rows


#: The peers' run (issue 25): these columns, Jet padded to 6, batch 1024, shuffled.
PEER_COLUMNS = ["MET_pt", "Jet_pt", "Jet_eta", "Jet_phi"]
PEER_LENGTH = 6
PEER_BATCH = 1024


def root_rewrite(src: Path, dst: Path) -> None:
    """Rewrite an uproot-made file with ROOT (``RDataFrame.Snapshot``, ROOT's default clusters and
    compression) in a child process, so that both readers meet the clusters ROOT itself writes."""
    code = (
        "import ROOT, sys; ROOT.RDataFrame('Events', sys.argv[1]).Snapshot('Events', sys.argv[2] + '.part', "
        f"{['run', 'luminosityBlock', 'event', 'nJet', *PEER_COLUMNS]!r})"
    )
    subprocess.run([sys.executable, "-c", code, str(src), str(dst)], check=True)
    os.replace(str(dst) + ".part", dst)


def peer_child(kind: str, workers: int, path: str, epochs: int, cache: str) -> dict[str, object]:
    """One peer run in this fresh process: ROOT's RDataLoader or ours, ``epochs`` epochs.

    Returns the set-up time (after the imports, until the loader exists) and,
    per epoch, ``(events, seconds, wait for the first batch)``. Batches are not
    kept (ROOT's NumPy batches are views into memory it reuses).
    """
    t0 = time.perf_counter()
    out: dict[str, object] = {"epochs": []}
    jets = [c for c in PEER_COLUMNS if c.startswith("Jet_")]
    if kind == "root":
        import ROOT

        out["import"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rdf = ROOT.RDataFrame("Events", path)
        loader = ROOT.Experimental.ML.RDataLoader(
            rdf,
            batch_size=PEER_BATCH,
            batches_in_memory=10,
            columns=PEER_COLUMNS,
            max_vec_sizes=dict.fromkeys(jets, PEER_LENGTH),
            shuffle=True,
            drop_remainder=False,
            set_seed=1,
        )
        out["setup"] = time.perf_counter() - t0

        def epoch_batches(e: int) -> Iterator[int]:
            for b in loader.as_numpy():
                yield len(b)

    else:
        out["import"] = 0.0
        cfg = {
            "tree": "Events",
            "files": [{"path": path, "label": 1}],
            "branches": PEER_COLUMNS,
            "jagged": {"Jet": PEER_LENGTH},
            "chunk_size": CHUNK,
            "workers": workers,
            "cache_dir": cache,
            "shuffle": True,
            "normalize": "none",
        }
        ds = Dataset.from_config(cfg, show_progress=False)
        out["setup"] = time.perf_counter() - t0

        def epoch_batches(e: int) -> Iterator[int]:
            for b in ds.batches(batch_size=PEER_BATCH, epoch=e):
                yield len(b.y)

    for e in range(epochs):
        t, n, first = time.perf_counter(), 0, None
        for k in epoch_batches(e):
            if first is None:
                first = time.perf_counter() - t
            n += k
        out["epochs"].append((n, time.perf_counter() - t, first or 0.0))  # type: ignore[union-attr]
    return out


def peers(path: Path, workers: list[int], epochs: int, repeats: int) -> list[dict[str, object]]:
    """ROOT's RDataLoader and ours (each worker count) in fresh processes, alternating, ``repeats`` times."""
    kinds = [("root", 0)] + [("ours", w) for w in workers]
    runs: list[dict[str, object]] = []
    for r in range(repeats):
        for kind, w in kinds:
            cache = tempfile.mkdtemp(prefix="mlaas4hep-bench-peers-")
            result = Path(cache) / "result.json"
            load = os.getloadavg()[0]
            t0 = time.time()
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--peer-child",
                    kind,
                    str(w),
                    str(path),
                    str(epochs),
                    cache,
                    str(result),
                ],
                check=True,
            )
            out = json.loads(result.read_text())
            out.update(kind=kind, workers=w, repeat=r, load=load, total=out["end"] - t0)
            runs.append(out)
            shutil.rmtree(cache, ignore_errors=True)
            print(peer_line(out), file=sys.stderr)
    return runs


def peer_line(run: dict[str, Any]) -> str:
    name = "ROOT RDataLoader" if run["kind"] == "root" else f"mlaas4hep, workers: {run['workers']}"
    eps = " ".join(
        f"e{i} {n / s / 1e3:,.0f}k ev/s (first batch {f:.2f} s)" for i, (n, s, f) in enumerate(run["epochs"])
    )
    return (
        f"{name:<24} total {run['total']:5.1f} s, set-up {run['setup']:.1f} s; {eps}; load {run['load']:.1f}"
    )


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
        help="fused (default path), two-pass (Dataset(fused=False)), fused-disk (raw units on disk), "
        "threads / processes (the default path with executor: threads / processes)",
    )
    ap.add_argument("--before", help="another source tree whose default path runs too (mode 'before')")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--first-use-configs",
        default="given-ordered",
        help=f"comma list of {', '.join(CONFIGS)} (lengths given or from the specs; shuffled or not)",
    )
    ap.add_argument(
        "--first-use-branches",
        default="all",
        help="comma list of branches (all: the 31 of the other runs; 'five': " + ",".join(FIVE) + ")",
    )
    ap.add_argument(
        "--peers",
        action="store_true",
        help="ROOT's RDataLoader against ours on a file rewritten by ROOT (needs: pip install root)",
    )
    ap.add_argument("--peer-workers", default="0,1,2", help="our worker counts in --peers")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each --peers run")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--peer-child", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default="given-ordered", help=argparse.SUPPRESS)
    ap.add_argument("--child-branches", default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = [c for c in args.first_use_configs.split(",") if c not in CONFIGS]
    if unknown:  # before a file is generated
        ap.error(f"unknown --first-use-configs {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if args.peers and importlib.util.find_spec("ROOT") is None:
        ap.error("--peers needs ROOT's Python package: pip install root==0.1a12")
    if args.peer_child:
        kind, w, path_, epochs_, cache_, result = args.peer_child
        out = peer_child(kind, int(w), path_, int(epochs_), cache_)
        out["end"] = time.time()
        Path(result).write_text(json.dumps(out))
        shutdown_pools()
        return
    if args.child:
        mode, w, path_, cache_, result = args.child
        n = first_use_child(mode, path_, int(w), cache_, args.child_config, args.child_branches)
        end = time.time()  # the run ends at the last batch
        Path(result).write_text(f"{n} {end} {tree_cpu()}")
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
    if args.peers:
        rewritten = data / f"root_{args.events}.root"
        if not rewritten.exists():
            t0 = time.perf_counter()
            root_rewrite(path, rewritten)
            print(f"rewrote {rewritten} with ROOT in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        runs = peers(rewritten, [int(w) for w in args.peer_workers.split(",")], args.epochs, args.repeats)
        print(
            f"\n{args.events:,} events rewritten by ROOT, columns {', '.join(PEER_COLUMNS)} (Jet padded to "
            f"{PEER_LENGTH}), batch {PEER_BATCH}, shuffled, {args.epochs} epochs, one fresh process each; "
            f"{os.cpu_count()} cores\n"
        )
        for run in runs:
            print(peer_line(run))
        return
    if args.first_use:
        branches = ",".join(FIVE) if args.first_use_branches == "five" else args.first_use_branches
        configs = args.first_use_configs.split(",")
        baseline(str(path), branch_list(branches))  # warm the page cache
        load0 = os.getloadavg()[0]
        rows_ = first_use(
            path,
            [int(w) for w in args.first_use_workers.split(",")],
            args.repeats,
            args.first_use_modes.split(","),
            args.before,
            configs,
            branches,
        )
        print(
            f"\n{args.events:,} events, {len(branch_list(branches))} branches, first use (fresh process, "
            f"empty cache, to the last batch of epoch 0), median of {args.repeats}; {os.cpu_count()} cores, "
            f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}\n"
        )
        print(f"| {'run':<60} | {'events/s':>10} | {'x plain':>8} | {'CPU s':>6} |")
        print(f"|{'-' * 62}|{'-' * 12}|{'-' * 10}|{'-' * 8}|")
        for name, rate, ratio, cpu in rows_:
            print(f"| {name:<60} | {rate:>10,.0f} | {ratio:>8.2f} | {cpu:>6.2f} |")
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
