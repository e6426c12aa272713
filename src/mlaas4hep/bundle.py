"""Model bundles: a trained model plus everything needed to use it.

A bundle is a directory (or a ``.tar.gz`` of its files) holding

* ``model.onnx``: the model, batch dimension dynamic, output *probabilities*
  (``(n, 1)`` for a binary classifier: the probability of label 1; ``(n, K)``
  for K classes);
* ``bundle.json``: identity (``name``, ``version``, ``framework``, ``created``),
  ``inputs`` (``features`` in input order, and ``preprocessing``: the
  :class:`~mlaas4hep.io.Preprocessor` description, i.e. tree, branches, jagged
  lengths, pad value, normalisation constants, selection and new variables),
  ``outputs`` (``labels``), ``metrics`` and ``data_fingerprint``;
* ``labels.txt`` and ``params.json`` (what TFaaS clients read);
* optionally the native model (``model.safetensors``, ``model.keras``,
  ``model.json`` for XGBoost): never a pickle.

:func:`load` returns a :class:`Predictor` that applies the preprocessing and the
ONNX model to raw branch values or to a ROOT file; the inference server uses
exactly this object.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, bundle_schema, extras
from .errors import Mlaas4hepError
from .io.preprocess import Preprocessor
from .jsonutil import jsonable

FORMAT = "mlaas4hep-bundle/1"
REQUIRED = bundle_schema.REQUIRED
MAX_META_BYTES = 16 * 2**20  # bundle.json
#: Files a bundle may contain: ONNX, JSON, text and safe native weight formats.
ALLOWED_SUFFIXES = (".onnx", ".json", ".txt", ".safetensors", ".keras", ".md")


class BundleError(Mlaas4hepError, ValueError):
    """A bundle is incomplete, inconsistent or unsafe."""


def write(
    path: str | os.PathLike[str],
    onnx_model: bytes | str | os.PathLike[str],
    preprocessor: Preprocessor | None,
    labels: list[str],
    name: str,
    framework: str,
    version: int = 1,
    metrics: Mapping[str, Any] | None = None,
    data_fingerprint: str = "",
    description: str = "",
    features: list[str] | None = None,
    native: Mapping[str, str | os.PathLike[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle directory; returns its path.

    ``features`` defaults to the preprocessor's feature names; without a
    preprocessor the model takes ready-made feature vectors.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(onnx_model, (bytes, bytearray)):
        (path / "model.onnx").write_bytes(onnx_model)
    elif Path(onnx_model).resolve() != (path / "model.onnx").resolve():
        shutil.copyfile(onnx_model, path / "model.onnx")
    for fname, src in (native or {}).items():
        if not fname.endswith(ALLOWED_SUFFIXES):
            raise BundleError(f"native model file {fname!r} has a type a bundle may not hold")
        if Path(src).resolve() != (path / fname).resolve():
            shutil.copyfile(src, path / fname)
    if features is None:
        if preprocessor is None:
            raise BundleError("a bundle needs either feature names or a preprocessor")
        features = preprocessor.feature_names
    feats = list(features)
    onnx = extras.require("onnx", "writing a model bundle")

    graph = onnx.load(str(path / "model.onnx")).graph
    meta = {
        "format": FORMAT,
        "name": name,
        "version": int(version),
        "framework": framework,
        "producer": f"mlaas4hep {__version__}",  # the version that wrote it
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "description": description,
        "inputs": {
            "features": feats,
            "preprocessing": preprocessor.to_dict() if preprocessor is not None else None,
            "onnx_input": graph.input[0].name,
            "datatype": "FP32",
            "shape": [-1, len(feats)],
        },
        "outputs": {
            "labels": list(labels),
            "onnx_output": graph.output[0].name,
            "datatype": "FP32",
            "shape": [-1, 1 if len(labels) <= 2 else len(labels)],
        },
        "metrics": dict(metrics or {}),
        "data_fingerprint": data_fingerprint,
        "native": sorted((native or {}).keys()),
        **dict(extra or {}),
    }
    (path / "bundle.json").write_text(json.dumps(meta, indent=1, default=jsonable))
    (path / "labels.txt").write_text("\n".join(labels) + "\n")
    params = {
        "name": name,
        "model": "model.onnx",
        "labels": "labels.txt",
        "input_node": meta["inputs"]["onnx_input"],
        "output_node": meta["outputs"]["onnx_output"],
        "description": description,
        "timestamp": meta["created"],
    }
    (path / "params.json").write_text(json.dumps(params, indent=1))
    return path


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``bundle.json`` and check it against the schema of :mod:`mlaas4hep.bundle_schema`.

    Raises :class:`BundleError` naming what is wrong, so a server can skip a
    bad entry on disk instead of failing on it later.
    """
    path = Path(path)
    try:
        with open(path / "bundle.json", "rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(f"bundle {str(path)!r} has no bundle.json") from None
    except OSError as err:
        raise BundleError(f"bundle.json of {str(path)!r} cannot be read: {err}") from None
    if len(data) > MAX_META_BYTES:
        raise BundleError(f"bundle.json of {str(path)!r} exceeds {MAX_META_BYTES} bytes")
    try:
        meta: dict[str, Any] = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise BundleError(f"bundle.json of {str(path)!r} is not valid JSON: {err}") from None
    bundle_schema.check(meta)
    if not (path / "model.onnx").is_file():
        raise BundleError(f"bundle {str(path)!r} has no model.onnx")
    return meta


def session(
    model_path: str | os.PathLike[str], threads: int | None = None, spinning: bool | None = None
) -> Any:  # an onnxruntime.InferenceSession
    """An onnxruntime session, on CUDA when onnxruntime has it.

    ``spinning=False`` stops idle intra-op threads from busy-waiting for work:
    a server wants that, so the CPU goes to the event loop between calls.
    """
    ort = extras.require("onnxruntime", "running an ONNX model")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)


class Predictor:
    """A loaded bundle: preprocessing + ONNX model."""

    def __init__(
        self, path: str | os.PathLike[str], threads: int | None = None, spinning: bool | None = None
    ):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        try:
            self.session = session(self.path / "model.onnx", threads, spinning)
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(f"model.onnx of {str(self.path)!r} does not load: {err}") from None
        pre = self.meta["inputs"].get("preprocessing")
        self.preprocessor = Preprocessor.from_dict(pre) if pre else None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        n_in = self.session.get_inputs()[0].shape[-1]
        if isinstance(n_in, int) and n_in != len(self.features):
            raise BundleError(f"model.onnx takes {n_in} features but bundle.json lists {len(self.features)}")

    name = property(lambda self: self.meta["name"])
    version = property(lambda self: int(self.meta["version"]))
    features = property(lambda self: list(self.meta["inputs"]["features"]))
    labels = property(lambda self: list(self.meta["outputs"]["labels"]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for ready-made feature rows ``(n, F)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise BundleError(f"expected input of shape (n, {len(self.features)}), got {tuple(x.shape)}")
        out: np.ndarray = self.session.run([self.output_name], {self.input_name: x})[0]
        return out

    def transform(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Raw branch values (flat lists, and lists of lists for jagged ones) to features."""
        if self.preprocessor is None:
            raise BundleError(f"model {self.name!r} has no preprocessing: send feature vectors")
        missing = [b for b in self.preprocessor.inputs if b not in arrays]
        if missing:
            raise BundleError(
                f"missing raw inputs {missing}; model {self.name!r} needs {self.preprocessor.inputs}"
            )
        x, _, _ = self.preprocessor.transform(_as_arrays(arrays), apply_selection=False)
        return x

    def predict_raw(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Probabilities for raw branch values: the bundle's preprocessing is applied."""
        return self.predict(self.transform(arrays))

    def predict_root(
        self,
        url: str,
        tree: str | None = None,
        entry_start: int = 0,
        entry_stop: int | None = None,
        chunk_size: int = 100_000,
        timeout: float = 30.0,
        ids: tuple[str, ...] = ("run", "luminosityBlock", "event"),
    ) -> Iterator[dict[str, np.ndarray]]:
        """Stream a ROOT file (local, ``root://``, ``http://``) and yield scores per chunk.

        Each item holds ``entry`` (entry numbers), the identifier branches the
        file has, and ``scores``. The selection is not applied: every entry gets
        a score.
        """
        from .io import reader, sources

        pre = self.preprocessor
        if pre is None:
            raise BundleError(f"model {self.name!r} has no preprocessing: it cannot read ROOT files")
        tree = tree or pre.tree
        t = reader.get_tree(url, tree, timeout)
        stop = t.num_entries if entry_stop is None else min(int(entry_stop), t.num_entries)
        start = max(0, int(entry_start))
        id_names = [i for i in ids if i in t]
        for s in range(start, stop, chunk_size):
            e = min(s + chunk_size, stop)
            arrays = sources.with_retries(
                functools.partial(reader.read_arrays, url, tree, pre.inputs + id_names, s, e, timeout),
                f"reading entries {s}-{e} of {url}",
                0 if sources.is_local(url) else 3,
                url=url,
            )
            out = {"entry": np.arange(s, e, dtype=np.int64)}
            out.update({i: np.asarray(arrays[i]) for i in id_names})
            out["scores"] = self.predict(pre.transform(arrays, apply_selection=False)[0])
            yield out


def load(path: str | os.PathLike[str], threads: int | None = None, spinning: bool | None = None) -> Predictor:
    """Load a bundle directory (``bundle.json``, ``model.onnx``, ``labels.txt``) as a :class:`Predictor`.

    The bundle is validated (:mod:`mlaas4hep.bundle_schema`) before anything is
    allocated; its preprocessing is rebuilt exactly as in training, so
    :meth:`Predictor.predict_raw` and :meth:`Predictor.predict_root` take raw
    branch values or ROOT files.

    Args:
        path (str or path): the bundle directory (``runs/NAME/bundle`` after training).
        threads (None or int, default None): onnxruntime's intra-op threads
            (None: onnxruntime's default, all cores).
        spinning (None or bool, default None): whether idle onnxruntime threads
            busy-wait (see :func:`session`; a server turns it off).

    Raises :class:`BundleError` naming what is wrong with the bundle.
    """
    return Predictor(path, threads, spinning)


def _as_arrays(arrays: Mapping[str, Any]) -> dict[str, Any]:
    import awkward as ak

    out = {}
    for k, v in arrays.items():
        if isinstance(v, (np.ndarray, ak.Array)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and any(isinstance(e, (list, tuple)) for e in v):
            out[k] = ak.Array(list(v))
        else:
            out[k] = np.asarray(v, dtype=np.float64)
    return out
