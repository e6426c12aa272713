"""Throughput of RNTuple and Parquet inputs next to the TTree, each against a plain reader.

    python bench/formats.py [--events 300000] [--compression zlib] [--data DIR]

Generates one NanoAOD-like TTree (``mlaas4hep.generate``), then writes the same
events as an RNTuple (uproot, the same compression, one cluster per 100,000
events) and as Parquet (pyarrow; ``zlib`` becomes Parquet's ``gzip``, the same
DEFLATE algorithm at the same level, ``lz4``/``zstd`` keep their names; one
row group per 100,000 events). For each format, in one run, on the same
31 branches → 88 features:

* plain: the format's own reader over chunks of 100,000 events, then
  ``ak.pad_none``/``ak.fill_none``/``ak.to_numpy`` (``uproot.iterate`` for the
  TTree, ``RNTuple.arrays(entry_start=, entry_stop=)`` for the RNTuple,
  ``ParquetFile.read_row_group`` + ``ak.from_arrow`` for Parquet);
* ours: ``Dataset.batches`` in one process (decode + pad + min-max normalise,
  no cache; the specs pass runs before and is not timed, and the files it
  opened are closed, so the timed epoch reads and decompresses everything).

Each pair runs ``--repeat`` times, interleaved, and the best of each counts
(the machine is shared). Prints a table of events/s with each ratio to its own
plain reader. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import timed
from stream import CHUNK, FLAT, JAGGED, JET, LEP

from mlaas4hep.generate import COMPRESSION, write_sample
from mlaas4hep.io import Dataset, reader

PARQUET_CODEC = {"zlib": ("gzip", 4), "lz4": ("lz4", None), "zstd": ("zstd", 5), "none": ("none", None)}


def nested(arrays: dict) -> dict:
    """NanoAOD branches to RNTuple/Parquet fields: ``Jet_pt`` ... become the collection ``Jet``."""
    out = {b: arrays[b] for b in FLAT if not b.startswith("n") or b[1:] not in JAGGED}
    for coll in JAGGED:
        members = [b for b in JET + LEP if b.startswith(coll + "_")]
        out[coll] = ak.zip({b[len(coll) + 1 :]: arrays[b] for b in members})
    return dict(sorted(out.items()))


def convert(tree_path: Path, rn_path: Path, pq_path: Path, compression: str) -> None:
    import pyarrow.parquet as pq

    t = uproot.open(tree_path)["Events"]
    codec, level = PARQUET_CODEC[compression]
    writer = None
    with uproot.recreate(rn_path, compression=COMPRESSION[compression]()) as f:
        rn = None
        for arrays in t.iterate(FLAT + JET + LEP, step_size=CHUNK, library="ak", how=dict):
            data = nested(arrays)
            if rn is None:
                rn = f.mkrntuple("Events", data)
            else:
                rn.extend(data)
            table = ak.to_arrow_table(ak.zip(data, depth_limit=1), extensionarray=False)
            if writer is None:
                writer = pq.ParquetWriter(pq_path, table.schema, compression=codec, compression_level=level)
            writer.write_table(table, row_group_size=CHUNK)
    if writer is not None:
        writer.close()


def pad(arr) -> np.ndarray:
    cols = [ak.to_numpy(arr[b]).astype(np.float32)[:, None] for b in FLAT]
    for b in JET + LEP:
        length = JAGGED[b.split("_")[0]]
        cols.append(ak.to_numpy(ak.fill_none(ak.pad_none(arr[b], length, clip=True), 0.0)).astype(np.float32))
    return np.hstack(cols)


def plain_ttree(path: Path) -> int:
    n = 0
    for arr in uproot.iterate(f"{path}:Events", FLAT + JET + LEP, step_size=CHUNK, library="ak"):
        n += len(pad(arr))
    return n


def _flatten_names(arr) -> dict:
    """An RNTuple/Parquet chunk under NanoAOD names (``Jet.pt`` → ``Jet_pt``, ``nJet`` from offsets)."""
    out = {}
    for b in FLAT:
        coll = b[1:] if b.startswith("n") else None
        out[b] = ak.num(arr[coll], axis=1) if coll in JAGGED else arr[b]
    for b in JET + LEP:
        coll, member = b.split("_", 1)
        out[b] = arr[coll][member]
    return out


def plain_rntuple(path: Path) -> int:
    rn = uproot.open(path)["Events"]
    fields = [f for f in rn.keys(full_paths=True) if "." in f or f in FLAT]
    n = 0
    for s in range(0, rn.num_entries, CHUNK):
        arr = rn.arrays(filter_name=fields, entry_start=s, entry_stop=s + CHUNK)
        n += len(pad(_flatten_names(arr)))
    return n


def plain_parquet(path: Path) -> int:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, memory_map=True)
    n = 0
    for g in range(pf.metadata.num_row_groups):
        arr = ak.from_arrow(pf.read_row_group(g, use_threads=False))
        n += len(pad(_flatten_names(arr)))
    return n


def ours(url: str) -> tuple[int, float]:
    cfg = {
        "tree": "Events",
        "files": [{"path": url, "label": 1}],
        "branches": FLAT + JET + LEP,
        "jagged": JAGGED,
        "chunk_size": CHUNK,
        "workers": 0,
        "cache_dir": None,
        "shuffle": False,
        "normalize": "minmax",
    }
    ds = Dataset.from_config(cfg, show_progress=False)
    _ = ds.specs
    # close the files the specs pass opened: their caches (uproot's array_cache, the last
    # Parquet row group) would otherwise serve the timed epoch from memory
    for key in list(reader._OPEN):
        reader.forget(*key)
    t0, n = time.perf_counter(), 0
    for b in ds.batches(batch_size=8192):
        n += len(b.y)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--compression", default="zlib", choices=sorted(PARQUET_CODEC))
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each reader; the best counts")
    ap.add_argument("--data", help="directory for the generated files (kept); default: a temporary one")
    args = ap.parse_args()

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-fmt-"))
    data.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{args.events}_{args.compression}"
    paths = {"TTree": data / f"{stem}.root", "RNTuple": data / f"{stem}_rntuple.root"}
    paths["Parquet"] = data / f"{stem}.parquet"
    if not paths["TTree"].exists():
        write_sample(paths["TTree"], args.events, signal=True, seed=1, compression=args.compression)
    if not (paths["RNTuple"].exists() and paths["Parquet"].exists()):
        convert(paths["TTree"], paths["RNTuple"], paths["Parquet"], args.compression)
    plain = {"TTree": plain_ttree, "RNTuple": plain_rntuple, "Parquet": plain_parquet}
    rows = []
    for fmt, path in paths.items():
        plain[fmt](path)  # warm the page cache
        best_plain = best_ours = 0.0
        for _ in range(args.repeat):  # interleaved; the best of each (the machine is shared and noisy)
            n, dt = timed(plain[fmt], path)
            n_ours, dt_ours = ours(str(path))
            assert n == n_ours == args.events, (fmt, n, n_ours)
            best_plain, best_ours = max(best_plain, n / dt), max(best_ours, n_ours / dt_ours)
        rows.append((fmt, os.path.getsize(path) / 1e6, best_plain, best_ours))
    print(
        f"{args.events:,} events, {args.compression}, chunks of {CHUNK:,}, 1 process, best of {args.repeat}; "
        f"load {os.getloadavg()}"
    )
    print("| format | file MB | plain reader ev/s | ours ev/s | ours / plain |\n|---|---:|---:|---:|---:|")
    for fmt, size, p, o in rows:
        print(f"| {fmt} | {size:.0f} | {p:,.0f} | {o:,.0f} | {o / p:.2f} |")


if __name__ == "__main__":
    main()
