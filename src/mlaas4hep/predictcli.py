"""``mlaas4hep predict BUNDLE FILES... -o OUT``: scores as ROOT friend trees or Parquet, no server."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .terminal import count, json_or, positive_int

HELP = """\
Score every entry of ROOT files with a trained bundle, in this process and its
workers (no server), and write one file per input file next to the data:

  ROOT (default)  OUT/<input>_scores.root, a friend tree 'scores' of the input tree
  Parquet         OUT/<input>_scores.parquet (--format parquet)

Each holds 'entry', the event identifiers (run, luminosityBlock, event: the
bundle's dataset 'identifier', those the file has) and 'score' (a binary
classifier's probability of label 1) or 'score_<label>' per class, one row per
input entry in the input's order: the bundle's preprocessing is applied as in
training and serving, its selection is not, so the friend tree lines up entry by
entry with the input tree:

  TFile f("data/ttH_0.root"); auto t = f.Get<TTree>("Events");
  t->AddFriend("scores", "scores/ttH_0_scores.root");
  t->Draw("scores.score");

examples:
  mlaas4hep predict runs/tth/bundle data/*.root -o scores/
  mlaas4hep predict runs/tth/bundle 'data/ttH_*.root' -o scores/ --workers 4
  mlaas4hep predict runs/tth/bundle data/ttH_0.root -o ttH_0.parquet --format parquet
  mlaas4hep predict runs/tth/bundle root://eos.cern.ch//store/f.root -o scores/
"""


def add_predict_command(subparsers: Any) -> None:
    """Register ``predict`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "predict",
        help="score ROOT files with a bundle and write friend trees (or Parquet), no server",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle directory (runs/NAME/bundle, or the run directory runs/NAME)")
    p.add_argument(
        "files", nargs="+", metavar="FILE", help="ROOT files: paths, globs, root:// or http(s):// URLs"
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUT",
        help="output directory (created); with one input file, a file name ending in .root or .parquet",
    )
    p.add_argument(
        "--format",
        choices=["root", "parquet"],
        default="root",
        help="output format (default root: friend trees)",
    )
    p.add_argument("--tree", help="input tree (default: the bundle's, e.g. Events)")
    p.add_argument(
        "--name",
        default="scores",
        help="friend tree name, and the outputs' <input>_<name>.root (default scores)",
    )
    p.add_argument(
        "--chunk-size",
        "--step",
        dest="chunk_size",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="entries scored at a time, per worker (default 100000): bounds the memory; "
        "chunks smaller than the file's baskets decompress them more than once",
    )
    p.add_argument(
        "--workers",
        type=count,
        default=None,
        help="worker processes (default: one per core; 0 = this process)",
    )
    p.add_argument(
        "--ids",
        metavar="LIST",
        help="event identifier branches to write, comma-separated (default: the bundle's; '' for none)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print the written files as JSON (machine output)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from .scoring.predict import predict

    ids = None if args.ids is None else [i.strip() for i in args.ids.split(",") if i.strip()]
    t0 = time.perf_counter()
    outs = predict(
        args.bundle,
        args.files,
        args.out,
        format=args.format,
        tree=args.tree,
        name=args.name,
        chunk_size=args.chunk_size,
        workers=args.workers,
        ids=ids,
        overwrite=args.overwrite,
        show_progress=False if args.json else None,
    )
    dt = time.perf_counter() - t0
    n = sum(o.entries for o in outs)
    summary = {
        "outputs": [
            {"input": o.input, "output": str(o.path), "entries": o.entries, "ids": o.ids, "scores": o.scores}
            for o in outs
        ],
        "entries": n,
        "seconds": round(dt, 3),
    }
    return json_or(args.json, summary, lambda: _print_outputs(outs, n, dt))


def _print_outputs(outs: list, n: int, dt: float) -> None:
    for o in outs:
        print(o.path)
    cols = ", ".join(["entry", *outs[0].ids, *outs[0].scores]) if outs else ""
    print(
        f"scored {n:,} entries of {len(outs)} file{'s' if len(outs) != 1 else ''} in {dt:.1f}s "
        f"({n / max(dt, 1e-9):,.0f} entries/s); columns: {cols}",
        file=sys.stderr,
    )
