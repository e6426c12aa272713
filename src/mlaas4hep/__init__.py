"""mlaas4hep: Machine Learning as a Service for High-Energy Physics.

Three independent layers, each usable alone:

* :mod:`mlaas4hep.io` streams native ROOT TTrees (local, ``root://``, ``http(s)://``)
  into fixed-size, normalised tensors;
* :mod:`mlaas4hep.train` feeds those tensors to PyTorch, Keras, scikit-learn or
  XGBoost and writes a self-describing model bundle;
* :mod:`mlaas4hep.serve` serves bundles over HTTP (TFaaS API and the Open
  Inference Protocol v2).
"""

__version__ = "0.1.0"
