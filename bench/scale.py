"""Scale-out benchmark: events/s of the specs pass and of streaming, by executor and number of workers.

    python bench/scale.py                                  # 1 and 2 workers, 400k generated events
    python bench/scale.py --workers 1,4,8,16 --events 1600000 --out bench/RESULTS-scale.md

For each N it starts a Dask ``LocalCluster`` of N single-threaded worker
processes on 127.0.0.1 and connects to it by address, exactly as
``--scheduler tcp://...`` does, then runs the same passes on a local process pool
of N workers for comparison. A one-process run (``workers: 0``) is the
reference for both.

* specs: the whole specs pass (per-unit statistics, reduced; a tree-reduce on Dask);
* stream: one epoch of ``Dataset.chunks()`` with the decoded cache off, so
  every unit is read, decompressed, padded and handed to this process (on Dask
  the arrays travel back over TCP).

Parallel efficiency is ``rate(N) / (N * rate(1))`` for the same executor.
Each figure is the best of ``--repeat`` runs after a warm-up (workers import
their libraries and open their files once).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from mlaas4hep.generate import generate  # noqa: E402
from mlaas4hep.io import Dataset  # noqa: E402
from mlaas4hep.io.executor import shutdown_pools  # noqa: E402

JAGGED = {"Jet": 6, "Muon": 2, "Electron": 2}


def config(
    data: Path, chunk_size: int, executor: str = "local", workers: int = 0, scheduler: str | None = None
):
    return {
        "tree": "Events",
        "files": [
            {"path": str(data / "ttH_*.root"), "label": 1},
            {"path": str(data / "ttbar_*.root"), "label": 0},
        ],
        "branches": ["*"],
        "jagged": JAGGED,
        "chunk_size": chunk_size,
        "shuffle": True,
        "seed": 1,
        "cache_dir": None,
        "executor": executor,
        "workers": workers,
        "scheduler": scheduler,
    }


def best_of(repeat: int, fn, min_seconds: float = 0.0) -> float:
    """Seconds per call of ``fn``: the best of ``repeat`` calls, or, with
    ``min_seconds``, the mean over as many calls as fill that time (so that a
    fast configuration is still timed over a long enough window)."""
    times = []
    while len(times) < repeat or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times) if min_seconds else min(times)


def measure(cfg: dict, repeat: int, specs=None, min_seconds: float = 0.0) -> dict:
    """Seconds of the specs pass and of one streamed epoch; events; the specs."""
    ds = Dataset.from_config(cfg, specs=specs, show_progress=False)
    _ = ds.file_infos  # warm-up: runs on the workers, which import uproot and open the files
    ds.compute_specs()
    t_specs = best_of(repeat, ds.compute_specs)
    specs = specs or ds.compute_specs()
    ds = Dataset.from_config(cfg, specs=specs, show_progress=False)
    n = sum(len(ch) for ch in ds.chunks(epoch=0))  # warm-up of the decoding path
    t_stream = best_of(repeat, lambda: sum(len(ch) for ch in ds.chunks(epoch=0)), min_seconds)
    return {"events": n, "specs_s": t_specs, "stream_s": t_stream, "specs": specs, "ds": ds}


def run(args) -> list[dict]:
    import dask
    import distributed

    from mlaas4hep.scale.dask import WORKER_CONFIG, dask_executor, shutdown_executors

    data = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mlaas4hep-scale-"))
    per_file = args.events // (2 * args.files)
    if not (data / f"ttbar_{args.files - 1}.root").exists():
        print(
            f"generating {2 * args.files} files x {per_file:,} events ({args.compression}) in {data} ...",
            flush=True,
        )
        generate(
            data, events=per_file, files=args.files, seed=3, compression=args.compression, show_progress=False
        )

    rows = []
    base = measure(config(data, args.chunk_size), args.repeat, None, args.min_seconds)
    specs, nev = base["specs"], base["events"]
    rows.append({"executor": "local (1 process)", "workers": 1, **base})
    print(
        f"{nev:,} events, {len(base['ds'].feature_names)} features, {len(base['ds'].units())} units",
        flush=True,
    )
    _row(rows[-1], None)

    for n in args.workers:
        if args.no_dask:
            m = measure(config(data, args.chunk_size, "processes", n), args.repeat, specs, args.min_seconds)
            rows.append({"executor": "processes", "workers": n, **m})
            shutdown_pools()
            _row(rows[-1], rows)
            continue
        # Dask: a LocalCluster reached by its address, as with --scheduler
        # (workers started as docs/scale.md recommends: one thread, no statistical profiler)
        with (
            dask.config.set(WORKER_CONFIG),
            distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
            ) as cluster,
        ):
            cfg = config(data, args.chunk_size, "dask", n, cluster.scheduler_address)
            ex = dask_executor(cluster.scheduler_address)
            m = measure(cfg, args.repeat, specs, args.min_seconds)
            ex.worker_stats(reset=True)
            sum(len(ch) for ch in m["ds"].chunks(epoch=0))  # one more epoch, for the per-worker rates
            per = ex.worker_stats()
            m["per_worker"] = [s["events_per_s"] for s in per.values()]
            rows.append({"executor": "dask", "workers": n, **m})
            shutdown_executors()
        _row(rows[-1], rows)
        m = measure(config(data, args.chunk_size, "processes", n), args.repeat, specs, args.min_seconds)
        rows.append({"executor": "processes", "workers": n, **m})
        shutdown_pools()
        _row(rows[-1], rows)
    for r in rows:
        assert r["events"] == nev, (r["executor"], r["workers"], r["events"], nev)
    return rows


def _ref(row: dict, rows: list[dict] | None) -> dict | None:
    if rows is None:
        return None
    same = [r for r in rows if r["executor"] == row["executor"]]
    return min(same, key=lambda r: r["workers"])


def _eff(row, ref, key) -> str:
    if ref is None or ref is row:
        return "1.00" if ref is row else "-"
    return f"{(row['events'] / row[key]) / (row['workers'] / ref['workers'] * ref['events'] / ref[key]):.2f}"


def _cells(row: dict, rows: list[dict] | None) -> list[str]:
    ref = _ref(row, rows)
    per = row.get("per_worker")
    return [
        row["executor"],
        str(row["workers"]),
        f"{row['events'] / row['specs_s']:,.0f}",
        _eff(row, ref, "specs_s"),
        f"{row['events'] / row['stream_s']:,.0f}",
        _eff(row, ref, "stream_s"),
        f"{sum(per) / len(per):,.0f} ({min(per):,.0f}-{max(per):,.0f})" if per else "-",
    ]


HEADER = [
    "executor",
    "workers",
    "specs ev/s",
    "specs eff.",
    "stream ev/s",
    "stream eff.",
    "stream ev/s per worker busy-time: mean (min-max)",
]


def _row(row, rows) -> None:
    print("  ".join(f"{c:>14}" for c in _cells(row, rows)), flush=True)


def machine() -> str:
    import dask
    import distributed
    import uproot

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu_model()}, {cores} cores available, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, dask {dask.__version__}, distributed {distributed.__version__}, "
        f"uproot {uproot.__version__}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    p.add_argument("--events", type=int, default=400_000, help="total generated events (default 400k)")
    p.add_argument("--files", type=int, default=4, help="files per class (default 4)")
    p.add_argument("--chunk-size", type=int, default=10_000, help="events per unit (default 10k)")
    p.add_argument("--compression", default="zlib", help="zlib, lz4, zstd (default zlib, as NanoAOD)")
    p.add_argument("--repeat", type=int, default=2, help="runs per figure, best kept (default 2)")
    p.add_argument("--dir", help="where the files are (generated there when missing; default: a temp dir)")
    p.add_argument("--out", help="write a Markdown report here (e.g. bench/RESULTS-scale.md)")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="time each streaming figure over repeated epochs filling at least this long (default 0: best of --repeat)",
    )
    p.add_argument("--no-dask", action="store_true", help="process pool only")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]

    load0 = os.getloadavg()[0]
    rows = run(args)
    load1 = os.getloadavg()[0]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += [
        "| "
        + " | ".join(_cells(r, rows if r["workers"] != 1 or r["executor"] != "local (1 process)" else None))
        + " |"
        for r in rows
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        nev, r0 = rows[0]["events"], rows[0]
        text = (
            "## Scale-out: Dask and process pool (`bench/scale.py`)\n\n"
            f"Machine: {machine()}. Load average (1 min) {load0:.1f} before and {load1:.1f} after the run: "
            "other jobs shared the cores, so figures are noisy on a loaded machine.\n\n"
            f"Command: `python bench/scale.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            f"Data: {nev:,} generated NanoAOD-like events ({args.compression}), {2 * args.files} files, "
            f"{len(r0['ds'].schema.flat) + len(r0['ds'].schema.jagged)} branches (all but the event ids), "
            f"collections padded to {JAGGED}: "
            f"{len(r0['ds'].feature_names)} features; units of {args.chunk_size:,} events. "
            "Best of "
            f"{args.repeat} after a warm-up. Efficiency: rate(N) / (N x rate(1)) of the same executor.\n\n"
            + table
            + "\n"
        )
        Path(args.out).write_text(text)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
