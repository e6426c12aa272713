"""Errors of the training layer.

Like the streaming layer's errors, each one says what went wrong, where, and
what to do about it. They derive from :class:`mlaas4hep.io.Mlaas4hepError`, so
a caller can catch every error that mlaas4hep raises on purpose at once.
"""

from __future__ import annotations

from ..errors import Mlaas4hepError


class TrainError(Mlaas4hepError, RuntimeError):
    """Training cannot start or continue (bad training options, a failed resume...)."""


class ModelFileError(TrainError):
    """The user's model file cannot be used: a syntax error, no ``model`` function,
    an object of an unknown framework, or a model that does not fit the data's shape."""

    exit_status = 2  # a mistake in what the user wrote


class ExportError(TrainError):
    """The ONNX export failed, or the exported model disagrees with the native one."""
