"""Hyperparameter scans: ``mlaas4hep scan CONFIG --trials N``, trials drawn by Optuna.

A scan trains the model of a train configuration ``N`` times, each time with
``training:`` values drawn from the search space of its ``scan:`` section
(:mod:`.scanspace`; the learning rate and the batch size by default), and keeps
the best::

    mlaas4hep scan train.yaml --trials 20 --parallel 2 -o runs/scan
    mlaas4hep scan train.yaml --trials 50 --scheduler tcp://10.0.0.1:8786

* **Data read once**: every trial reads the same decoded cache (the dataset's
  ``cache_dir``: a scan changes no setting of the cache key). The first trial
  runs alone and fills it; the others start after it and read it (their
  epoch 0 reports ``source: cache`` in ``metrics.json``).
* **In parallel**: ``--parallel K`` trials at a time in processes of this
  machine (each gets ``cores / K`` PyTorch threads unless ``training.threads``
  is set), or on the workers of a Dask cluster (``--scheduler``; the workers
  must see the configuration, the data and ``OUT`` under the same paths, a
  shared file system, and decode in the trial's own process).
* **Outputs** in ``OUT`` (default ``runs/scan-<name>``): ``trials/NNN/`` (each
  trial's bundle, metrics and plots), ``bundle/`` (a copy of the best trial's),
  ``scan.json`` (every trial: parameters, metric, state), ``scan.png`` (the
  metric against the trial and against each parameter) and ``roc.png`` (every
  trial's ROC curve on one plot); a table is printed.
* **Tracking**: with ``tracking:`` in the configuration every trial is one run
  (MLflow: in ``OUT/trials/mlflow.db``, experiment = the bundle's name).

Optuna's sampler (TPE by default) proposes each trial from the results so far;
trials running in parallel are proposed without each other's results, as in any
parallel Optuna study. A failed trial (say, a batch size too large for the
GPU) is recorded as failed and the scan goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import extras
from ..errors import ConfigError, Mlaas4hepError
from ..io import DatasetConfig
from ..jsonutil import jsonable
from .config import split_config
from .scanspace import ScanSpace

log = logging.getLogger(__name__)

#: False-positive rates at which each trial's ROC curve is kept (for roc.png).
ROC_GRID = np.unique(np.r_[0.0, np.geomspace(1e-4, 1.0, 120)])


@dataclass
class Trial:
    """One trial: its parameters, and what its training gave."""

    number: int
    params: dict[str, Any]
    out: str
    state: str = "RUNNING"  # COMPLETE | FAIL
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # each epoch's data source: stream | cache
    seconds: float = 0.0
    error: str = ""
    roc: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ScanResult:
    """What :func:`scan` returns (and ``OUT/scan.json`` holds)."""

    out_dir: Path
    space: ScanSpace
    trials: list[Trial]
    best: Trial | None
    bundle_path: Path | None
    seconds: float
    plots: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.space.metric,
            "direction": self.space.direction,
            "space": [{"name": p.name, "kind": p.kind, "values": p.values} for p in self.space.params],
            "best": None if self.best is None else self.best.number,
            "best_value": None if self.best is None else self.best.value,
            "best_params": None if self.best is None else self.best.params,
            "bundle": None if self.bundle_path is None else str(self.bundle_path),
            "seconds": self.seconds,
            "trials": [{k: v for k, v in vars(t).items() if k != "roc"} for t in self.trials],
        }


def run_trial(
    config: Any, out: str, params: dict[str, Any], metric: str, in_trial_decoding: bool, fixed: dict[str, Any]
) -> Trial:
    """Train one trial (in a worker process or on a Dask worker) with the drawn ``params``
    (and the ``fixed`` overrides of every trial), and summarise it."""
    from .metrics import roc_curve
    from .runner import train

    t0 = time.perf_counter()
    trial = Trial(int(Path(out).name), dict(params), out)
    dcfg = config if isinstance(config, DatasetConfig) else _dataset_config(config)
    if in_trial_decoding:  # a Dask worker cannot start a process pool of its own
        dcfg.workers = 0
    try:
        r = train(dcfg, out, show_progress=False, overrides={**params, **fixed})
    except Mlaas4hepError as err:
        trial.state, trial.error = "FAIL", str(err)
        trial.seconds = time.perf_counter() - t0
        return trial
    m = r.metrics
    trial.metrics = {
        k: m.get(k) for k in ("val_auc", "val_loss", "val_accuracy", "best_epoch", "epochs_trained", "n_val")
    }
    trial.sources = [str(e.get("source", "")) for e in m.get("epochs", [])]
    value = m.get(metric)
    if value is None or not np.isfinite(value):
        trial.state, trial.error = "FAIL", f"the run has no finite {metric} (metrics.json: {value!r})"
    else:
        trial.state, trial.value = "COMPLETE", float(value)
    scores = None if r.val_scores is None else np.asarray(r.val_scores)
    if scores is not None and (scores.ndim == 1 or scores.shape[1] == 1):
        fpr, tpr = roc_curve(np.asarray(r.val_labels) == 1, scores.reshape(-1), r.val_weights)
        trial.roc = {"fpr": ROC_GRID.tolist(), "tpr": np.interp(ROC_GRID, fpr, tpr).tolist()}
    trial.seconds = time.perf_counter() - t0
    return trial


def _dataset_config(config: Any) -> DatasetConfig:
    if isinstance(config, dict):
        return DatasetConfig.from_dict(dict(config))
    return DatasetConfig.from_yaml(config)


def scan(
    config: str | os.PathLike | dict[str, Any],
    out: str | os.PathLike | None = None,
    *,
    trials: int = 10,
    parallel: int = 1,
    scheduler: str | None = None,
    epochs: int | None = None,
    on_trial: Callable[[Trial], Any] | None = None,
) -> ScanResult:
    """Run a scan; see the module docstring. ``on_trial`` is called with each finished trial."""
    optuna = extras.require("optuna", "mlaas4hep scan")
    t_start = time.perf_counter()
    dcfg, tcfg = split_config(config if not isinstance(config, os.PathLike) else str(config))
    space = ScanSpace.of(dcfg)
    if trials < 1 or parallel < 1:
        raise ConfigError(f"--trials and --parallel must be positive, got {trials} and {parallel}")
    out_dir = Path(out) if out is not None else Path("runs") / f"scan-{tcfg.bundle_name}"
    if (out_dir / "trials").is_dir() and any((out_dir / "trials").iterdir()):
        raise ConfigError(
            f"{out_dir} already holds a scan (trials/); give another output directory (-o) or remove it"
        )
    (out_dir / "trials").mkdir(parents=True, exist_ok=True)
    fixed: dict[str, Any] = {} if epochs is None else {"epochs": int(epochs)}
    parallel = min(parallel, trials)
    if tcfg.threads is None and scheduler is None and parallel > 1:  # K trials share the cores
        fixed["threads"] = max(1, (os.cpu_count() or 1) // parallel)
    # a YAML path travels as a path (its relative paths are the file's); a dict as a dict
    payload: Any = str(config) if isinstance(config, (str, os.PathLike)) else dcfg

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = space.seed if space.seed is not None else tcfg.seed
    sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if space.sampler == "random"
        else optuna.samplers.TPESampler(seed=seed)
    )
    study = optuna.create_study(direction=space.direction, sampler=sampler)
    dists = {p.name: p.distribution() for p in space.params}
    log.info(
        "scan: %d trials of %s over %s; %s %s",
        trials,
        Path(tcfg.model).name,
        ", ".join(p.describe() for p in space.params),
        space.direction,
        space.metric,
    )

    pool = _Pool(parallel, scheduler)
    done: list[Trial] = []
    running: dict[Any, tuple[Any, Trial]] = {}
    asked = 0
    try:
        while len(done) < trials:
            # the first trial runs alone: it decodes the data into the cache the others read
            limit = 1 if not done else parallel
            while asked < trials and len(running) < limit:
                ot = study.ask(dists)
                t = Trial(asked, dict(ot.params), str((out_dir / "trials" / f"{asked:03d}").resolve()))
                fut = pool.submit(
                    run_trial, payload, t.out, t.params, space.metric, scheduler is not None, fixed
                )
                running[fut] = (ot, t)
                asked += 1
            for fut in pool.wait_first(list(running)):
                ot, t = running.pop(fut)
                try:
                    t = fut.result()
                except Exception as err:  # the worker died, or an error that is not ours
                    t.state, t.error = "FAIL", f"{type(err).__name__}: {err}"
                if t.state == "COMPLETE":
                    study.tell(ot, t.value)
                else:
                    study.tell(ot, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d failed: %s", t.number, t.error)
                done.append(t)
                if on_trial is not None:
                    on_trial(t)
    finally:
        pool.close()

    done.sort(key=lambda t: t.number)
    complete = [t for t in done if t.state == "COMPLETE" and t.value is not None]
    best: Trial | None = None
    for t in complete:
        assert t.value is not None
        if best is None or space.better(t.value, best.value):  # type: ignore[arg-type]
            best = t
    bundle_path = None
    if best is not None and (Path(best.out) / "bundle").is_dir():
        bundle_path = out_dir / "bundle"
        shutil.rmtree(bundle_path, ignore_errors=True)
        shutil.copytree(Path(best.out) / "bundle", bundle_path)
    result = ScanResult(out_dir, space, done, best, bundle_path, time.perf_counter() - t_start)
    (out_dir / "scan.json").write_text(json.dumps(result.to_dict(), indent=1, default=jsonable))
    if tcfg.plots:
        try:
            from .scanplots import write_plots
        except ImportError as err:  # matplotlib missing: plots are optional
            log.warning("scan plots skipped: %s", err)
        else:
            result.plots = write_plots(result, list(dcfg.label_names or []))
    return result


class _Pool:
    """Where trials run: in this process (1 at a time), local processes, or a Dask cluster."""

    def __init__(self, parallel: int, scheduler: str | None):
        self.client = None
        self.executor: Any = None
        if scheduler:
            from ..scale.dask import dask_executor

            self.client = dask_executor(scheduler).client
        elif parallel > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a clean interpreter per worker (no forked PyTorch or thread state)
            self.executor = ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., Trial], *args: Any) -> Any:
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False)
        if self.executor is not None:
            return self.executor.submit(fn, *args)
        return _Done(fn, args)

    def wait_first(self, futures: list[Any]) -> list[Any]:
        if self.client is not None:  # (distributed.wait needs the default client, which ours may not be)
            while not (ready := [f for f in futures if f.done()]):
                time.sleep(0.2)
            return ready
        if self.executor is not None:
            from concurrent.futures import FIRST_COMPLETED, wait

            return list(wait(futures, return_when=FIRST_COMPLETED).done)
        return futures

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class _Done:
    """A trial run right here, in this process, when it is submitted."""

    def __init__(self, fn: Callable[..., Trial], args: tuple[Any, ...]):
        self._result = fn(*args)

    def result(self) -> Trial:
        return self._result


# ---------------------------------------------------------------------------- command line
