"""The user's model file: load it, build the model, detect its framework.

A model file is plain Python, MLaaS4HEP's convention::

    def model(idim):                 # PyTorch / Keras: idim = number of features
        return torch.nn.Sequential(...)

    def model():                     # scikit-learn / XGBoost: no argument
        return SGDClassifier(loss="log_loss")

    def model(input_shapes):         # object-level: the dataset's ``inputs:`` groups
        return DeepSets(input_shapes)  # PyTorch: forward(inputs, masks) -> logits

An *object-level* model is recognised by the name of its argument,
``input_shapes``: a dict from each ``inputs:`` group of the dataset to its
per-event shape, e.g. ``{"jets": (10, 5), "event": (3,)}`` (``(length,
features)`` for an object group, ``(features,)`` for event-level features).
Its ``forward(inputs, masks)`` receives a dict of float32 tensors ``(n,
*shape)`` per group and a dict of boolean tensors ``(n, length)`` per object
group, **True where the slot is padding** (what
:class:`torch.nn.TransformerEncoder`'s ``src_key_padding_mask`` expects), and
returns logits (or probabilities, see ``OUTPUT``) as a flat model does.

An object-level *Keras* model is a ``keras.Model`` with one named
``keras.Input`` per group (``name="jets"``, ``shape=(10, 5)``) and one per
object group's mask (``name="jets_mask"``, ``shape=(10,)``, ``dtype="bool"``,
or float with 1.0 on padding): the names of :func:`.export.onnx_inputs`, in any
order, since Keras is fed a dict by name.

The bundle's ONNX model then has one input per group and per mask.
:data:`mlaas4hep.MODELS_DIR` holds three: ``tth_deepsets.py``,
``tth_transformer.py`` (PyTorch) and ``keras_deepsets.py``.

Optional hooks, PyTorch only (each is looked up in the file):

* ``loss()`` returns the loss module (default ``BCEWithLogitsLoss`` for one
  output, ``CrossEntropyLoss`` for several);
* ``optimizer(params, learning_rate)`` returns the optimizer (default Adam at
  ``learning_rate``); it receives ``training.learning_rate`` (a parameter named
  ``learning_rate`` or ``lr``; ``optimizer(params)`` alone still works, with a warning);
* ``train_step(model, batch[, optimizer, loss_fn])`` computes one step. If it
  returns a tensor that requires grad, the trainer back-propagates and steps; if it
  returns a number or a detached tensor it has done the step itself.
* ``OUTPUT = "logits"`` or ``"probabilities"`` declares what ``forward`` returns
  (default: probabilities when the last module is a ``Sigmoid``/``Softmax``,
  else logits).

Everything here runs *before* any event is read, so a typo in the model file
costs seconds, not a specs pass over a remote dataset.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ModelFileError
from .export import onnx_inputs, zero_feeds


def ensure_keras_backend() -> None:
    """Select Keras's torch backend when TensorFlow is absent (before Keras is imported)."""
    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    if importlib.util.find_spec("tensorflow") is None:
        os.environ["KERAS_BACKEND"] = "torch"


def load_module(path: str | os.PathLike) -> ModuleType:
    """Import the model file at ``path`` as a fresh module.

    Raises :class:`ModelFileError` naming the file and line for a missing file, a
    syntax error, an import error, or a file without a ``model`` function.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    ensure_keras_backend()
    name = f"mlaas4hep_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"model file {str(path)!r} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as err:
        raise ModelFileError(
            f"syntax error in model file {str(path)!r}, line {err.lineno}: {err.msg}\n    {(err.text or '').rstrip()}"
        ) from None
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code may raise anything
        where = _user_frame(err, path)
        raise ModelFileError(
            f"model file {str(path)!r} failed to import{where}: {type(err).__name__}: {err}"
        ) from err
    fn = getattr(module, "model", None)
    if not callable(fn):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == name
        )
        raise ModelFileError(
            f"model file {str(path)!r} defines no function 'model'; define 'model(idim)' returning a "
            f"PyTorch nn.Module or a Keras model, or 'model()' returning a scikit-learn or XGBoost "
            f"estimator (functions found: {defined or 'none'})"
        )
    return module


def _user_frame(err: BaseException, path: Path) -> str:
    for fr in reversed(traceback.extract_tb(err.__traceback__)):
        if Path(fr.filename).resolve() == path.resolve():
            return f" at line {fr.lineno}"
    return ""


#: The argument name that makes ``model`` object-level.
OBJECT_ARGUMENT = "input_shapes"


def wants_input_shapes(module: ModuleType) -> bool:
    """Whether the file's ``model`` is object-level: its first argument is named ``input_shapes``."""
    try:
        params = list(inspect.signature(module.model).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == OBJECT_ARGUMENT


def call_model(
    module: ModuleType, n_features: int | None, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> Any:
    """Call the file's ``model`` with ``input_shapes``, ``idim`` or nothing, as its signature asks."""
    fn = module.model
    path = getattr(module, "__file__", "?")
    if wants_input_shapes(module):
        if not input_shapes:
            raise ModelFileError(
                f"model(input_shapes) in {path!r} is an object-level model: the dataset configuration "
                f"needs input groups ('inputs:', e.g. jets: {{branches: [Jet_pt, Jet_eta], length: 10}})"
            )
        try:
            return fn(dict(input_shapes))
        except Exception as err:
            where = _user_frame(err, Path(path))
            raise ModelFileError(f"model() in {path!r} raised{where}: {type(err).__name__}: {err}") from err
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        params = []
    try:
        if params:
            if n_features is None:
                raise ModelFileError(
                    f"model() in {path!r} needs the number of features, which is not known yet"
                )
            return fn(n_features) if len(params) == 1 else fn(n_features, *([None] * (len(params) - 1)))
        return fn()
    except ModelFileError:
        raise
    except Exception as err:
        where = _user_frame(err, Path(path))
        raise ModelFileError(f"model() in {path!r} raised{where}: {type(err).__name__}: {err}") from err


def detect_framework(obj: Any) -> str:
    """``pytorch``, ``keras``, ``xgboost`` or ``sklearn``, from the type of ``obj``."""
    mods = [c.__module__ for c in type(obj).__mro__]
    # Keras first: on its torch backend a Keras model is also a torch.nn.Module.
    if any(m.startswith(("keras", "tf_keras")) for m in mods):
        return "keras"
    if "torch" in sys.modules:
        import torch

        if isinstance(obj, torch.nn.Module):
            return "pytorch"
    if any(m.startswith("xgboost") for m in mods) or type(obj).__name__ == "Booster":
        return "xgboost"
    if any(m.startswith("sklearn") for m in mods) or (hasattr(obj, "fit") and hasattr(obj, "predict_proba")):
        return "sklearn"
    raise ModelFileError(
        f"model() returned a {type(obj).__module__}.{type(obj).__name__}, which is neither a PyTorch "
        f"nn.Module, a Keras model, a scikit-learn estimator nor an XGBoost model"
    )


@dataclass
class UserModel:
    """The built model and the hooks of its file."""

    module: ModuleType
    path: str
    model: Any
    framework: str
    hooks: dict[str, Callable] = field(default_factory=dict)
    output: str | None = None  # "logits" | "probabilities" | None (undecided)
    #: The per-event shape of each input group, for an object-level model (``model(input_shapes)``).
    input_shapes: dict[str, tuple[int, ...]] | None = None

    @property
    def name(self) -> str:
        return Path(self.path).stem


def build(
    path: str | os.PathLike,
    n_features: int | None,
    n_classes: int,
    framework: str = "auto",
    module: ModuleType | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> UserModel:
    """Load the file, build the model for ``n_features`` inputs (or ``input_shapes``) and check its shape.

    For PyTorch and Keras, a batch of two zero rows goes through the model: a
    model built for another number of inputs, or with a number of outputs that
    does not match ``n_classes``, fails here with a message saying both numbers.
    An object-level model gets two events of zeros per group, all slots real.
    """
    module = module or load_module(path)
    obj = call_model(module, n_features, input_shapes)
    try:
        detected = detect_framework(obj)
    except ModelFileError as err:
        raise ModelFileError(f"{err} (in {str(path)!r})") from None
    if framework not in ("auto", detected):
        raise ModelFileError(
            f"training.framework is {framework!r} but model() in {str(path)!r} returned a {detected} model"
        )
    hooks = {
        h: getattr(module, h)
        for h in ("loss", "optimizer", "train_step")
        if callable(getattr(module, h, None))
    }
    um = UserModel(module, str(path), obj, detected, hooks, getattr(module, "OUTPUT", None))
    if wants_input_shapes(module):
        if detected not in ("pytorch", "keras"):
            raise ModelFileError(
                f"model(input_shapes) in {str(path)!r} returned a {detected} model; object-level "
                f"models are PyTorch modules with forward(inputs, masks) or Keras models with one "
                f"named input per group and mask"
            )
        um.input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        check = _check_torch if detected == "pytorch" else _check_keras
        um.output = check(um, n_features or 0, n_classes)
    elif detected == "pytorch" and n_features is not None:
        um.output = _check_torch(um, n_features, n_classes)
    elif detected == "keras" and n_features is not None:
        um.output = _check_keras(um, n_features, n_classes)
    return um


def _expected_outputs(n_classes: int) -> str:
    return "1 (binary)" if n_classes <= 2 else f"{n_classes} (one per class)"


def _check_torch(um: UserModel, n_features: int, n_classes: int) -> str:
    import torch

    m = um.model
    was_training = m.training
    m.eval()
    try:
        with torch.no_grad():
            if um.input_shapes is not None:
                out = m(*example_inputs(um.input_shapes, 2))
            else:
                out = m(torch.zeros(2, n_features))
    except Exception as err:
        if um.input_shapes is not None:
            raise ModelFileError(
                f"the object-level model of {um.path!r} cannot take the dataset's groups: forward(inputs, "
                f"masks) with shapes {_shapes_text(um.input_shapes)} failed with {type(err).__name__}: {err}"
            ) from None
        raise ModelFileError(
            f"the model of {um.path!r} cannot take the dataset's input: a batch of shape (2, {n_features}) "
            f"failed with {type(err).__name__}: {err}. The dataset gives {n_features} features per event; "
            f"build the first layer from model(idim)'s argument"
        ) from None
    finally:
        m.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelFileError(f"the model of {um.path!r} returned a {type(out).__name__}, expected a tensor")
    k = 1 if out.ndim == 1 else out.shape[-1]
    ok = (k in (1, 2)) if n_classes <= 2 else (k == n_classes)
    if out.ndim > 2 or out.shape[0] != 2 or not ok:
        raise ModelFileError(
            f"the model of {um.path!r} returns shape {tuple(out.shape)} for 2 events; expected (2, "
            f"{1 if n_classes <= 2 else n_classes}) outputs: {_expected_outputs(n_classes)}"
        )
    declared = um.output
    if declared is not None:
        if declared not in ("logits", "probabilities"):
            raise ModelFileError(
                f"OUTPUT in {um.path!r} must be 'logits' or 'probabilities', got {declared!r}"
            )
        return declared
    last = list(m.modules())[-1]
    return "probabilities" if isinstance(last, (torch.nn.Sigmoid, torch.nn.Softmax)) else "logits"


def example_inputs(input_shapes: dict[str, tuple[int, ...]], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs, masks)`` of ``n`` events of zeros, every object slot real (mask False)."""
    import torch

    inputs = {g: torch.zeros((n, *s)) for g, s in input_shapes.items()}
    masks = {g: torch.zeros((n, s[0]), dtype=torch.bool) for g, s in input_shapes.items() if len(s) == 2}
    return inputs, masks


def _shapes_text(input_shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{g} (n, {', '.join(map(str, s))})" for g, s in input_shapes.items())


def _check_keras(um: UserModel, n_features: int, n_classes: int) -> str:
    import numpy as np

    m = um.model
    x: Any
    if um.input_shapes is not None:
        x, what = keras_example(um), f"the dataset's groups {_shapes_text(um.input_shapes)}"
    else:
        shape = None
        try:
            shape = m.input_shape
        except (AttributeError, ValueError):
            pass
        if shape is not None and isinstance(shape, tuple) and shape[-1] not in (None, n_features):
            raise ModelFileError(
                f"the Keras model of {um.path!r} takes inputs of shape {shape} but the dataset gives "
                f"{n_features} features per event; build Input((idim,)) from model(idim)'s argument"
            )
        x, what = np.zeros((2, n_features), np.float32), f"a batch of shape (2, {n_features})"
    try:
        import keras

        out = keras.ops.convert_to_numpy(m(x, training=False))
    except Exception as err:
        raise ModelFileError(
            f"the Keras model of {um.path!r} cannot take {what}: {type(err).__name__}: {err}"
        ) from None
    k = 1 if out.ndim == 1 else out.shape[-1]
    ok = (k in (1, 2)) if n_classes <= 2 else (k == n_classes)
    if not ok:
        raise ModelFileError(
            f"the Keras model of {um.path!r} returns shape {out.shape} for 2 events; expected "
            f"{_expected_outputs(n_classes)} outputs"
        )
    if um.output is not None:
        return um.output
    act = getattr(m.layers[-1], "activation", None) if getattr(m, "layers", None) else None
    name = getattr(act, "__name__", "")
    return "probabilities" if name in ("sigmoid", "softmax") else "logits"


def keras_input_dtypes(model: Any) -> dict[str, str]:
    """The dtype of each named input of a Keras model (empty when it declares none)."""
    try:
        return {t.name: str(t.dtype) for t in model.inputs}
    except (AttributeError, TypeError, ValueError):  # a subclassed model not built from keras.Input
        return {}


def keras_example(um: UserModel) -> dict[str, Any]:
    """Two events of zeros per input of an object-level Keras model, once its inputs are checked.

    The model must name one input per group and per object group's mask, as
    :func:`.export.onnx_inputs` does, with the groups' shapes; a mask may be
    bool or float (1.0 on padding).
    """
    assert um.input_shapes is not None
    specs = onnx_inputs(um.input_shapes)
    want = [name for name, _, _ in specs]
    dtypes = keras_input_dtypes(um.model)
    if sorted(dtypes) != sorted(want):
        raise ModelFileError(
            f"the object-level Keras model of {um.path!r} takes the inputs {list(dtypes)}; it needs one "
            f"keras.Input per group and per object group's mask, named {want} (groups "
            f"{_shapes_text(um.input_shapes)}; masks (n, length), bool, True on padding)"
        )
    for inp in um.model.inputs:
        shape = next(s for name, s, _ in specs if name == inp.name)
        if tuple(inp.shape[1:]) != shape:
            raise ModelFileError(
                f"the object-level Keras model of {um.path!r} declares input {inp.name!r} of shape "
                f"{tuple(inp.shape)}; the dataset gives (n, {', '.join(map(str, shape))})"
            )
    return {name: a.astype(dtypes[name]) for name, a in zero_feeds(um.input_shapes, 2).items()}
