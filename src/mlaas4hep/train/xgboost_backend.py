"""XGBoost: boosted trees fed through ``xgboost.DataIter``.

``model()`` returns an ``XGBClassifier``; its parameters (``max_depth``,
``learning_rate``, ``n_estimators`` = boosting rounds, ``early_stopping_rounds``
...) drive ``xgboost.train``. The training events stream through a
:class:`xgboost.DataIter` into a ``QuantileDMatrix``: XGBoost reads the chunks
(possibly several times), quantises them and keeps only the compressed
histogram-ready matrix, never the float features of the whole dataset.

Boosting has no epochs: one record per *round* goes to ``metrics.json``
(training and validation log loss, validation AUC, seconds and events/s of the
round), and early stopping works on rounds (the classifier's
``early_stopping_rounds``, else ``training.early_stopping``). The best round's
trees are kept. The bundle holds the booster's ``model.json`` and its ONNX
conversion (onnxmltools). ``--resume`` starts again (no checkpoint for XGBoost).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from .. import progress
from . import export
from .backend import Backend
from .config import TrainConfig
from .data import Part, Source
from .errors import ModelFileError
from .userfile import UserModel


class _Iter(xgb.DataIter):
    """Hands the epoch-0 training batches of a :class:`Source` to XGBoost, a chunk's worth per call."""

    def __init__(self, source: Source):
        self.source = source
        self._it: Iterator[Any] | None = None
        self.events = 0
        self.passes = 0
        super().__init__(release_data=True)

    def reset(self) -> None:
        self._it = None

    def next(self, input_data) -> bool:
        if self._it is None:
            self._it = self.source.batches(0, self.source.ds.config.chunk_size)
            self.passes += 1
        part = next(self._it, None)
        if part is None:
            return False
        if self.passes == 1:
            self.events += len(part)
        input_data(data=np.asarray(part.x), label=np.asarray(part.y), weight=np.asarray(part.w))
        return True


class XGBoostBackend(Backend):
    framework = "xgboost"
    epoch_based = False
    resumable = False

    def __init__(self, um: UserModel, cfg: TrainConfig, n_features: int, n_classes: int):
        super().__init__(um, cfg, n_features, n_classes, "cpu")
        est = um.model
        if not isinstance(est, xgb.XGBModel):
            raise ModelFileError(
                f"model() in {um.path!r} must return an xgboost.XGBClassifier, got {type(est).__name__}"
            )
        params = {k: v for k, v in est.get_xgb_params().items() if v is not None}
        params.pop("n_estimators", None)
        params.setdefault("tree_method", "hist")
        params.setdefault("seed", cfg.seed)
        if self.binary:
            params.update(objective="binary:logistic", eval_metric=["logloss", "auc"])
        else:
            params.update(objective="multi:softprob", num_class=n_classes, eval_metric=["mlogloss", "merror"])
        self.params = params
        self.rounds = int(est.n_estimators or 100)
        self.early = est.early_stopping_rounds or cfg.early_stopping
        self.booster: xgb.Booster | None = None
        self.interrupted = False
        self.device = "cpu" if "cuda" not in str(params.get("device", "")) else str(params["device"])

    def fit(self, source: Source, run: Any) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        it = _Iter(source)
        dtrain = xgb.QuantileDMatrix(it, max_bin=int(self.params.get("max_bin", 256)))
        data_s = time.perf_counter() - t0
        val = source.ensure_val()
        dval = xgb.DMatrix(val.x, label=val.y, weight=val.w)
        n = it.events
        kind = "stream" if it.passes else "memory"
        res: dict[str, Any] = {}
        history: list[dict[str, Any]] = []
        loss_key = "logloss" if self.binary else "mlogloss"
        backend = self

        class Progress(xgb.callback.TrainingCallback):
            auc = False

            def before_training(self, model):
                self.t = time.perf_counter()
                return model

            def after_iteration(self, model, epoch, evals_log):
                now = time.perf_counter()
                dt, self.t = now - self.t, now
                rec = {
                    "epoch": epoch,
                    "train_loss": evals_log["train"][loss_key][-1],
                    "val_loss": evals_log["val"][loss_key][-1],
                    "events": n,
                    "seconds": dt,
                    "events_per_s": n / dt if dt > 0 else float("nan"),
                    "source": kind,
                }
                if self.auc:
                    rec["val_auc"] = evals_log["val"]["auc"][-1]
                else:
                    rec["val_accuracy"] = 1 - evals_log["val"]["merror"][-1]
                history.append(rec)
                bar.advance(1, info=f"val loss {rec['val_loss']:.4f}")
                if any(cb(rec) is True for cb in run.callbacks):
                    backend.interrupted = epoch + 1 < backend.rounds
                    return True
                return False

        Progress.auc = self.binary
        with progress.bar("boosting", self.rounds, unit="rounds", show=run.show) as bar:
            booster = xgb.train(
                self.params,
                dtrain,
                num_boost_round=self.rounds,
                evals=[(dtrain, "train"), (dval, "val")],
                early_stopping_rounds=self.early,
                evals_result=res,
                callbacks=[Progress()],
                verbose_eval=False,
            )
        best = getattr(booster, "best_iteration", None)
        if best is not None and self.early and best + 1 < booster.num_boosted_rounds():
            run.stopped_early = True
            booster = booster[: best + 1]
        run.best_epoch = int(best if best is not None else len(history) - 1)
        self.booster = booster
        self.model = booster
        if history:
            history[0]["data_seconds"] = data_s
            history[0]["data_events_per_s"] = n / data_s if data_s > 0 else float("nan")
        return history

    @property
    def _trained(self) -> xgb.Booster:
        if self.booster is None:
            raise ModelFileError("the XGBoost model has not been trained yet")
        return self.booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0,) if self.binary else (0, self.n_classes), np.float32)
        p = self._trained.inplace_predict(np.asarray(x, np.float32))
        return np.asarray(p, np.float32)

    def _classifier(self) -> xgb.XGBClassifier:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "model.json"
            self._trained.save_model(str(p))
            clf = xgb.XGBClassifier()
            clf.load_model(str(p))
        return clf

    def export_onnx(self, path: Path, sample: Part) -> dict[str, Any]:
        onx = export.xgboost_to_onnx(self._classifier(), self.n_features, self.binary)
        Path(path).write_bytes(onx)
        tol = self.cfg.parity_tolerance or export.TOLERANCE["xgboost"]
        return export.check_parity(onx, sample.x, self.predict(sample.x), tol, "XGBoost")

    def save_native(self, directory: Path) -> dict[str, Path]:
        p = Path(directory) / "model.json"
        self._trained.save_model(str(p))
        json.loads(p.read_text())  # a JSON model, never a pickle
        return {"model.json": p}

    def snapshot(self) -> Any:
        return None

    def restore(self, snap: Any) -> None:
        return None

    def save(self, directory: Path, best: Any) -> None:
        return None

    def load(self, directory: Path) -> Any:
        return None
