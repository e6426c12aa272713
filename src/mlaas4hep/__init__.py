"""mlaas4hep: Machine Learning as a Service for High-Energy Physics.

Three independent layers, each usable alone:

* :mod:`mlaas4hep.io` streams native ROOT TTrees (local, ``root://``, ``http(s)://``)
  into fixed-size, normalised tensors;
* :mod:`mlaas4hep.train` feeds those tensors to PyTorch, Keras, scikit-learn or
  XGBoost and writes a self-describing model bundle;
* :mod:`mlaas4hep.serve` serves bundles over HTTP (TFaaS API and the Open
  Inference Protocol v2).
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

#: Reference model files (MLaaS4HEP's ttH network, a 111-256-256-128-1 MLP, Keras,
#: scikit-learn and XGBoost examples): ``MODELS_DIR / "tth_mlp.py"``.
MODELS_DIR = _Path(__file__).with_name("models")
