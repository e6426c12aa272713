"""The ``train`` and ``workflow`` subcommands of the ``mlaas4hep`` command line.

The main parser (``mlaas4hep.cli``) calls :func:`add_train_commands` with its
``subparsers``; each subcommand sets ``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import Mlaas4hepError
from ..terminal import (
    EXIT_INTERRUPTED,
    add_executor_options,
    json_or,
    positive_int,
    report_error,
)
from .errors import TrainInterrupted

TRAIN_HELP = """\
Train the model of CONFIG on streamed ROOT data and write a bundle.

CONFIG is a dataset YAML (tree, files with labels, branches, jagged lengths...)
with two more sections:

  model: my_model.py            # a file defining model(idim) (PyTorch, Keras)
                                # or model() (scikit-learn, XGBoost); examples in
                                # the folder that `python -c "import mlaas4hep;
                                # print(mlaas4hep.MODELS_DIR)"` prints
  training:
    epochs: 10
    batch_size: 1024
    learning_rate: 0.001
    validation_fraction: 0.2    # held out by a hash of the event id
    early_stopping: 5           # patience in epochs (0: off)
    seed: 42
    framework: auto

  tracking: mlflow              # or tensorboard; or {backend, uri, experiment, run_name}

Writes OUT/bundle/ (model.onnx, bundle.json, labels.txt, native weights),
OUT/metrics.json, OUT/plots/*.png, OUT/report.html (AUC and efficiencies with
bootstrap uncertainties, ROC with log-scale rejection, KS overtraining check,
inputs per class) and OUT/checkpoint/ (for --resume).
With tracking, the run is also logged to MLflow (mlflow.db and mlruns/ next to
OUT, or the tracking URI) or TensorBoard (tensorboard/<run> next to OUT).
Progress bars show on a terminal only; --no-progress turns them off there too.
"""

WORKFLOW_HELP = """\
MLaaS4HEP's workflow: train from files.txt + labels.txt + params.json.

files.txt lists one ROOT file per line (local, root://, or /store/... with the
redirector of params.json); labels.txt one label per line, or pass a comma list
(--labels 1,0) or the name of a label branch. params.json holds MLaaS4HEP's keys
(nevts, chunk_size, epochs, batch_size, branch, selected_branches,
exclude_branches, identifier, redirector, nan ...). The model file defines
model(idim) returning a compiled Keras model (or a PyTorch nn.Module), or model()
returning a scikit-learn or XGBoost classifier.
"""


def device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    if text in ("cpu", "cuda", "auto") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a device: give cpu, cuda, cuda:N (e.g. cuda:1) or auto"
    )


def _interrupted(err: TrainInterrupted, args, command: str) -> int:
    """Ctrl-C: where the last checkpoint is, and the command that continues from it."""
    if getattr(args, "debug", False):
        raise err
    out = err.out
    if err.checkpoint is None:
        print(
            f"interrupted before the first epoch ended: no checkpoint to resume from in {str(out)!r}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    again = f"{command} -o {shlex.quote(str(out))} --resume"
    if getattr(args, "epochs", None):
        again += f" --epochs {args.epochs}"
    print(
        f"interrupted: the checkpoint of epoch {err.epoch} is in {err.checkpoint}\ncontinue with: {again}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint (same epoch, optimizer state and data position)",
    )
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole dataset in memory first (the traditional path, for comparison)",
    )
    p.add_argument(
        "--device",
        type=device_name,
        default=None,
        metavar="{cpu,cuda,cuda:N,auto}",
        help="PyTorch device (default: the config's, else auto = CUDA when available)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in OUT (bundle, checkpoint, metrics); without it, training refuses",
    )
    add_executor_options(p, "parallelism (override the dataset configuration)", workers="the config's")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they show on a terminal only)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final summary")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON (machine output)")


def add_train_commands(subparsers: Any) -> None:
    """Register ``train`` and ``workflow`` on an argparse ``subparsers`` object."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train",
        help="train a model on streamed ROOT data and write a bundle",
        description=TRAIN_HELP,
        formatter_class=fmt,
    )
    p.add_argument("config", help="train configuration (YAML): dataset + model + training sections")
    p.add_argument(
        "-o", "--out", default=None, metavar="DIR", help="output directory (default: runs/<model name>)"
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="override training.epochs")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="override training.threads: PyTorch's CPU threads (default: one per core; "
        "on a small or shared machine 1 is often faster)",
    )
    p.add_argument(
        "--tracking",
        choices=["mlflow", "tensorboard", "none"],
        default=None,
        help="log the run to MLflow or TensorBoard (default: the config's 'tracking:' key)",
    )
    _common(p)
    p.set_defaults(func=run_train)

    w = subparsers.add_parser(
        "workflow",
        help="MLaaS4HEP's workflow command (files/labels/model/params)",
        description=WORKFLOW_HELP,
        formatter_class=fmt,
    )
    w.add_argument("--files", required=True, help="text file, one ROOT file per line")
    w.add_argument(
        "--labels",
        default=None,
        help="text file, one label per line; or a comma list such as 1,0; or a label branch",
    )
    w.add_argument("--model", required=True, help="Python file defining model(idim) or model()")
    w.add_argument("--params", required=True, help="MLaaS4HEP params.json")
    w.add_argument(
        "--specs", default=None, help="where to keep the specs pass (validated, recomputed when stale)"
    )
    w.add_argument(
        "--preproc", default=None, help="MLaaS4HEP preproc.json (new_branch, flat_cut, jagged_cut)"
    )
    w.add_argument(
        "-o",
        "--out",
        "--fout",
        dest="fout",
        default=None,
        metavar="DIR",
        help="output directory (default: mlaas4hep-out/<model name>); --fout as in MLaaS4HEP",
    )
    w.add_argument("--cache-dir", default=None, help="decoded-cache directory (default: ~/.cache/mlaas4hep)")
    _common(w)
    w.set_defaults(func=run_workflow)


@contextmanager
def _messages(args) -> Iterator[None]:
    """The training's messages on standard error while the command runs: one line per epoch (loss,
    validation loss and AUC, events/s), resuming, early stopping; only warnings with ``-q`` or
    ``--json``; ``-v`` adds the rest. The logger is left as it was found afterwards."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log = logging.getLogger("mlaas4hep.train")
    before = log.level, log.propagate
    level = logging.WARNING if args.quiet or args.json else logging.INFO
    log.setLevel(min(level, logging.getLogger().getEffectiveLevel()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TrainFormatter())
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]


class _TrainFormatter(logging.Formatter):
    """Information as it is (``epoch 0: train loss ...``); warnings and errors with their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


def _report(result, as_json: bool = False) -> int:
    if result.rank != 0:  # under torchrun, rank 0 reports for all
        return 0
    m = result.metrics
    summary = {
        "interrupted": bool(result.interrupted),
        "bundle": str(result.bundle_path),
        "out": str(result.out_dir),
        **{k: m[k] for k in ("framework", "val_auc", "val_accuracy", "val_loss", "epochs_trained") if k in m},
    }
    return json_or(as_json, summary, lambda: _print_report(result))


def _print_report(result) -> None:
    m = result.metrics
    if result.interrupted:
        print(
            f"interrupted after epoch {m['epochs'][-1]['epoch'] if m['epochs'] else '-'}; "
            f"continue with --resume (checkpoint in {result.out_dir / 'checkpoint'})"
        )
        return
    score = f"val AUC {m['val_auc']:.4f}" if "val_auc" in m else f"val accuracy {m['val_accuracy']:.4f}"
    print(
        f"{m['framework']}: {score}, val loss {m['val_loss']:.4f}, {m['epochs_trained']} epochs; "
        f"bundle {result.bundle_path}; metrics {result.out_dir / 'metrics.json'}"
    )
    if getattr(result, "tracking", ""):
        print(f"logged to {result.tracking}")
    last = m["epochs"][-1] if m.get("epochs") else {}
    if last.get("ranks"):  # DDP: the last epoch's throughput, in total and per rank
        per = ", ".join(f"{r['events_per_s']:,.0f}" for r in last["ranks"])
        print(
            f"DDP, {len(last['ranks'])} ranks: {last['events_per_s']:,.0f} events/s in total; per rank {per}"
        )


def run_train(args) -> int:
    from .runner import train

    try:
        with _messages(args):
            result = train(
                args.config,
                args.out,
                in_memory=args.in_memory,
                device=args.device,
                epochs=args.epochs,
                resume=args.resume,
                show_progress=False if args.no_progress else None,
                overrides={"threads": args.threads} if args.threads is not None else None,
                tracking=getattr(args, "tracking", None),
                dataset_overrides={k: getattr(args, k) for k in ("workers", "executor", "scheduler")},
                overwrite=args.overwrite,
            )
    except Mlaas4hepError as err:
        return report_error(err, args)
    except TrainInterrupted as err:
        return _interrupted(err, args, f"mlaas4hep train {shlex.quote(args.config)}")
    return _report(result, args.json)


def run_workflow(args) -> int:
    from .workflow import workflow

    try:
        with _messages(args):
            result = workflow(
                args.files,
                args.labels,
                args.model,
                args.params,
                args.specs,
                args.preproc,
                args.fout,
                in_memory=args.in_memory,
                device=args.device,
                resume=args.resume,
                cache_dir=args.cache_dir,
                show_progress=False if args.no_progress else None,
                workers=args.workers,
                executor=args.executor,
                scheduler=args.scheduler,
                overwrite=args.overwrite,
            )
    except Mlaas4hepError as err:
        return report_error(err, args)
    except TrainInterrupted as err:
        words = ["mlaas4hep workflow"] + [
            f"--{k}={shlex.quote(str(getattr(args, k)))}"
            for k in ("files", "labels", "model", "params")
            if getattr(args, k) is not None
        ]
        return _interrupted(err, args, " ".join(words))
    return _report(result, args.json)
