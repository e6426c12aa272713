"""What the runner asks of a framework: the :class:`Backend` interface.

The runner (:mod:`.runner`) owns the epoch loop, validation, early stopping,
checkpoints, metrics, plots and the bundle; a backend owns only what differs
between frameworks:

* :meth:`Backend.epoch_batches` hands an epoch's training batches
  (:meth:`.data.Source.batches`, :class:`~.data.Part` s of NumPy arrays) to the
  backend, moved where it computes (a GPU for PyTorch);
* :meth:`Backend.train_batch` runs one optimisation step;
* :meth:`Backend.predict` returns probabilities (``(n,)`` for a binary
  classifier: the probability of label 1; ``(n, K)`` otherwise) of feature
  rows; :meth:`Backend.scores` of a :class:`~.data.Part` (what object-level
  models need: their per-group inputs and masks);
* :meth:`Backend.snapshot` / :meth:`Backend.restore` keep the best epoch's weights;
* :meth:`Backend.save` / :meth:`Backend.load` write and read checkpoint files;
* :meth:`Backend.export_onnx` and :meth:`Backend.save_native` feed the bundle.

A backend whose training is not a loop over epochs (XGBoost's boosting rounds)
sets ``epoch_based = False`` and implements :meth:`Backend.fit` instead.

How many processes train together is the backend's :class:`~.strategy.Local`
strategy (``backend.strategy``, a :class:`~.ddp.Context` under ``torchrun``);
only the PyTorch backend accepts one with several processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .data import Part, Source, prefetch
from .strategy import Local
from .userfile import UserModel


def use_torch_threads(threads: int | None) -> None:
    """Set PyTorch's CPU threads (``training.threads``); None leaves its default."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


class Backend:
    """One machine-learning framework behind the trainer's single loop.

    :func:`make_backend` picks the subclass from what the user's model file returns
    (PyTorch, Keras 3, scikit-learn, XGBoost). The runner (:mod:`.runner`) drives any
    of them the same way: ``begin_epoch``, ``train_batch`` per batch, ``end_epoch``
    (epoch-based frameworks) or one ``fit`` (the others), then ``evaluate``,
    ``snapshot``/``restore`` for the best epoch, ``save``/``load`` for checkpoints,
    ``export_onnx`` for the bundle and ``save_native`` for the framework's own file.

    Args:
        um (:class:`.userfile.UserModel`): the model, optimizer and loss the user's file gave.
        cfg (:class:`.config.TrainConfig`): the ``training:`` settings.
        n_features (int): columns of the input rows.
        n_classes (int): 2 for a binary classifier (one probability out), else the
            number of classes (one probability each).
        device (str, default ``"cpu"``): where the model runs (``cpu``, ``cuda``, ``cuda:N``).
        strategy (:class:`.strategy.Local`): one process, or the DDP context under ``torchrun``.

    Class attributes:
        framework (str): the framework's name, written into bundles.
        epoch_based (bool): True when the model is trained batch by batch in epochs.
        resumable (bool): whether a checkpoint restores the exact training state.
        max_epochs (None or int): an upper bound on epochs (1 for estimators fitted once).
    """

    framework = "?"
    epoch_based = True
    #: What a checkpoint of this backend can restore exactly.
    resumable = True
    #: An upper bound on epochs (1 for an estimator that is fitted once), or None.
    max_epochs: int | None = None

    def __init__(
        self,
        um: UserModel,
        cfg: TrainConfig,
        n_features: int,
        n_classes: int,
        device: str = "cpu",
        strategy: Local | None = None,
    ):
        self.strategy = strategy or Local()
        self.um = um
        self.model = um.model
        self.cfg = cfg
        self.n_features = n_features
        self.n_classes = n_classes
        self.binary = n_classes <= 2
        self.device = device
        self._loss_sum: Any = 0.0  # a float, or a tensor on the training device
        self._n = 0

    # ------------------------------------------------------------ training
    def epoch_batches(self, source: Source, epoch: int) -> Iterator[Part]:
        """The epoch's training batches (:meth:`.data.Source.batches`), read ahead in a background thread."""
        return prefetch(source.batches(epoch, self.cfg.batch_size), depth=4)

    def begin_epoch(self, epoch: int) -> None:
        self._loss_sum, self._n = 0.0, 0

    def train_batch(self, batch: Part, loss_scale: float = 1.0) -> None:
        """One optimisation step; the loss is multiplied by ``loss_scale`` (DDP's uneven steps)."""
        raise NotImplementedError

    def idle_step(self) -> None:
        """A step without events that keeps this process in step with the others (DDP only)."""
        raise NotImplementedError

    def running_loss(self) -> float:
        """Mean training loss of the epoch so far (may synchronise a GPU)."""
        return float(self._loss_sum) / max(self._n, 1)

    def end_epoch(self) -> float:
        return self.running_loss()

    def fit(self, source: Source, runner: Any) -> list[dict[str, Any]]:
        """Whole training for backends that are not epoch based."""
        raise NotImplementedError

    # ------------------------------------------------------------ evaluation
    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, part: Part) -> np.ndarray:
        """Probabilities of the rows of ``part`` (:meth:`predict` of its features by default)."""
        return self.predict(np.asarray(part.x))

    # ------------------------------------------------------------ state
    def snapshot(self) -> Any:
        raise NotImplementedError

    def restore(self, snap: Any) -> None:
        raise NotImplementedError

    def save(self, directory: Path, best: Any) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------ bundle
    def export_onnx(self, path: Path, sample: Part) -> dict[str, Any]:
        """Write ``model.onnx``; check it against the native model on ``sample`` (validation rows)."""
        raise NotImplementedError

    def save_native(self, directory: Path) -> dict[str, Path]:
        raise NotImplementedError


def make_backend(
    um: UserModel,
    cfg: TrainConfig,
    n_features: int,
    n_classes: int,
    device: str,
    strategy: Local | None = None,
) -> Backend:
    """The backend for the user's model's framework (only PyTorch takes a multi-process ``strategy``)."""
    if um.framework == "pytorch":
        from .torch_backend import TorchBackend

        return TorchBackend(um, cfg, n_features, n_classes, device, strategy)
    (strategy or Local()).require_single(um.framework, Path(um.path).name)
    if um.framework == "keras":
        from .keras_backend import KerasBackend

        return KerasBackend(um, cfg, n_features, n_classes)
    if um.framework == "sklearn":
        from .sklearn_backend import SklearnBackend

        return SklearnBackend(um, cfg, n_features, n_classes)
    if um.framework == "xgboost":
        from .xgboost_backend import XGBoostBackend

        return XGBoostBackend(um, cfg, n_features, n_classes)
    raise ValueError(f"unknown framework {um.framework!r}")
