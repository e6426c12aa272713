"""Optional dependencies, and the extra that installs each.

The core package streams ROOT data with uproot, awkward and numpy alone. Training,
serving and scale-out need more, grouped in the extras of ``pyproject.toml``
(``torch``, ``train``, ``serve``, ``dist``, ``all``). Code that needs one of
those packages asks for it here, so a missing package gives one message that
names the extra to install, instead of a bare ``ModuleNotFoundError``::

    >>> from mlaas4hep import extras
    >>> ort = extras.require("onnxruntime", "serving a model")

(as uproot does in its own ``uproot.extras``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import Mlaas4hepError

#: top-level module → the extra of mlaas4hep that installs it
EXTRA_OF = {
    "torch": "torch",
    "safetensors": "torch",
    "onnxscript": "torch",
    "onnx": "serve",
    "onnxruntime": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "orjson": "serve",
    "multipart": "serve",
    "prometheus_client": "serve",
    "grpc": "serve",
    "google": "serve",
    "jwt": "serve",
    "matplotlib": "train",
    "mplhep": "train",
    "scipy": "train",
    "sklearn": "train",
    "skl2onnx": "train",
    "xgboost": "train",
    "onnxmltools": "train",
    "keras": "train",
    "pyarrow": "parquet",
    "coffea": "coffea",
    "mlflow": "tracking",
    "tensorboard": "tracking",
    "optuna": "scan",
    "dask": "scale",
    "distributed": "scale",
}


class MissingDependencyError(Mlaas4hepError, ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def install_hint(module: str) -> str:
    """``pip install 'mlaas4hep[EXTRA]'`` for the extra that provides ``module``."""
    extra = EXTRA_OF.get(module.split(".")[0], "all")
    hint = f"pip install 'mlaas4hep[{extra}]'"
    if extra in ("torch", "train"):
        hint = f"pip install torch==2.13.0 (the CPU wheel), then {hint}"
    return hint


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"onnxruntime"``, ``"distributed"``) or raise
    :class:`MissingDependencyError` saying that ``purpose`` needs it and how to install it.

    Args:
        module (str): the module's import name, dotted names allowed.
        purpose (str): what needs it, in a few words, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs the Python package {top!r}, which is not installed: {install_hint(top)}"
        ) from err
