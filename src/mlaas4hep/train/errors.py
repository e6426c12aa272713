"""Errors of the training layer.

Like the streaming layer's errors, each one says what went wrong, where, and
what to do about it. They derive from :class:`mlaas4hep.io.Mlaas4hepError`, so
a caller can catch every error that mlaas4hep raises on purpose at once.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, Mlaas4hepError


class TrainError(Mlaas4hepError, RuntimeError):
    """Training cannot start or continue (bad training options, a failed resume...)."""


class ModelFileError(TrainError):
    """The user's model file cannot be used: a syntax error, no ``model`` function,
    an object of an unknown framework, or a model that does not fit the data's shape."""

    exit_status = 2  # a mistake in what the user wrote


class ExportError(TrainError):
    """The ONNX export failed, or the exported model disagrees with the native one."""


class OutputExistsError(ConfigError):
    """``--out`` already holds a run (a bundle, a checkpoint or metrics) and neither
    ``--overwrite`` nor ``--resume`` was given: nothing is replaced silently."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: where its last checkpoint is, so the caller can say how to go on.

    ``checkpoint`` is the checkpoint directory when one exists (``None`` before
    the first epoch ended), ``epoch`` the last epoch it holds, ``out`` the run's
    output directory.
    """

    def __init__(self, out: Path, checkpoint: Path | None, epoch: int | None):
        super().__init__()
        self.out, self.checkpoint, self.epoch = out, checkpoint, epoch


class PathRefused(ConfigError):
    """A training job's dataset names a file the server may not read (:mod:`.job`: ``--data-dir``, ``--allow-remote``)."""
