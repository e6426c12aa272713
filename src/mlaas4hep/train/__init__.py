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

from .config import TrainConfig, split_config
from .errors import ExportError, ModelFileError, TrainError
from .runner import TrainResult, train

__all__ = [
    "ExportError",
    "ModelFileError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "split_config",
    "train",
]
