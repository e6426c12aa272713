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
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, bundle_schema, extras
from .bundle_schema import BundleError as BundleError  # defined with the schema that raises it
from .bundle_spec import BundleSpec
from .io.preprocess import Preprocessor
from .jsonutil import jsonable

FORMAT = "mlaas4hep-bundle/1"
REQUIRED = bundle_schema.REQUIRED
MAX_META_BYTES = 16 * 2**20  # bundle.json
#: Files a bundle may contain: ONNX, JSON, text and safe native weight formats.
ALLOWED_SUFFIXES = (".onnx", ".json", ".txt", ".safetensors", ".keras", ".md")


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
    identifier: Sequence[str] | None = None,
) -> Path:
    """Write a bundle directory; returns its path.

    ``features`` defaults to the preprocessor's feature names; without a
    preprocessor the model takes ready-made feature vectors. ``identifier``
    names the dataset's event identifier branches (``run``, ``luminosityBlock``,
    ``event``), which ``mlaas4hep predict`` writes next to the scores.
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
    inputs: dict[str, Any] = {
        "features": feats,
        "preprocessing": preprocessor.to_dict() if preprocessor is not None else None,
        "onnx_input": graph.input[0].name,
    }
    if len(graph.input) > 1 or (preprocessor is not None and preprocessor.groups is not None):
        inputs["tensors"] = _graph_tensors(graph)  # several named tensors (object groups and masks)
    else:
        inputs.update(datatype="FP32", shape=[-1, len(feats)])
    meta = {
        "format": FORMAT,
        "name": name,
        "version": int(version),
        "framework": framework,
        "producer": f"mlaas4hep {__version__}",  # the version that wrote it
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "description": description,
        "inputs": inputs,
        "outputs": {
            "labels": list(labels),
            "onnx_output": graph.output[0].name,
            "datatype": "FP32",
            "shape": [-1, 1 if len(labels) <= 2 else len(labels)],
        },
        "metrics": dict(metrics or {}),
        "data_fingerprint": data_fingerprint,
        "native": sorted((native or {}).keys()),
        **({"identifier": list(identifier)} if identifier is not None else {}),
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


def _graph_tensors(graph: Any) -> list[dict[str, Any]]:
    """``inputs.tensors`` of bundle.json: the ONNX graph's inputs, in order (symbolic dimensions -1)."""
    onnx = extras.require("onnx", "writing a model bundle")
    types = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.BOOL: "BOOL"}
    out = []
    for i in graph.input:
        tt = i.type.tensor_type
        if tt.elem_type not in types:
            raise BundleError(f"model input {i.name!r} must be float32 or bool")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        out.append({"name": i.name, "datatype": types[tt.elem_type], "shape": [-1, *dims[1:]]})
    return out


def resolve_dir(path: str | os.PathLike[str]) -> Path:
    """A bundle directory: ``path`` itself, or the ``bundle/`` of a training run's directory."""
    p = Path(path)
    if not (p / "bundle.json").exists() and (p / "bundle" / "bundle.json").exists():
        return p / "bundle"
    if not p.exists():
        raise BundleError(f"no bundle at {str(p)!r}: give a bundle directory (runs/NAME/bundle)")
    if not p.is_dir():
        raise BundleError(f"{str(p)!r} is a file, not a bundle directory (runs/NAME/bundle)")
    return p


def read_meta(path: str | os.PathLike[str], label: str | None = None) -> dict[str, Any]:
    """Read ``bundle.json`` and check it against the schema of :mod:`mlaas4hep.bundle_schema`.

    Raises :class:`BundleError` naming what is wrong, so a server can skip a
    bad entry on disk instead of failing on it later. ``label`` names the
    bundle in those messages (default: its path; a server passes
    ``name/version``, so that no message shows a client its directories).
    """
    path = Path(path)
    where = repr(label if label is not None else str(path))
    try:
        with open(path / "bundle.json", "rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(f"bundle {where} has no bundle.json") from None
    except OSError as err:
        raise BundleError(f"bundle.json of {where} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_META_BYTES:
        raise BundleError(f"bundle.json of {where} exceeds {MAX_META_BYTES} bytes")
    try:
        meta: dict[str, Any] = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise BundleError(f"bundle.json of {where} is not valid JSON: {err}") from None
    bundle_schema.check(meta)
    if not (path / "model.onnx").is_file():
        raise BundleError(f"bundle {where} has no model.onnx")
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
    # No memory arena on the CPU: with one, the buffers of a large request stay reserved by the
    # session until it is freed (hundreds of MB per model after one large batch); without it,
    # they go back to the allocator when the call returns, at no measurable cost per call.
    opts.enable_cpu_mem_arena = False
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)


#: rows of a call that :class:`Predictor` runs on its one-thread session, when it has one
SMALL_ROWS = 16
#: models whose ``model.onnx`` is larger get no second session (it holds a second copy of the weights)
SMALL_SESSION_MAX_BYTES = 64 << 20


def small_session(
    model_path: Path, main: Any, threads: int | None, spinning: bool | None
) -> Any:  # an onnxruntime.InferenceSession, or None
    """A second session of ``model_path`` with one intra-op thread, for calls of a few rows; or None.

    A call of one row does too little to share between threads, yet with more than
    one intra-op thread onnxruntime still wakes the others and waits for them: on a
    2-core machine a one-row call of ``bench/serve.py``'s MLP took 40-65 µs and
    58-71 µs of CPU, against 24-41 µs and 26-44 µs on one thread. So a server, whose
    lone requests are of a row or a few, runs those on a one-thread session and larger
    batches on the main one. None when that would not help or costs too much: the main
    session has one thread already (``threads=1``, or a one-core machine), runs on a GPU,
    or the model is larger than :data:`SMALL_SESSION_MAX_BYTES`.
    """
    if threads == 1 or (not threads and (os.cpu_count() or 1) < 2):
        return None
    if main.get_providers()[0] != "CPUExecutionProvider":
        return None
    if model_path.stat().st_size > SMALL_SESSION_MAX_BYTES:
        return None
    return session(model_path, 1, spinning)


class Predictor:
    """A loaded bundle: its contract (:class:`~mlaas4hep.bundle_spec.BundleSpec`) and its ONNX session.

    :meth:`predict` takes the model's named input tensors (for a flat bundle,
    also the bare ``(n, F)`` feature array), :meth:`predict_raw` raw branch
    values, :meth:`predict_root` a ROOT file; all check their inputs through
    the spec, so the server and a script refuse the same things for the same
    reasons. ``spec`` lets a caller that parsed ``bundle.json`` already (the
    server's repository) hand it over instead of reading it again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        spinning: bool | None = None,
        spec: BundleSpec | None = None,
        label: str | None = None,
        small_calls: bool = False,
    ):
        self.path = Path(path)
        #: How messages name the bundle (its path by default; a server gives ``name/version``).
        self.label = label if label is not None else str(self.path)
        self.spec = spec if spec is not None else BundleSpec(read_meta(self.path, label))
        self.meta = self.spec.meta
        self.preprocessor = self.spec.preprocessor
        model = self.path / "model.onnx"
        try:
            self.session = session(model, threads, spinning)
            #: a one-thread session for calls of at most :data:`SMALL_ROWS` rows (see :func:`small_session`);
            #: read in the same guard: the version may be deleted between the two reads
            self.small = small_session(model, self.session, threads, spinning) if small_calls else None
        except Exception as err:  # onnxruntime raises its own exception types; OSError: the file went
            msg = str(err).replace(str(self.path), self.label)  # onnxruntime names the file it read
            raise BundleError(f"model.onnx of {self.label!r} does not load: {msg}") from None
        self.input_name = self.spec.input_name
        self.output_name = self.session.get_outputs()[0].name
        _check_session(self.spec, self.session.get_inputs())

    name = property(lambda self: self.spec.name)
    version = property(lambda self: self.spec.version)
    features = property(lambda self: list(self.spec.features))
    labels = property(lambda self: list(self.spec.labels))

    @functools.cached_property
    def loops(self) -> bool:
        """Whether the graph holds a ``Loop`` (also in a subgraph or a function): its run time may
        depend on the input values, not only on their shape, so a fast call says nothing of the next.

        Read from ``model.onnx`` on first use (the server asks in an inference thread); ``True``
        when the file cannot be read as ONNX here.
        """
        try:
            import onnx

            model = onnx.load(str(self.path / "model.onnx"), load_external_data=False)
        except Exception:  # onnx missing, or a file onnxruntime reads and onnx does not
            return True
        graphs = [model.graph]
        nodes = [n for f in model.functions for n in f.node]
        while graphs or nodes:
            if graphs:
                nodes.extend(graphs.pop().node)
                continue
            node = nodes.pop()
            if node.op_type == "Loop":
                return True
            for a in node.attribute:
                graphs.extend([a.g] if a.HasField("g") else [])
                graphs.extend(a.graphs)
        return False

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Probabilities for the model's named input tensors (or a flat bundle's ``(n, F)`` rows)."""
        if not isinstance(inputs, Mapping):
            inputs = {self.spec.input_name: np.asarray(inputs)}
        return self.run(self.spec.check(inputs, cast=True))

    def run(self, inputs: Mapping[str, np.ndarray], run_options: Any = None) -> np.ndarray:
        """The ONNX model on tensors already checked by :meth:`BundleSpec.check` (the server's batcher).

        ``run_options``: onnxruntime's ``RunOptions`` (the server sets ``terminate`` on a call past its time).
        """
        feed = inputs if isinstance(inputs, dict) else dict(inputs)
        sess = self.session
        if self.small is not None and feed:
            first = next(iter(feed.values()))
            if first.ndim == 0 or first.shape[0] <= SMALL_ROWS:
                sess = self.small
        out: np.ndarray = sess.run([self.output_name], feed, run_options)[0]
        return out

    def smoke_test(self, timeout: float = 10.0, rows: int = 2) -> None:
        """Run the model once on ``rows`` example rows (:func:`example_inputs`), within ``timeout`` seconds.

        Raises :class:`BundleError` naming onnxruntime's error when the model
        fails at run time (an allocation it cannot make, a shape it cannot
        compute), when its output does not have one row per input row, or when
        the run does not finish in time: it is then cut off with onnxruntime's
        ``RunOptions.terminate``, so a model that loops for ever costs
        ``timeout`` seconds, not a thread.
        """
        ort = extras.require("onnxruntime", "running an ONNX model")
        feed = example_inputs(self.spec, rows)
        options = ort.RunOptions()
        timer = threading.Timer(timeout, lambda: setattr(options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            out = self.session.run([self.output_name], feed, options)[0]
        except Exception as err:  # onnxruntime raises its own exception types
            if options.terminate:
                raise BundleError(
                    f"model.onnx of {self.label!r} did not finish a run on {rows} example rows "
                    f"within {timeout:g} s"
                ) from None
            msg = str(err).replace(str(self.path), self.label)
            raise BundleError(f"model.onnx of {self.label!r} fails on {rows} example rows: {msg}") from None
        finally:
            timer.cancel()
        shape = getattr(out, "shape", ())
        if not shape or shape[0] != rows:
            raise BundleError(
                f"model.onnx of {self.label!r} answers {rows} example rows with an output of shape "
                f"{list(shape)}: one row per input row was expected"
            )

    def transform(self, arrays: Mapping[str, Any] | Any) -> np.ndarray:
        """Raw branch values (flat lists, and lists of lists for jagged ones) to flat feature rows."""
        pre = self.preprocessor
        if pre is None:
            raise BundleError(f"model {self.name!r} has no preprocessing: send feature vectors")
        x, _, _ = pre.transform(self.spec.raw_arrays(self._fields(arrays)), apply_selection=False)
        return x

    def tensors(self, arrays: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        """Raw branch values to the model's named input tensors (through the object groups, if any)."""
        return self.spec.preprocess(self.spec.raw_arrays(self._fields(arrays)))

    def predict_raw(self, arrays: Mapping[str, Any] | Any) -> np.ndarray:
        """Probabilities for raw branch values: the bundle's preprocessing is applied.

        ``arrays`` maps branch names to values (lists, numpy or awkward arrays),
        or is an awkward record array such as ``tree.arrays(...)`` returns: its
        fields that the model reads are used, the others ignored.
        """
        return self.run(self.tensors(arrays))

    def _fields(self, arrays: Mapping[str, Any] | Any) -> Mapping[str, Any]:
        """An awkward record array as a mapping of the fields the preprocessing reads."""
        if isinstance(arrays, Mapping):
            return arrays
        fields = getattr(arrays, "fields", None)
        if not fields:
            raise BundleError(
                f"raw inputs must be a mapping of branch names to values or an awkward record array, "
                f"got {type(arrays).__name__}"
            )
        wanted = set(self.spec.raw_inputs)
        return {f: arrays[f] for f in fields if f in wanted}

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
        from .io import reader, sources, urls

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
                0 if urls.is_local(url) else 3,
                url=url,
            )
            out = {"entry": np.arange(s, e, dtype=np.int64)}
            out.update({i: np.asarray(arrays[i]) for i in id_names})
            x, mask, _ = pre.transform(arrays, apply_selection=False)
            out["scores"] = self.run(self.spec.from_features(x, mask))
            yield out


def example_inputs(spec: BundleSpec, rows: int = 2) -> dict[str, np.ndarray]:
    """``rows`` rows of the model's input tensors, from their shapes and types in ``bundle.json``.

    Values are zeros (masks all true); a dimension left open (``-1``) past
    the batch one gets length 1. What a smoke test runs the model on.
    """
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = (rows, *(d if d > 0 else 1 for d in t.shape[1:]))
        out[t.name] = np.ones(shape, t.dtype) if t.dtype == np.bool_ else np.zeros(shape, t.dtype)
    return out


def _check_session(spec: BundleSpec, inputs: list[Any]) -> None:
    """model.onnx must take what bundle.json says it takes."""
    if not spec.grouped:
        n_in = inputs[0].shape[-1]
        if isinstance(n_in, int) and n_in != len(spec.features):
            raise BundleError(f"model.onnx takes {n_in} features but bundle.json lists {len(spec.features)}")
        return
    names = [i.name for i in inputs]
    if names != spec.input_names:
        raise BundleError(f"model.onnx takes the inputs {names} but bundle.json lists {spec.input_names}")
    for i, t in zip(inputs, spec.inputs):
        dims = [d if isinstance(d, int) else -1 for d in i.shape]
        if len(dims) != len(t.shape) or any(d not in (-1, s) for d, s in zip(dims[1:], t.shape[1:])):
            raise BundleError(
                f"model.onnx input {i.name!r} has shape {dims} but bundle.json says {list(t.shape)}"
            )


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
