"""scikit-learn: estimators that learn batch by batch through ``partial_fit``.

``model()`` returns an estimator (``SGDClassifier(loss="log_loss")``,
``MLPClassifier``, ``BernoulliNB`` ...). Every batch goes to
``partial_fit(x, y, classes=..., sample_weight=w)`` (``sample_weight`` when the
estimator accepts it), so the dataset never has to fit in memory. The reported
training loss is *progressive*: each batch is scored before the estimator learns
from it.

An estimator without ``partial_fit`` (a ``RandomForestClassifier``, a
``Pipeline``) cannot stream. Training then stops with a message, unless
``training.accumulate: true`` (or ``--in-memory``) asks to gather the training
events in memory and call ``fit`` once.

Checkpoints are not written for scikit-learn (its only complete format is a
pickle, which mlaas4hep never writes); ``--resume`` starts again. The bundle
holds the ONNX model only (skl2onnx).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import export, metrics
from .backend import Backend
from .config import TrainConfig
from .data import Part, Source
from .errors import TrainError
from .userfile import UserModel


def check_streaming(estimator: Any, accumulate: bool, in_memory: bool) -> None:
    """Fail before reading data when the estimator cannot stream and nothing allows memory."""
    if not hasattr(estimator, "partial_fit") and not (accumulate or in_memory):
        raise TrainError(
            f"{type(estimator).__name__} has no partial_fit, so it cannot learn from a stream of batches. "
            f"Use an estimator that has one (SGDClassifier, MLPClassifier, ...), or set "
            f"'training: {{accumulate: true}}' (or pass --in-memory) to gather the training events in memory "
            f"and call fit once"
        )


class SklearnBackend(Backend):
    framework = "sklearn"
    resumable = False

    def __init__(self, um: UserModel, cfg: TrainConfig, n_features: int, n_classes: int):
        super().__init__(um, cfg, n_features, n_classes, "cpu")
        self.classes = np.arange(max(n_classes, 2))
        self.streaming = hasattr(self.model, "partial_fit")
        self.accumulate = bool(cfg.accumulate)
        self._weights = False
        if self.streaming:
            try:
                self._weights = "sample_weight" in inspect.signature(self.model.partial_fit).parameters
            except (TypeError, ValueError):
                pass
        self._fitted = False

        self.max_epochs = None if self.streaming else 1

    def epoch_batches(self, source: Source, epoch: int) -> Iterator[Part]:
        if self.streaming:
            return super().epoch_batches(source, epoch)
        return iter([Part.concat(list(source.batches(epoch, self.cfg.batch_size)), self.n_features)])

    def train_batch(self, batch: Part, loss_scale: float = 1.0) -> None:
        x, y, w = batch.x, batch.y, batch.w
        n = len(y)
        if self._fitted and self.streaming:
            p = self._proba(x)
            self._loss_sum += metrics.log_loss(y, p, w) * n
            self._n += n
        kw = {"sample_weight": w} if self._weights or not self.streaming else {}
        if self.streaming:
            self.model.partial_fit(x, y, classes=self.classes, **kw)
        else:
            try:
                self.model.fit(x, y, **kw)
            except TypeError:
                self.model.fit(x, y)
            self._loss_sum += metrics.log_loss(y, self._proba(x), w) * n
            self._n += n
        self._fitted = True

    def _proba(self, x: np.ndarray) -> np.ndarray:
        p = self.model.predict_proba(x)
        return p[:, 1] if self.binary else p

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0,) if self.binary else (0, self.n_classes), np.float32)
        return self._proba(np.asarray(x, np.float32)).astype(np.float32)

    def snapshot(self) -> Any:
        return copy.deepcopy(self.model)

    def restore(self, snap: Any) -> None:
        self.model = snap
        self.um.model = snap

    def save(self, directory: Path, best: Any) -> None:
        return None  # see the module docstring: no pickle, no scikit-learn checkpoint

    def load(self, directory: Path) -> Any:
        return None

    def export_onnx(self, path: Path, sample: Part) -> dict[str, Any]:
        onx = export.sklearn_to_onnx(self.model, self.n_features, self.binary)
        Path(path).write_bytes(onx)
        tol = self.cfg.parity_tolerance or export.TOLERANCE["sklearn"]
        return export.check_parity(onx, sample.x, self.predict(sample.x), tol, "scikit-learn")

    def save_native(self, directory: Path) -> dict[str, Path]:
        return {}
