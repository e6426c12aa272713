"""Keras 3: the model file returns a (compiled) Keras model, as in MLaaS4HEP.

Keras 3 runs on PyTorch's backend when TensorFlow is not installed (selected
before Keras is first imported, see :func:`.userfile.ensure_keras_backend`), so
TensorFlow is optional. An uncompiled model gets Adam at ``learning_rate`` and
binary (or sparse categorical) cross-entropy, ``from_logits`` when the last
layer has no sigmoid/softmax.

Batches are NumPy arrays fed to ``model.train_on_batch`` by the runner's loop, so
streaming, validation, early stopping, checkpoints and progress behave as for
PyTorch. Checkpoints are ``model.keras`` (weights and optimizer state) and the
best weights; the native model in the bundle is ``model.keras``; ONNX comes from
``model.export(format="onnx")``.

An *object-level* model (``model(input_shapes)``, see :mod:`.userfile`) has one
named input per group and per mask; each batch's ``inputs`` and ``masks`` are
fed as a dict by those names (a mask as the dtype its input declares). Its ONNX
model takes the inputs of :func:`.export.onnx_inputs`, in that order, the masks
BOOL (cast in the graph for a model that takes float masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import export
from .backend import Backend, use_torch_threads
from .config import TrainConfig
from .data import Part
from .userfile import UserModel, ensure_keras_backend, keras_input_dtypes

ensure_keras_backend()
import keras  # noqa: E402


class KerasBackend(Backend):
    framework = "keras"

    def __init__(self, um: UserModel, cfg: TrainConfig, n_features: int, n_classes: int):
        super().__init__(um, cfg, n_features, n_classes, "cpu")
        self.device = f"keras/{keras.backend.backend()}"
        if keras.backend.backend() == "torch":
            use_torch_threads(cfg.threads)
        self.logits = um.output == "logits"
        #: The groups' shapes of an object-level model, fed by name (see :mod:`.userfile`).
        self.shapes = um.input_shapes
        #: The dtype each named input of the model declares (its masks may be bool or float).
        self.dtypes = keras_input_dtypes(self.model)
        self.width = (
            int(np.prod(self.model.output_shape[1:])) if getattr(self.model, "output_shape", None) else 1
        )
        if not getattr(self.model, "compiled", False) or getattr(self.model, "optimizer", None) is None:
            if self.width == 1:
                loss = keras.losses.BinaryCrossentropy(from_logits=self.logits)
            else:
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.logits)
            self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate), loss=loss)

    def _y(self, y: np.ndarray) -> np.ndarray:
        return y.astype(np.float32).reshape(-1, 1) if self.width == 1 else y

    def _feeds(self, part: Part) -> Any:
        """The model's input: the feature rows, or a dict of the groups and masks by input name."""
        if self.shapes is None:
            return np.asarray(part.x, np.float32)
        feeds = export.group_feeds(self.shapes, part.inputs, part.masks)
        return {k: v.astype(self.dtypes[k], copy=False) for k, v in feeds.items()}

    def train_batch(self, batch: Part, loss_scale: float = 1.0) -> None:
        y, w = batch.y, batch.w
        out = self.model.train_on_batch(self._feeds(batch), self._y(y), sample_weight=w, return_dict=True)
        loss = float(out.get("loss", 0.0))
        self._loss_sum += loss * len(y)
        self._n += len(y)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._predict(np.asarray(x, np.float32), len(x))

    def scores(self, part: Part) -> np.ndarray:
        """Probabilities of the rows of ``part`` (its groups for an object-level model)."""
        return self._predict(self._feeds(part), len(part))

    def _predict(self, feeds: Any, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros((0,) if self.binary else (0, self.n_classes), np.float32)
        raw = np.asarray(self.model.predict(feeds, batch_size=16384, verbose=0), np.float32)
        p: np.ndarray = raw.reshape(n, -1)
        if self.logits:
            p = 1 / (1 + np.exp(-p)) if p.shape[1] == 1 else _softmax(p)
        return p[:, -1] if self.binary else p

    # ------------------------------------------------------------ state
    def snapshot(self) -> Any:
        return [np.array(w) for w in self.model.get_weights()]

    def restore(self, snap: Any) -> None:
        self.model.set_weights(snap)

    def save(self, directory: Path, best: Any) -> None:
        self.model.save(directory / "model.keras")
        if best is not None:
            np.savez(directory / "best_weights.npz", *best)

    def load(self, directory: Path) -> Any:
        custom = {k: v for k, v in vars(self.um.module).items() if isinstance(v, type)}
        self.model = keras.models.load_model(directory / "model.keras", custom_objects=custom, compile=True)
        p = directory / "best_weights.npz"
        if p.is_file():
            with np.load(p, allow_pickle=False) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]
        return None

    # ------------------------------------------------------------ bundle
    def export_onnx(self, path: Path, sample: Part) -> dict[str, Any]:
        """``model.onnx`` (probabilities out), checked against :meth:`scores` on every input of ``sample``."""
        m = self.model
        if self.shapes is not None:
            m = self._probabilities(*self._group_inputs(), export.zero_feeds(self.shapes, 2))
        elif self.logits or (self.binary and self.width == 2):
            inp = keras.Input(shape=(self.n_features,))
            m = self._probabilities(inp, m(inp), np.zeros((2, self.n_features), np.float32))
        onx = export.keras_to_onnx(m, path)
        tol = self.cfg.parity_tolerance or export.TOLERANCE["keras"]
        shapes = self.shapes
        feeds = export.group_feeds(shapes, sample.inputs, sample.masks) if shapes is not None else sample.x
        return export.check_parity(onx, feeds, self.scores(sample), tol, "Keras")

    def _group_inputs(self) -> tuple[list[Any], Any]:
        """The ONNX inputs of :func:`.export.onnx_inputs` (masks bool) and the model's output on them."""
        inputs, named = [], {}
        for name, shape, kind in export.onnx_inputs(self.shapes or {}):
            t = keras.Input(shape=shape, name=name, dtype="bool" if kind == "BOOL" else "float32")
            inputs.append(t)
            named[name] = t if self.dtypes[name] == t.dtype else keras.ops.cast(t, self.dtypes[name])
        return inputs, self.model(named)

    def _probabilities(self, inputs: Any, out: Any, example: Any) -> Any:
        """A model of ``inputs`` whose output ``out`` is turned into the bundle's probabilities.

        It is called once on ``example``: Keras exports only models that have been called.
        """
        if self.logits:
            out = keras.layers.Activation("sigmoid" if self.width == 1 else "softmax")(out)
        if self.binary and self.width == 2:
            out = keras.layers.Lambda(lambda t: t[:, 1:2])(out)
        m = keras.Model(inputs, out)
        m(example)
        return m

    def save_native(self, directory: Path) -> dict[str, Path]:
        p = Path(directory) / "model.keras"
        self.model.save(p)
        return {"model.keras": p}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
