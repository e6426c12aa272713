"""Layer 2, training: stream a :class:`~mlaas4hep.io.Dataset` into the user's model.

* :func:`train` (``runner.py``): a configuration in, a model bundle out;
* ``config.py``: the ``training:`` section; ``userfile.py``: the user's model file;
* ``data.py`` + ``split.py``: training batches and the validation split by event id;
* ``torch_backend.py``, ``keras_backend.py``, ``sklearn_backend.py``,
  ``xgboost_backend.py``: the frameworks; ``backend.py``: what they implement;
* ``checkpoint.py``, ``metrics.py``, ``plots.py``, ``export.py``: the run's outputs;
* ``workflow.py``: MLaaS4HEP's ``workflow`` command; ``cli.py``: ``train`` and ``workflow``.

Importing this package imports no framework: each is imported when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig, split_config
    from .errors import ExportError, ModelFileError, TrainError
    from .runner import TrainResult, train

#: where each public name lives: imported on first use, so a command that only needs one of
#: the layer's small modules (``mlaas4hep client --help`` reaches ``train.cli``) does not pay
#: for the streaming layer (uproot, awkward: ~0.6 s)
_WHERE = {
    "ExportError": "errors",
    "ModelFileError": "errors",
    "TrainConfig": "config",
    "TrainError": "errors",
    "TrainResult": "runner",
    "split_config": "config",
    "train": "runner",
}

__all__ = [
    "ExportError",
    "ModelFileError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "split_config",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
