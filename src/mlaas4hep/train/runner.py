"""The training run: :func:`train`, from a configuration to a bundle.

Steps, in order, each failing early with a clear message:

1. read the configuration (:func:`.config.split_config`);
2. import the model file (syntax errors, a missing ``model`` function);
3. open the dataset's first file for its branch list, build the model for the
   number of features and check its input and output shapes: all before any
   event is read (when the configuration gives every jagged length; otherwise
   the specs pass must run first to learn them);
4. train epoch by epoch (streamed, or ``in_memory``), with validation on events
   held out by a hash of their id, early stopping on the validation loss, a
   checkpoint at the end of every epoch, and a progress bar;
5. restore the best epoch's weights, export ONNX with a parity check, write
   ``OUT/bundle/``, ``OUT/metrics.json`` and the plots in ``OUT/plots/``.

Under ``torchrun`` (PyTorch models), the run is data parallel: each rank reads
its shard of every epoch, DDP synchronises the gradients and only rank 0 writes:
the run's :class:`.strategy.Local` strategy (a :class:`.ddp.Context` under
``torchrun``) is asked at each of those points, so the loop below has no
branch for it; see :mod:`mlaas4hep.train.ddp` and ``docs/ddp.md``.

Typical use::

    from mlaas4hep.train import train
    result = train("train.yaml", out="runs/tth")
    result.metrics["val_auc"], result.bundle_path
    result.val_scores, result.val_labels      # for your own ROC plots
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import bundle as bundle_mod
from .. import progress
from ..io import Dataset, DatasetConfig
from ..jsonutil import digest, jsonable
from . import checkpoint, ddp, metrics, tracking
from .backend import Backend, make_backend
from .config import TrainConfig, split_config
from .data import Part, Source, expected_n_features
from .errors import OutputExistsError, TrainError, TrainInterrupted
from .strategy import Local
from .userfile import build, load_module, wants_input_shapes

log = logging.getLogger(__name__)

#: An epoch callback gets the epoch's record (a dict, as in ``metrics.json``);
#: returning ``True`` stops the run after that epoch's checkpoint (an "interruption").
Callback = Callable[[dict[str, Any]], Any]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    * ``metrics``: the content of ``metrics.json``: ``epochs`` (one record per
      epoch: ``train_loss``, ``val_loss``, ``val_auc`` or ``val_accuracy``,
      ``events``, ``seconds``, ``events_per_s``, ``source`` = stream / cache /
      memory), and the final ``val_auc``, ``val_loss``, ``best_epoch``,
      ``onnx_parity`` ...;
    * ``bundle_path``: ``OUT/bundle`` (None when the run was interrupted);
    * ``val_scores``, ``val_labels``, ``val_weights``: the validation events'
      probabilities (label 1 for binary) and truth, for ROC curves (the rows
      themselves are ``source.val.x``);
    * ``dataset``: the :class:`~mlaas4hep.io.Dataset`; ``source``: its :class:`.data.Source`;
    * ``model``: the trained native model; ``backend``: its :class:`.backend.Backend`;
    * ``rank``, ``world_size``: this process's place in a DDP run (0 and 1 otherwise).
      Under DDP the ``val_*`` arrays hold every rank's validation events (in rank
      order) while ``source.val`` holds this rank's share; ``bundle_path`` is
      written by rank 0.
    """

    out_dir: Path
    bundle_path: Path | None
    metrics: dict[str, Any]
    val_scores: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_weights: np.ndarray | None = None
    framework: str = ""
    model: Any = None
    backend: Backend | None = field(default=None, repr=False)
    interrupted: bool = False
    plots: list[Path] = field(default_factory=list)
    dataset: Dataset | None = field(default=None, repr=False)
    source: Source | None = field(default=None, repr=False)
    rank: int = 0
    world_size: int = 1
    #: where the run was logged (``tracking:``), in words; "" without tracking
    tracking: str = ""

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics.get("epochs", [])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, and PyTorch / Keras when they are imported."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
    if "keras" in sys.modules:
        import keras

        keras.utils.set_random_seed(seed)


def data_fingerprint(ds: Dataset) -> str:
    """A hash of the files (url, size, mtime, uuid, entries), the preprocessing and the labels."""
    files = [{k: f.get(k) for k in ("url", "size", "mtime", "uuid", "entries")} for f in ds.file_infos]
    blob = {
        "files": files,
        "preprocessing": ds.preprocessor.to_dict(),
        "labels": ds.label_names,
        "groups": [(g.path, g.label, g.weight) for g in ds.config.files],
    }
    return "sha256:" + digest(blob)


def train(
    config: str | os.PathLike | Mapping[str, Any] | DatasetConfig,
    out: str | os.PathLike | None = None,
    *,
    in_memory: bool = False,
    device: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    show_progress: bool | None = None,
    dataset: Dataset | None = None,
    overrides: Mapping[str, Any] | None = None,
    tracking: Any = None,
    dataset_overrides: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Train the model of a train configuration; see the module docstring.

    ``config`` is a YAML path, a dict or a :class:`DatasetConfig` (whose
    ``extra`` holds ``model`` and ``training``). ``out`` defaults to
    ``runs/<model name>``. ``device`` and ``epochs`` override the configuration,
    as do the keys of ``overrides`` (any ``training:`` key) and of
    ``dataset_overrides`` (dataset keys: ``workers``, ``executor``,
    ``scheduler``...; a scheduler implies the Dask executor). ``resume``
    continues from ``OUT/checkpoint`` when there is one. ``overwrite=False``
    refuses an ``out`` that already holds a run (the command line's default);
    otherwise its bundle, checkpoint and metrics are replaced. ``dataset``
    passes a ready :class:`Dataset` (its configuration must be ``config``'s).
    ``tracking`` (``"mlflow"``, ``"tensorboard"`` or a mapping) replaces the
    configuration's ``tracking:`` key (:mod:`.tracking`).
    """
    over = dict(overrides or {})
    if epochs is not None:
        over["epochs"] = int(epochs)
    if device is not None:
        over["device"] = device
    dcfg, tcfg = split_config(dataset.config if dataset is not None and config is None else config, over)
    for key, value in (dataset_overrides or {}).items():
        if value is not None:
            setattr(dcfg, key, value)
    if dcfg.scheduler:
        dcfg.executor = "dask"
    run = Run(dcfg, tcfg, out, in_memory, resume, list(callbacks), show_progress, dataset)
    run.overwrite = overwrite
    run.tracking = tracking
    try:
        result = run.run()
    except BaseException as err:  # the tracked run ends FAILED (KILLED on Ctrl-C)
        if run.tracker is not None:
            run.tracker.fail(interrupted=isinstance(err, KeyboardInterrupt))
        raise
    if run.tracker is not None:
        run.tracker.finish(result.metrics, result.plots, result.bundle_path, run.out)
        result.tracking = run.tracker.where
    return result


#: What a run writes into its output directory (what ``overwrite`` replaces).
OUTPUTS = ("bundle", "checkpoint", "metrics.json", "plots", "report.html")


class Run:
    """One training run (internal: use :func:`train`)."""

    def __init__(
        self,
        dcfg: DatasetConfig,
        tcfg: TrainConfig,
        out,
        in_memory: bool,
        resume: bool,
        callbacks: list[Callback],
        show_progress: bool | None,
        dataset: Dataset | None,
    ):
        self.dcfg, self.cfg = dcfg, tcfg
        self.out = Path(out) if out is not None else Path("runs") / tcfg.bundle_name
        self.in_memory, self.resume = in_memory, resume
        self.callbacks, self.show = callbacks, show_progress
        self.ds = dataset
        self.ckpt_dir = self.out / "checkpoint"
        #: Whether an ``out`` that holds a run may be replaced (else :class:`.errors.OutputExistsError`).
        self.overwrite = True
        #: One process, or this rank of a ``torchrun`` launch (set by :meth:`run`).
        self.strategy: Local = Local()
        #: ``train(tracking=...)``: replaces the configuration's ``tracking:`` key.
        self.tracking: Any = None
        self.tracker: tracking.Tracker | None = None  # MLflow or TensorBoard, once prepared
        tracking.TrackingConfig.parse(dcfg.extra.get("tracking"), dcfg)  # a typo fails before any read

    # ------------------------------------------------------------ setup
    def _prepare(self) -> None:
        cfg = self.cfg
        module = load_module(cfg.model)  # (2) before anything is opened
        ds = self.ds = self.ds or Dataset(self.dcfg, show_progress=self.show)
        if cfg.shuffle_buffer:  # the training's buffer replaces the dataset's (batching is the dataset's)
            ds.config = dataclasses.replace(ds.config, shuffle_buffer=int(cfg.shuffle_buffer))
        st = self.strategy
        self.labels = ds.label_names
        n_classes = len(self.labels)
        n0 = expected_n_features(ds)  # (3) metadata of the first file only
        seed_everything(cfg.seed)
        um = None
        object_level = wants_input_shapes(module)  # built once the groups' layout is known
        try:
            um = None if object_level else build(cfg.model, n0, n_classes, cfg.framework, module)
        except Exception as err:
            if n0 is not None or "number of features" not in str(err):
                raise
        if um is not None and um.framework == "sklearn":
            from .sklearn_backend import check_streaming

            check_streaming(um.model, cfg.accumulate, self.in_memory)
        if um is not None and um.framework != "pytorch":  # fail before the specs pass
            st.require_single(um.framework, Path(cfg.model).name)
        if ds.needs_specs:  # under DDP rank 0 runs (or loads) the specs pass first
            st.ordered(lambda: ds.specs)
        self.source = Source(
            ds, cfg.validation_fraction, cfg.seed, in_memory=self.in_memory, rank=st.rank, world=st.world
        )
        if self.in_memory:
            self.source.load()
        n_features = ds.n_features  # runs (or loads) the specs pass
        if n0 is not None and n0 != n_features:
            raise TrainError(
                f"internal: expected {n0} features from the configuration, the specs give {n_features}"
            )
        if um is None:
            seed_everything(cfg.seed)
            shapes = ds.input_shapes() if object_level else None
            um = build(cfg.model, n_features, n_classes, cfg.framework, module, shapes)
        self.um = um
        self.backend = make_backend(um, cfg, n_features, n_classes, cfg.device, st)
        self.n_features = n_features
        self.fingerprint = data_fingerprint(ds)
        ds.show_progress = False  # the epoch bars below replace the dataset's own
        self.signature = {
            "model": str(Path(cfg.model).resolve()),
            "framework": um.framework,
            "n_features": n_features,
            "labels": self.labels,
            "data": self.fingerprint,
            "validation_fraction": cfg.validation_fraction,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
        }
        if um.input_shapes is not None:  # object-level models: the groups' shapes too
            self.signature["input_shapes"] = {k: list(v) for k, v in um.input_shapes.items()}

    # ------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """The run; Ctrl-C raises :class:`.errors.TrainInterrupted`, naming the last checkpoint."""
        try:
            return self._run()
        except KeyboardInterrupt as err:
            if isinstance(err, TrainInterrupted):
                raise
            state = checkpoint.read_state(self.ckpt_dir) if self.strategy.is_main else None
            ckpt = self.ckpt_dir if state is not None else None
            raise TrainInterrupted(self.out, ckpt, None if state is None else int(state["epoch"])) from None

    def _check_out(self) -> None:
        """Refuse to replace a run in ``out`` unless asked to; clear the old one when replacing it."""
        found = [name for name in OUTPUTS if (self.out / name).exists()]
        if self.resume or not found:
            return
        if not self.overwrite:
            raise OutputExistsError(
                f"{str(self.out)!r} already holds a training run ({', '.join(found)}): give --overwrite to "
                f"replace it, --resume to continue it, or another --out"
            )
        if self.strategy.is_main:  # no stale checkpoint for a later --resume, no stale native weights
            for name in ("bundle", "checkpoint", "checkpoint.tmp", "checkpoint.old"):
                shutil.rmtree(self.out / name, ignore_errors=True)

    def _run(self) -> TrainResult:
        t_start = time.perf_counter()
        st = self.strategy = ddp.init(self.cfg.device) or Local()
        self._check_out()
        if st.device is not None:
            self.cfg.device = st.device  # cuda:LOCAL_RANK or cpu under DDP
        if not st.is_main:
            self.show = False
        self._prepare()
        if st.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        be = self.backend
        self.history: list[dict[str, Any]] = []
        self.best: Any = None
        self.best_loss, self.best_epoch, self.bad, self.stopped_early, self.finished = (
            float("inf"),
            -1,
            0,
            False,
            False,
        )
        start = self._maybe_resume()
        self.tracker = self._tracker()
        interrupted = False
        if be.epoch_based:
            if not self.finished:
                interrupted = self._epochs(start)
        else:
            self.history = be.fit(self.source, self)
            interrupted = bool(getattr(be, "interrupted", False))
        result = self._finish(interrupted, time.perf_counter() - t_start)
        return result

    def _tracker(self) -> tracking.Tracker | None:
        """MLflow or TensorBoard (rank 0 only), logging each epoch as a callback."""
        if not self.strategy.is_main:
            return None
        tracker = tracking.start(
            self.dcfg,
            self.cfg,
            self.out,
            framework=self.backend.framework,
            n_features=self.n_features,
            resume=self.resume,
            override=self.tracking,
        )
        if tracker is not None:
            if tracker.continued:  # the epochs before --resume are in the run already
                tracker.logged.update(int(h["epoch"]) for h in self.history)
            self.callbacks.append(tracker)
        return tracker

    def _maybe_resume(self) -> int:
        if not self.resume:
            return 0
        state = checkpoint.read_state(self.ckpt_dir)
        # under DDP every rank must load the same checkpoint
        self.strategy.check_resume(None if state is None else int(state["epoch"]))
        if state is None:
            log.warning("--resume: no checkpoint in %s, starting from epoch 0", self.ckpt_dir)
            return 0
        diff = {
            k: (state["signature"].get(k), v)
            for k, v in self.signature.items()
            if state["signature"].get(k) != v
        }
        if diff:
            raise TrainError(
                f"cannot resume from {self.ckpt_dir}: the checkpoint was written for another run "
                f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); remove it or change --out"
            )
        if not self.backend.resumable:
            log.warning(
                "--resume: %s models cannot continue from a checkpoint; starting from epoch 0",
                self.backend.framework,
            )
            return 0
        self.best = self.backend.load(self.ckpt_dir)
        self.history = state["history"]
        self.best_loss = state["best_loss"] if state["best_loss"] is not None else float("inf")
        self.best_epoch, self.bad = state["best_epoch"], state["bad_epochs"]
        self.stopped_early, self.finished = state["stopped_early"], state.get("finished", False)
        start = int(state["epoch"]) + 1
        if self.stopped_early:
            self.finished = True
            log.warning(
                "--resume: nothing to train: the run in %s stopped early after epoch %d (no improvement of "
                "the validation loss for %d epochs); the bundle is written from its best epoch, %d",
                self.out,
                start - 1,
                self.bad,
                self.best_epoch,
            )
        elif start >= self.cfg.epochs:
            self.finished = True
            log.warning(
                "--resume: nothing to train: the checkpoint in %s holds epochs 0-%d and training.epochs "
                "is %d; give --epochs %d or more to train more",
                self.ckpt_dir,
                start - 1,
                self.cfg.epochs,
                start + 1,
            )
        else:  # a finished run given more epochs goes on
            self.finished = False
            log.info(
                "resuming from %s: epochs %d-%d of %d",
                self.ckpt_dir,
                start,
                self.cfg.epochs - 1,
                self.cfg.epochs,
            )
        return start

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "history": self.history,
            "best_loss": self.best_loss if np.isfinite(self.best_loss) else None,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad,
            "stopped_early": self.stopped_early,
            "finished": self.finished,
            "signature": self.signature,
            "training": self.cfg.to_dict(),
        }

    def save_checkpoint(self, epoch: int) -> None:
        """Rank 0 writes; under DDP the other ranks wait for it."""
        if self.strategy.is_main:
            checkpoint.write(self.ckpt_dir, self._state(epoch), lambda d: self.backend.save(d, self.best))
        self.strategy.barrier()

    def _evaluate(self, val: Part) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
        """Validation metrics, probabilities, labels, weights (under DDP: of every rank's events)."""
        p, y, w = self.strategy.gather(self.backend.scores(val), np.asarray(val.y), np.asarray(val.w))
        return metrics.summary(y, p, w), p, y, w

    def _epochs(self, start: int) -> bool:
        cfg, be, src, st = self.cfg, self.backend, self.source, self.strategy
        assert self.ds is not None  # opened by _prepare
        ds = self.ds
        # the progress bar's total: no specs pass only to count the selected events
        counted = ds.needs_specs or not ds.config.selection
        events = ds.nevents if counted else sum(f["entries"] for f in ds.file_infos)
        total = events * (1 - cfg.validation_fraction) / st.world
        last = cfg.epochs if be.max_epochs is None else min(cfg.epochs, be.max_epochs)
        for epoch in range(start, last):
            kind = src.kind(epoch)
            n, t0 = 0, time.perf_counter()
            be.begin_epoch(epoch)
            st.begin_epoch(epoch, cfg.seed)
            with progress.bar(f"epoch {epoch}", total, show=self.show) as bar:
                steps = st.steps(be.epoch_batches(src, epoch), be.idle_step)
                for i, (batch, scale) in enumerate(steps):
                    be.train_batch(batch, scale)
                    k = len(batch)
                    n += k
                    if i % 25 == 0:
                        bar.advance(k, info=f"loss {be.running_loss():.4f}")
                    else:
                        bar.advance(k)
                train_loss = be.end_epoch()
                bar.update(info=f"loss {train_loss:.4f}")
            # totals over the ranks under DDP; per-rank events/s under "ranks"
            train_loss, n, dt, ranks = st.epoch_totals(train_loss, n, time.perf_counter() - t0)
            t1 = time.perf_counter()
            vm, _, val_y, _ = self._evaluate(src.ensure_val())
            rec = {
                "epoch": epoch,
                "train_loss": train_loss,
                **vm,
                "events": n,
                "seconds": dt,
                "events_per_s": n / dt if dt > 0 else float("nan"),
                "source": kind,
                "val_events": len(val_y),
                "val_seconds": time.perf_counter() - t1,
            }
            if ranks is not None:
                rec.update(world_size=st.world, ranks=ranks)
            self.history.append(rec)
            if st.is_main:
                log.info("epoch %d: %s", epoch, format_epoch(rec))
            if vm["val_loss"] < self.best_loss - cfg.min_delta:
                self.best_loss, self.best_epoch, self.bad = vm["val_loss"], epoch, 0
                self.best = be.snapshot()
            else:
                self.bad += 1
            if cfg.early_stopping and self.bad >= cfg.early_stopping:
                self.stopped_early = True
                if st.is_main:
                    log.info("early stopping: no improvement of the validation loss for %d epochs", self.bad)
            self.save_checkpoint(epoch)
            # a callback stopping any rank stops them all
            stop = st.any(any(cb(rec) is True for cb in self.callbacks))
            if stop and not self.stopped_early and epoch + 1 < last:
                return True
            if self.stopped_early:
                break
        return False

    # ------------------------------------------------------------ outputs
    def _finish(self, interrupted: bool, seconds: float) -> TrainResult:
        be, cfg = self.backend, self.cfg
        if not interrupted and be.epoch_based and self.best is not None:
            be.restore(self.best)
        val = self.source.ensure_val()
        vm, scores, val_y, val_w = self._evaluate(val)
        st = self.strategy
        world = st.world
        metrics: dict[str, Any] = {
            "name": cfg.bundle_name,
            "framework": be.framework,
            "model_file": cfg.model,
            "device": be.device,
            "in_memory": self.in_memory,
            "n_features": self.n_features,
            "labels": self.labels,
            "n_train": int(self.history[-1]["events"])
            if self.history and "events" in self.history[-1]
            else None,
            "n_val": len(val_y),
            **vm,
            "best_epoch": self.best_epoch,
            "epochs_trained": len(self.history),
            "stopped_early": self.stopped_early,
            "interrupted": interrupted,
            "seconds": seconds,
            "data_fingerprint": self.fingerprint,
            "training": cfg.to_dict(),
            "epochs": self.history,
            "world_size": world,
        }
        result = TrainResult(
            self.out,
            None,
            metrics,
            scores,
            val_y,
            val_w,
            be.framework,
            be.model,
            be,
            interrupted,
            dataset=self.ds,
            source=self.source,
            rank=st.rank,
            world_size=world,
        )
        if not interrupted:
            if be.epoch_based:
                self.finished = True
                self.save_checkpoint(self.history[-1]["epoch"] if self.history else -1)
            if st.is_main:
                result.bundle_path = self._bundle(metrics, val)
                if cfg.plots:
                    result.plots = self._plots(result)
            else:
                result.bundle_path = self.out / "bundle"  # written by rank 0
        if st.is_main:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=jsonable))
        st.barrier()
        return result

    def _bundle(self, metrics: dict[str, Any], val: Part) -> Path:
        be, cfg = self.backend, self.cfg
        bdir = self.out / "bundle"
        bdir.mkdir(parents=True, exist_ok=True)
        sample = val.take(slice(0, 2048))  # parity on validation events, every input of the model
        metrics["onnx_parity"] = be.export_onnx(bdir / "model.onnx", sample)
        native = be.save_native(bdir)
        summary: dict[str, Any] = {
            k: metrics[k]
            for k in (
                "val_loss",
                "val_auc",
                "val_accuracy",
                "best_epoch",
                "epochs_trained",
                "n_train",
                "n_val",
                "onnx_parity",
            )
            if k in metrics
        }
        assert self.ds is not None
        bundle_mod.write(
            bdir,
            bdir / "model.onnx",
            self.ds.preprocessor,
            self.labels,
            name=cfg.bundle_name,
            framework=be.framework,
            version=cfg.version,
            metrics=summary,
            data_fingerprint=self.fingerprint,
            description=cfg.description or f"{be.framework} model from {Path(cfg.model).name}",
            native={k: str(v) for k, v in native.items()},
            identifier=self.ds.config.identifier,
            extra={
                "training": {
                    k: getattr(cfg, k)
                    for k in ("epochs", "batch_size", "learning_rate", "validation_fraction", "seed")
                }
            },
        )
        return bdir

    def _plots(self, result: TrainResult) -> list[Path]:
        try:
            from .plots import write_all
        except ImportError as err:  # matplotlib / mplhep missing: plots are optional
            log.warning("plots skipped: %s", err)
            return []
        paths = write_all(
            self.out / "plots",
            result.history,
            result.val_labels,
            result.val_scores,
            result.val_weights,
            self.labels,
        )
        return paths + self._report(result)

    def _report(self, result: TrainResult) -> list[Path]:
        """``OUT/report.html`` (:mod:`.report`); a failure there costs the report, not the run."""
        try:
            from .report import write_report

            return write_report(result, self.out)
        except Exception as err:  # the bundle is written: never lose a trained model to a figure
            log.warning("report.html skipped: %s: %s", type(err).__name__, err)
            return []


def format_epoch(rec: dict[str, Any]) -> str:
    """``train loss 0.5123, val loss 0.4987, val AUC 0.8012, 52,311 events/s (cache)``: one epoch's line."""
    names = {
        "train_loss": "train loss",
        "val_loss": "val loss",
        "val_auc": "val AUC",
        "val_accuracy": "val accuracy",
    }
    parts = [f"{label} {rec[k]:.4f}" for k, label in names.items() if rec.get(k) is not None]
    if "events_per_s" in rec:
        parts.append(f"{rec['events_per_s']:,.0f} events/s ({rec.get('source', '')})")
    if rec.get("ranks"):
        parts[-1] += " in total; per rank " + " ".join(f"{r['events_per_s']:,.0f}" for r in rec["ranks"])
    return ", ".join(parts)
