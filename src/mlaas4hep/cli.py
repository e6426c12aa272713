"""The ``mlaas4hep`` command line.

Each layer registers its subcommands; run ``mlaas4hep COMMAND --help`` for details.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from . import __version__
from .progress import format_rate
from .terminal import (
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    ArgumentParser,
    UsageError,
    add_executor_options,
    json_or,
    positive_int,
    run,
)

DESCRIPTION = """\
Machine Learning as a Service for High-Energy Physics.

Stream native ROOT files (local, root://, http://) into training-ready tensors,
train PyTorch / Keras / scikit-learn / XGBoost models on them, and serve the
resulting bundles over HTTP (TFaaS API and the Open Inference Protocol v2).

typical session:
  mlaas4hep generate --out data --events 200000      # synthetic ttH(bb) / ttbar NanoAOD
  mlaas4hep inspect data/ttH_0.root                  # trees, branches, types
  mlaas4hep specs config.yaml -o specs.json          # the specs pass
  mlaas4hep stream config.yaml --epochs 2            # read throughput, per epoch
  mlaas4hep train train.yaml --out run1              # train and export a bundle
  mlaas4hep predict run1/bundle data/*.root -o out   # scores as ROOT friend trees
  mlaas4hep scan train.yaml --trials 20              # hyperparameter scan (Optuna)
  mlaas4hep serve --repo models                      # serve bundles over HTTP

progress bars show on a terminal only (MLAAS4HEP_PROGRESS=0/1 forces them off/on).
"""


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"{what} (machine output)")


def _load_dataset(args, **extra):
    from .io import Dataset, DatasetConfig

    cfg = DatasetConfig.from_yaml(args.config)
    for name in ("workers", "executor", "scheduler"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    if cfg.scheduler:
        cfg.executor = "dask"
    if getattr(args, "no_cache", False):
        cfg.cache_dir = None
    return Dataset(cfg, specs=getattr(args, "specs", None), **extra)


def cmd_generate(args) -> int:
    from .generate import generate

    t0 = time.perf_counter()
    paths = generate(
        args.out, events=args.events, files=args.files, seed=args.seed, compression=args.compression
    )
    dt = time.perf_counter() - t0
    n = len(paths) * args.events

    def show() -> None:
        for p in paths:
            print(p)
        print(
            f"wrote {len(paths)} files, {n:,} events in {dt:.1f}s ({format_rate(n / max(dt, 1e-9))})",
            file=sys.stderr,
        )

    return json_or(args.json, {"files": [str(p) for p in paths], "events": n, "seconds": round(dt, 3)}, show)


def cmd_inspect(args) -> int:
    from .io.inspect import inspect_file

    info = inspect_file(args.file, tree=args.tree, pattern=args.filter)
    if args.filter and info["trees"] and not any(t["branches"] for t in info["trees"]):
        raise UsageError(_no_match(args, info))
    return json_or(args.json, info, lambda: _print_inspect(info))


def _print_inspect(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info['url']}[/]  compression: {info['compression']}")
    if not info["trees"]:
        console.print("no TTree in this file")
    for t in info["trees"]:
        table = Table(
            title=f"{t['name']}: {t['entries']:,} entries, {len(t['branches'])} branches",
            title_justify="left",
        )
        for col in ("branch", "type", "kind"):
            table.add_column(col)
        for b in t["branches"]:
            table.add_row(b["name"], b["type"], b["kind"])
        console.print(table)


def _no_match(args, info) -> str:
    """``no branch matches 'Jt_*'; did you mean 'Jet_*'?``"""
    from .io.expr import did_you_mean
    from .io.inspect import inspect_file

    everything = inspect_file(args.file, tree=args.tree)
    names = {b["name"] for t in everything["trees"] for b in t["branches"]}
    patterns = {n.split("_")[0] + "_*" for n in names if "_" in n}
    hint = did_you_mean(args.filter, sorted(names | patterns))
    return f"no branch matches {args.filter!r} in {args.file}" + (hint or f" ({len(names)} branches there)")


def cmd_specs(args) -> int:
    ds = _load_dataset(args, show_progress=None)
    ds._specs_arg = None  # always compute into the output path
    t0 = time.perf_counter()
    specs = ds.compute_specs()
    dt = time.perf_counter() - t0
    specs.save(args.output)
    n = sum(f["entries"] for f in specs.files)
    summary = {
        "output": str(args.output),
        "files": len(specs.files),
        "events": n,
        "flat": len(specs.flat),
        "jagged": len(specs.jagged),
        "seconds": round(dt, 3),
        "skipped": [str(r) for r in ds.report],
        **_dropped(ds),
    }

    def show() -> None:
        print(
            f"specs of {len(specs.files)} files, {n:,} events, {len(specs.flat)} flat + {len(specs.jagged)} "
            f"jagged branches in {dt:.2f}s ({n / max(dt, 1e-9):,.0f} events/s) -> {args.output}"
        )
        _print_skipped(ds)

    return json_or(args.json, summary, show)


def _print_skipped(ds) -> None:
    for r in ds.report:
        print(f"skipped: {r}", file=sys.stderr)


def _dropped(ds) -> dict[str, list[str]]:
    """``branches_policy: common``: the branches left out, for the JSON output (nothing when none)."""
    dropped = ds.report.dropped_branches
    return {"dropped_branches": list(dropped)} if dropped else {}


def cmd_stream(args) -> int:
    import numpy as np

    ds = _load_dataset(args, show_progress=None)
    selected = " after selection" if ds.config.selection else ""
    say = (lambda *a, **k: None) if args.json else print
    say(
        f"{len(ds.urls)} files, {ds.nevents:,} events{selected}, {ds.n_features} features, labels {ds.label_names}"
    )
    epochs = []
    for epoch in range(args.epochs):
        cache = ds.cache
        cached = cache is not None and all(cache.has(u) for u in ds.units(epoch))
        t0, n, pos = time.perf_counter(), 0, 0
        for b in ds.batches(batch_size=args.batch_size, epoch=epoch):
            n += len(b.y)
            pos += int(np.sum(b.y == 1))
        dt = time.perf_counter() - t0
        source = "cache" if cached else "stream"
        epochs.append(
            {
                "epoch": epoch,
                "events": n,
                "seconds": round(dt, 3),
                "label1_fraction": pos / max(n, 1),
                "source": source,
            }
        )
        say(
            f"epoch {epoch}: {n:,} events in {dt:.2f}s = {format_rate(n / max(dt, 1e-9))} "
            f"(label-1 fraction {pos / max(n, 1):.3f})"
            + (", read from the decoded cache, not the files (--no-cache decodes them)" if cached else "")
        )
    summary = {
        "files": len(ds.urls),
        "features": ds.n_features,
        "epochs": epochs,
        "skipped": [str(r) for r in ds.report],
        **_dropped(ds),
    }
    return json_or(args.json, summary, lambda: _print_skipped(ds))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mlaas4hep",
        description=DESCRIPTION,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlaas4hep {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error (anywhere on the line)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "generate",
        help="write synthetic ttH(bb) and ttbar samples in NanoAOD layout",
        description="Write DIR/ttH_{i}.root (signal) and DIR/ttbar_{i}.root (background), "
        "TTree 'Events' in CMS NanoAOD layout. Deterministic for a seed.",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--events", type=positive_int, default=100_000, help="events per file (default 100000)")
    p.add_argument("--files", type=positive_int, default=1, help="files per process (default 1)")
    p.add_argument("--seed", type=int, default=42, help="random seed; the same seed writes the same events")
    p.add_argument(
        "--compression",
        choices=["zlib", "lz4", "zstd", "lzma", "none"],
        default="zlib",
        help="ROOT compression (default zlib, as CMS NanoAOD; lz4 reads about 2x faster)",
    )
    _add_json(p, "print the written files as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "inspect",
        help="list trees, branches, types and entries of a ROOT file",
        description="List a ROOT file's trees with entries and branches (type, and whether "
        "mlaas4hep reads it as flat, jagged or unsupported). Local, root:// or http(s)://.",
    )
    p.add_argument("file", help="path or URL")
    p.add_argument("--tree", help="only this tree")
    p.add_argument("--filter", help="only branches matching this wildcard, e.g. 'Jet_*'")
    _add_json(p, "print the trees and branches as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "specs",
        help="run the specs pass (min/max/mean/std, jagged lengths) and save it",
        description="Run the specs pass of a dataset configuration in parallel and save it as "
        "JSON, with each file's fingerprint so that stale specs are detected later.",
    )
    p.add_argument("config", help="dataset YAML")
    p.add_argument(
        "-o",
        "--out",
        "--output",
        dest="output",
        default="specs.json",
        metavar="FILE",
        help="where to write the specs JSON (default specs.json)",
    )
    _add_json(p, "print a summary as JSON")
    add_executor_options(p)
    p.set_defaults(func=cmd_specs)

    p = sub.add_parser(
        "stream",
        help="stream a dataset and report events/s per epoch",
        description="Stream every batch of a dataset, as training would, and print throughput. "
        "Epoch 0 decodes (and fills the decoded cache); later epochs read the cache.",
    )
    p.add_argument("config", help="dataset YAML")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the data (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="events per batch (default 1024)")
    p.add_argument("--specs", metavar="FILE", help="specs JSON to use (recomputed if stale)")
    p.add_argument("--no-cache", action="store_true", help="do not use the decoded cache")
    _add_json(p, "print the throughput per epoch as JSON")
    add_executor_options(p)
    p.set_defaults(func=cmd_stream)

    for module, fn in (
        ("train.cli", "add_train_commands"),
        ("train.scancli", "add_scan_command"),
        ("serve.cli", "add_serve_commands"),
        ("clientcli", "add_client_commands"),
        ("predictcli", "add_predict_command"),
        ("demo", "add_demo_command"),
        ("capacity", "add_capacity_command"),
    ):
        try:
            mod = __import__(f"mlaas4hep.{module}", fromlist=[fn])
        except ImportError as err:  # a layer whose extra is not installed
            if err.name and err.name.startswith("mlaas4hep"):
                continue
            raise
        getattr(mod, fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug anywhere on the line (people add it at the end after a failure)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"] if debug else argv)
    args.debug = debug
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # OpenMP threads (PyTorch's CPU operators) that spin while they wait made training 1.6-7x
    # slower on a small or shared machine (bench/threads.py); sleeping ones cost little elsewhere.
    # Read once, when PyTorch loads: a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return run(args.func, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
