"""The ``scan`` command: argparse wiring and the table of trials (the scan itself is :mod:`.scan`).

Kept apart from :mod:`.scan` so that building the command line imports neither
the streaming layer nor Optuna: ``mlaas4hep client --help`` registers every
command and must stay quick.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any

from ..errors import Mlaas4hepError

if TYPE_CHECKING:
    from .scan import ScanResult, Trial

SCAN_HELP = """\
Scan hyperparameters: train CONFIG's model --trials times with training values
drawn by Optuna from the YAML's scan: section, and keep the best trial.

  scan:
    learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}   # also uniform, int, log_int
    batch_size: {choice: [256, 1024]}               # or a plain list
    metric: val_auc          # val_auc (default) | val_loss | val_accuracy
    direction: maximize      # default: minimize for val_loss, else maximize
    sampler: tpe             # tpe (default) | random

Without scan: parameters, the learning rate (log-uniform in [1e-4, 1e-2]) and
the batch size (256, 512, 1024 or 2048) are scanned. Any training: key may be
scanned. The first trial runs alone and fills the decoded cache; every other
trial reads it, so the ROOT files are decoded once.

Writes OUT/trials/NNN/ (each trial's run), OUT/bundle/ (a copy of the best
trial's bundle), OUT/scan.json, OUT/scan.png (metric per trial and per
parameter) and OUT/roc.png (every trial's ROC curve); prints a table.
"""


def add_scan_command(subparsers: Any) -> None:
    """Register ``scan`` on an argparse ``subparsers`` object."""
    from ..terminal import positive_int

    p = subparsers.add_parser(
        "scan",
        help="scan hyperparameters (Optuna) and keep the best trial's bundle",
        description=SCAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="train configuration (YAML), with an optional scan: section")
    p.add_argument("--trials", type=positive_int, default=10, help="number of trials (default 10)")
    p.add_argument(
        "--parallel",
        type=positive_int,
        default=1,
        metavar="K",
        help="trials at a time in processes of this machine (default 1)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the trials on a Dask cluster, e.g. tcp://10.0.0.1:8786 (shared file system)",
    )
    p.add_argument(
        "-o", "--out", default=None, metavar="DIR", help="output directory (default: runs/scan-<model name>)"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="override training.epochs of every trial"
    )
    p.add_argument("--json", action="store_true", help="print the scan's result as JSON (machine output)")
    p.set_defaults(func=run_scan)


def run_scan(args: Any) -> int:
    from rich.console import Console

    from ..jsonutil import jsonable
    from ..terminal import json_or, report_error

    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    console = Console(stderr=True)

    def progress(t: Trial) -> None:
        if not args.json:
            what = f"{t.value:.4f}" if t.state == "COMPLETE" else f"failed: {t.error}"
            console.print(
                f"trial {t.number}: {_params_text(t.params)} -> {what} ({t.seconds:.1f} s)", highlight=False
            )

    from .scan import scan

    try:
        result = scan(
            args.config,
            args.out,
            trials=args.trials,
            parallel=args.parallel,
            scheduler=args.scheduler,
            epochs=args.epochs,
            on_trial=progress,
        )
    except Mlaas4hepError as err:
        return report_error(err, args)
    json_or(
        args.json,
        lambda: json.loads(json.dumps(result.to_dict(), default=jsonable)),
        lambda: print_table(result),
    )
    return 0 if result.best is not None else 1


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_table(result: ScanResult) -> None:
    """The trials as a table, the best one marked, and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    space = result.space
    t = Table(
        title=f"scan: {len(result.trials)} trials, {space.direction} {space.metric}", title_justify="left"
    )
    t.add_column("trial", justify="right")
    for p in space.params:
        t.add_column(p.name, justify="right", min_width=len(p.name))
    t.add_column(space.metric, justify="right")
    other = "val_loss" if space.metric != "val_loss" else "val_auc"
    t.add_column(other, justify="right")
    t.add_column("data", justify="left")  # what epoch 0 read: the ROOT files or the decoded cache
    t.add_column("time", justify="right")
    for tr in result.trials:
        best = result.best is not None and tr.number == result.best.number
        value = f"{tr.value:.4f}" if tr.value is not None else "failed"
        o = tr.metrics.get(other)
        t.add_row(
            f"{tr.number}{' ★' if best else ''}",
            *(_fmt(tr.params.get(p.name)) for p in space.params),
            value,
            "" if o is None else f"{o:.4f}",
            "ROOT" if tr.sources[:1] == ["stream"] else (tr.sources[0] if tr.sources else ""),
            f"{tr.seconds:.1f} s",
            style="bold green" if best else ("red" if tr.state == "FAIL" else None),
        )
    c = Console()
    if not c.is_terminal:  # a log file or a pipe: no wrapping at 80 columns
        c = Console(width=max(c.width, 160))
    c.print(t)
    if result.best is None:
        c.print("no trial completed; see the errors above")
        return
    b = result.best
    c.print(
        f"best: trial {b.number} ({_params_text(b.params)}), {space.metric} {b.value:.4f}", highlight=False
    )
    c.print(f"bundle {result.bundle_path}; {result.out_dir / 'scan.json'}")
    if result.plots:
        c.print("plots " + ", ".join(str(p) for p in result.plots))
