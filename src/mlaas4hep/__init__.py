"""mlaas4hep: Machine Learning as a Service for High-Energy Physics.

Three independent layers, each usable alone:

* :mod:`mlaas4hep.io` streams native ROOT TTrees (local, ``root://``, ``http(s)://``)
  into fixed-size, normalised tensors;
* :mod:`mlaas4hep.train` feeds those tensors to PyTorch, Keras, scikit-learn or
  XGBoost and writes a self-describing model bundle;
* :mod:`mlaas4hep.serve` serves bundles over HTTP (TFaaS API and the Open
  Inference Protocol v2).

:func:`mlaas4hep.predict` (:mod:`mlaas4hep.scoring`) writes a bundle's scores for
whole files as ROOT friend trees or Parquet, without a server.
"""

from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scoring import predict as predict

__version__ = "0.1.0"

#: Reference model files (MLaaS4HEP's ttH network, a 111-256-256-128-1 MLP, Keras,
#: scikit-learn and XGBoost examples): ``MODELS_DIR / "tth_mlp.py"``.
MODELS_DIR = _Path(__file__).with_name("models")


def __getattr__(name: str) -> Any:
    """``mlaas4hep.predict``, imported on first use (``import mlaas4hep`` stays light)."""
    if name == "predict":
        from .scoring import predict

        return predict
    raise AttributeError(f"module 'mlaas4hep' has no attribute {name!r}")
