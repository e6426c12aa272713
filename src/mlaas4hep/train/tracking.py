"""Experiment tracking: a training run logged to MLflow or to TensorBoard event files.

The top-level ``tracking:`` key of a train configuration turns it on::

    tracking: mlflow             # MLflow, in mlflow.db and mlruns/ next to the output directory
    tracking: tensorboard        # TensorBoard event files, in tensorboard/<run> next to it
    tracking:                    # or in full
      backend: mlflow
      uri: http://mlflow.example.cern.ch:5000   # any MLflow tracking URI (file:, http(s):, databricks ...)
      experiment: tth            # default: the bundle's name
      run_name: tth-lr3          # default: the output directory's name

What is logged, for both backends, under the names of ``metrics.json``:

* parameters: every ``training:`` key (``training.learning_rate`` ...), the
  dataset's settings (``dataset.branches`` ...), the framework and the number of
  features, and the whole configuration as ``config.yaml`` (an artifact in
  MLflow, a text summary in TensorBoard);
* per epoch (step = epoch): ``train_loss``, ``val_loss``, ``val_auc`` (or
  ``val_accuracy``) and ``events_per_s``;
* at the end: ``best_epoch`` and the final ``final_val_loss``, ``final_val_auc``
  (the restored best epoch's), the plots (PNG), and in MLflow ``metrics.json``,
  ``report.html`` and the bundle directory as artifacts (``bundle/``: ``mlflow artifacts
  download`` gives back a servable bundle).

MLflow's run ends ``FINISHED``, ``KILLED`` (an interrupted run, continued by
``--resume`` in the same MLflow run: its id is kept in ``OUT/tracking.json``)
or ``FAILED``. Both backends are optional: ``pip install 'mlaas4hep[tracking]'``
(``mlflow-skinny`` and ``tensorboard``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import extras
from ..errors import ConfigError
from ..io import DatasetConfig
from ..io.configfile import closest, unknown_key
from ..jsonutil import jsonable
from .config import TrainConfig
from .errors import TrainError

log = logging.getLogger(__name__)

BACKENDS = ("mlflow", "tensorboard")
KEYS = ("backend", "uri", "experiment", "run_name")
#: The per-epoch values logged, as named in ``metrics.json``.
EPOCH_METRICS = ("train_loss", "val_loss", "val_auc", "val_accuracy", "events_per_s")
#: MLflow keeps a parameter value of at most this many characters.
MAX_PARAM_CHARS = 6000


@dataclass
class TrackingConfig:
    """The ``tracking:`` section: a backend, and where it writes (see the module docstring)."""

    backend: str
    uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None

    @classmethod
    def parse(cls, value: Any, dcfg: DatasetConfig | None = None) -> TrackingConfig | None:
        """``mlflow``, ``tensorboard``, a mapping with :data:`KEYS`, or nothing (no tracking)."""
        if value in (None, False, "none", "off"):
            return None
        src = dcfg.source if dcfg is not None else None

        def error(msg: str, *keys: str) -> ConfigError:
            return src.error(msg, "tracking", *keys) if src is not None else ConfigError(msg)

        if isinstance(value, str):
            value = {"backend": value}
        if not isinstance(value, Mapping):
            raise error(f"tracking must be 'mlflow', 'tensorboard' or a mapping, got {value!r}")
        for k in value:
            if k not in KEYS:
                raise error(unknown_key(k, KEYS, "the tracking section"), str(k))
        backend = str(value.get("backend", "")).lower()
        if backend not in BACKENDS:
            guess = closest(backend, BACKENDS)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise error(
                f"tracking.backend must be mlflow or tensorboard, got {value.get('backend')!r}{hint}",
                "backend",
            )

        def text(key: str) -> str | None:
            return None if value.get(key) is None else str(value[key])

        return cls(backend, text("uri"), text("experiment"), text("run_name"))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}


def params_of(dcfg: DatasetConfig, tcfg: TrainConfig, extra: Mapping[str, Any]) -> dict[str, str]:
    """The run's parameters as flat strings: ``training.*``, ``dataset.*`` and ``extra``."""
    out: dict[str, str] = {}
    for k, v in tcfg.to_dict().items():
        out[f"training.{k}"] = _text(v)
    settings = dcfg.to_dict()
    settings.pop("extra", None)
    for k, v in settings.items():
        if v not in (None, [], {}, ""):
            out[f"dataset.{k}"] = _text(v)
    out.update({k: _text(v) for k, v in extra.items()})
    return out


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=jsonable)
    return s if len(s) <= MAX_PARAM_CHARS else s[: MAX_PARAM_CHARS - 3] + "..."


def config_yaml(dcfg: DatasetConfig) -> str:
    """The configuration as the user would write it (dataset settings, model, training ...)."""
    settings = dcfg.to_dict()
    extra = settings.pop("extra", {})
    return yaml.safe_dump(json.loads(json.dumps({**settings, **extra}, default=jsonable)), sort_keys=False)


class Tracker:
    """What :class:`.runner.Run` calls: :meth:`epoch` after each epoch, :meth:`finish` at the end.

    Made by :func:`start`; :meth:`epoch` has the signature of a training
    callback (it returns ``None``: it never stops a run).
    """

    #: where the run is logged, in words (printed at the start)
    where: str = ""
    #: True when an MLflow run of an earlier session continues (``--resume``)
    continued: bool = False

    def __init__(self) -> None:
        self.logged: set[int] = set()  # epochs already logged

    def epoch(self, rec: dict[str, Any]) -> None:
        self._epoch(rec)
        self.logged.add(int(rec["epoch"]))

    def finish(self, metrics: Mapping[str, Any], plots: list[Path], bundle: Path | None, out: Path) -> None:
        """Log the epochs not logged yet (a backend without epoch callbacks), the final
        values, the plots and the bundle; close the run."""
        for rec in metrics.get("epochs") or []:
            if int(rec["epoch"]) not in self.logged:
                self.epoch(rec)
        self._finish(metrics, plots, bundle, out)

    def _epoch(self, rec: dict[str, Any]) -> None:
        raise NotImplementedError

    def _finish(self, metrics: Mapping[str, Any], plots: list[Path], bundle: Path | None, out: Path) -> None:
        raise NotImplementedError

    def fail(self, interrupted: bool = False) -> None:
        """The run raised (or was interrupted by Ctrl-C): close the run with that status."""

    __call__ = epoch


def _epoch_values(rec: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(rec[k]) for k in EPOCH_METRICS if rec.get(k) is not None}


def _final_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {
        f"final_{k}": float(metrics[k])
        for k in ("val_loss", "val_auc", "val_accuracy")
        if metrics.get(k) is not None
    }
    if metrics.get("best_epoch") is not None:
        out["best_epoch"] = float(metrics["best_epoch"])
    return out


class MLflowTracker(Tracker):
    """One MLflow run, driven through :class:`mlflow.MlflowClient` (no global active run:
    trials of a scan in threads of one process do not share state)."""

    def __init__(self, cfg: TrackingConfig, out: Path, run_name: str, experiment: str, resume_id: str | None):
        super().__init__()
        mlflow = extras.require("mlflow", "tracking: mlflow")
        uri, artifacts = mlflow_uri(cfg, out)
        self.uri = uri
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            if resume_id:
                self.client.update_run(resume_id, status="RUNNING")
                self.run_id, self.continued = resume_id, True
            else:
                exp_id = self._experiment(experiment, artifacts)
                self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        except mlflow.exceptions.MlflowException as err:
            raise TrainError(f"tracking: MLflow at {uri} refused the run: {err.message}") from None
        self.where = f"MLflow run {self.run_id} ({run_name}) in experiment {experiment!r} at {uri}"

    def _experiment(self, name: str, artifacts: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifacts))
        except Exception:  # created meanwhile by a parallel trial of a scan
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def log_params(self, params: Mapping[str, str], config_text: str) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_text(self.run_id, config_text, "config.yaml")

    def _epoch(self, rec: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(rec["epoch"])
        values = [Metric(k, v, now, step) for k, v in _epoch_values(rec).items()]
        self.client.log_batch(self.run_id, metrics=values)

    def _finish(self, metrics: Mapping[str, Any], plots: list[Path], bundle: Path | None, out: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, 0) for k, v in _final_values(metrics).items()]
        )
        for p in plots:  # the PNGs under plots/, report.html next to metrics.json
            self.client.log_artifact(self.run_id, str(p), "plots" if p.suffix == ".png" else None)
        if (out / "metrics.json").exists():
            self.client.log_artifact(self.run_id, str(out / "metrics.json"))
        if bundle is not None:
            self.client.log_artifacts(self.run_id, str(bundle), "bundle")
        self.client.set_terminated(self.run_id, "KILLED" if metrics.get("interrupted") else "FINISHED")

    def fail(self, interrupted: bool = False) -> None:
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")


class TensorBoardTracker(Tracker):
    """TensorBoard event files written by :class:`torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, cfg: TrackingConfig, out: Path, run_name: str):
        super().__init__()
        extras.require("tensorboard", "tracking: tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        root = Path(os.path.expanduser(cfg.uri)) if cfg.uri else out.parent / "tensorboard"
        self.logdir = root / run_name
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.where = f"TensorBoard events in {self.logdir} (tensorboard --logdir {root})"
        self.params: dict[str, str] = {}

    def log_params(self, params: Mapping[str, str], config_text: str) -> None:
        self.params = dict(params)
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("parameters", "| parameter | value |\n|---|---|\n" + table, 0)
        self.writer.add_text("config.yaml", "```yaml\n" + config_text + "\n```", 0)

    def _epoch(self, rec: dict[str, Any]) -> None:
        for k, v in _epoch_values(rec).items():
            self.writer.add_scalar(k, v, int(rec["epoch"]))
        self.writer.flush()

    def _finish(self, metrics: Mapping[str, Any], plots: list[Path], bundle: Path | None, out: Path) -> None:
        import numpy as np
        from PIL import Image

        final = _final_values(metrics)
        for k, v in final.items():
            self.writer.add_scalar(k, v, 0)
        for p in (p for p in plots if p.suffix == ".png"):
            with Image.open(p) as img:
                rgb = np.asarray(img.convert("RGB"))
            self.writer.add_image(f"plots/{p.stem}", rgb, 0, dataformats="HWC")
        # the HParams tab: the training keys that are numbers or words, against the final metrics
        hp = {
            k: _hparam(v)
            for k, v in self.params.items()
            if k.startswith("training.") and _hparam(v) is not None
        }
        self.writer.add_hparams(hp, final, run_name=".")
        self.writer.close()

    def fail(self, interrupted: bool = False) -> None:
        self.writer.close()


def mlflow_uri(cfg: TrackingConfig, out: Path) -> tuple[str, str | None]:
    """The tracking URI, and where a new experiment keeps its artifacts (``None``: MLflow's choice).

    By default a local store next to the output directory: ``mlflow.db`` (SQLite,
    MLflow's own default since its file store was frozen) and ``mlruns/`` for the
    artifacts; ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` shows it.
    """
    if cfg.uri:
        return cfg.uri, None
    parent = out.resolve().parent
    return f"sqlite:///{parent / 'mlflow.db'}", (parent / "mlruns").as_uri()


def _hparam(v: str) -> Any:
    try:
        x = json.loads(v)
    except ValueError:
        return v
    return x if isinstance(x, (int, float, str, bool)) else None


def start(
    dcfg: DatasetConfig,
    tcfg: TrainConfig,
    out: Path,
    *,
    framework: str,
    n_features: int,
    resume: bool = False,
    override: Any = None,
) -> Tracker | None:
    """The run's tracker (``None`` without a ``tracking:`` key), its parameters already logged.

    ``override`` (``mlaas4hep train --tracking``) replaces the configuration's
    key. With ``resume``, an MLflow run recorded in ``OUT/tracking.json``
    continues.
    """
    cfg = TrackingConfig.parse(override if override is not None else dcfg.extra.get("tracking"), dcfg)
    if cfg is None:
        return None
    run_name = cfg.run_name or out.resolve().name
    state_file = out / "tracking.json"
    tracker: MLflowTracker | TensorBoardTracker
    if cfg.backend == "mlflow":
        previous = _read_state(state_file) if resume else {}
        same = previous.get("backend") == "mlflow" and previous.get("uri") == mlflow_uri(cfg, out)[0]
        resume_id = previous.get("run_id") if same else None
        tracker = MLflowTracker(cfg, out, run_name, cfg.experiment or tcfg.bundle_name, resume_id)
        state_file.write_text(
            json.dumps({"backend": "mlflow", "uri": tracker.uri, "run_id": tracker.run_id}, indent=1)
        )
        if resume_id:
            log.info("tracking: continuing %s", tracker.where)
            return tracker
    else:
        tracker = TensorBoardTracker(cfg, out, run_name)
        state_file.write_text(json.dumps({"backend": "tensorboard", "logdir": str(tracker.logdir)}, indent=1))
    params = params_of(dcfg, tcfg, {"framework": framework, "n_features": n_features})
    tracker.log_params(params, config_yaml(dcfg))
    log.info("tracking: %s", tracker.where)
    return tracker


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
