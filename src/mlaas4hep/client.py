"""A Python client for the mlaas4hep inference server (and for TFaaS-style servers).

::

    from mlaas4hep.client import Client

    c = Client("http://127.0.0.1:8083", token="s3cret")   # token: only to change the repository
    c.upload("out/bundle")                                  # a bundle directory or a .tar.gz
    c.models()                                              # [{"name": "tth", "versions": [1], ...}]
    c.predict("tth", x)                                     # float32 (n, F) -> (n, K), binary tensors
    c.predict("jets", {"jets": j, "jets_mask": m, "event": e})  # a model of several named tensors
    c.predict("tth", raw={"MET_pt": [40.0], "Jet_pt": [[50.0, 30.0]], ...})  # raw branches
    c.predict_root("tth", "root://host//store/f.root", entry_stop=1000)     # {"entry", "event", ..., "score"}
    c.delete("tth")
    job = c.wait(c.submit("train.yaml", model="my_model.py")["id"])   # training jobs (serve --jobs)

Feature rows travel as binary tensors of the Open Inference Protocol (no JSON
parsing of numbers on either side); raw branches go as JSON because jagged
branches are lists per event. Errors come back as :class:`ClientError` with the
server's status and message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from .bundle_archive import pack_directory
from .bundle_schema import DATATYPES as DTYPES
from .jobclient import JobsMixin

DEFAULT_URL = "http://127.0.0.1:8083"


class ClientError(Exception):
    """The server refused a request: ``status`` and the server's ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class Client(JobsMixin):
    """A Python client of ``mlaas4hep serve`` (TFaaS routes, Open Inference Protocol v2,
    the model repository, ``predict_root``, and training jobs: :mod:`mlaas4hep.jobclient`),
    over HTTP with httpx.

    It imports nothing of the server, so a client-only install needs httpx and numpy.

    Args:
        url (None or str, default None): the server's base URL; None takes
            ``$MLAAS4HEP_URL``, else ``http://127.0.0.1:8083``.
        token (None or str, default None): the bearer token for repository
            operations (and everything on a ``--private`` server); None takes
            ``$MLAAS4HEP_TOKEN``.
        timeout (float, default 60.0): seconds per request.

    Methods raise :class:`ClientError` (``status`` and the server's message) when the
    server refuses a request. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0):
        self.url = (url or os.environ.get("MLAAS4HEP_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("MLAAS4HEP_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._io_names: dict[tuple[str, int | None], tuple[str, str]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            self._raise(r)
        return r

    def _raise(self, r: httpx.Response) -> None:
        try:
            msg = r.json().get("error", r.text)
        except ValueError:
            msg = r.text
        raise ClientError(r.status_code, msg)

    # ------------------------------------------------------------ repository
    def upload(
        self, bundle: str | os.PathLike | bytes, name: str | None = None, version: int | None = None
    ) -> dict:
        """Install a bundle (directory, ``.tar.gz`` file, or its bytes); returns ``{"name", "version"}``."""
        if isinstance(bundle, (bytes, bytearray)):
            data = bytes(bundle)
        else:
            p = Path(bundle)
            data = pack_directory(p) if p.is_dir() else p.read_bytes()
        params = {k: v for k, v in (("name", name), ("version", version)) if v is not None}
        return self._request(
            "POST", "/upload", content=data, params=params, headers={"Content-Type": "application/gzip"}
        ).json()

    def models(self) -> list[dict]:
        """Every model with its params, versions, labels and features."""
        return self._request("GET", "/models").json()

    def metadata(self, name: str, version: int | None = None) -> dict:
        """The Open Inference Protocol metadata of a model."""
        return self._request("GET", _model_path(name, version)).json()

    def delete(self, name: str, version: int | None = None) -> dict:
        params = {"version": version} if version is not None else {}
        return self._request("DELETE", f"/delete/{name}", params=params).json()

    def load(self, name: str, config: Mapping[str, Any] | None = None) -> dict:
        """Load a model; ``config`` sets its serving options (``max_batch``, ``max_delay_ms``)."""
        body = {"parameters": {"config": dict(config)}} if config else {}
        return self._request("POST", f"/v2/repository/models/{name}/load", json=body).json()

    def unload(self, name: str) -> dict:
        return self._request("POST", f"/v2/repository/models/{name}/unload").json()

    def status(self) -> dict:
        return self._request("GET", "/status").json()

    # ------------------------------------------------------------ inference
    def predict(
        self,
        name: str,
        x: np.ndarray | Mapping[str, np.ndarray] | None = None,
        raw: Mapping[str, Any] | Any = None,
        version: int | None = None,
    ) -> np.ndarray:
        """Probabilities ``(n, K)`` for feature rows ``x`` ``(n, F)``, or for raw branch values ``raw``
        (a mapping of branch names to values, or an awkward record array such as ``tree.arrays([...])``).

        For a model that takes several tensors (object groups and their masks),
        ``x`` is a dict of them by name, e.g. ``{"jets": (n, 10, 5) float32,
        "jets_mask": (n, 10) bool, "event": (n, 3) float32}``.
        """
        if (x is None) == (raw is None):
            raise ValueError("give either x (feature rows) or raw (branch values)")
        path = _model_path(name, version) + "/infer"
        if x is not None:
            if isinstance(x, Mapping):  # the model's named tensors (a model of object groups)
                tensors = {k: np.asarray(v) for k, v in x.items()}
            else:
                rows = np.asarray(x)
                tensors = {self._input_name(name, version): rows[None, :] if rows.ndim == 1 else rows}
            specs, blobs = [], []
            for k, a in tensors.items():
                a = np.ascontiguousarray(a, dtype="?" if a.dtype == bool else "<f4")
                datatype = "BOOL" if a.dtype == bool else "FP32"
                params = {"binary_data_size": a.nbytes}
                specs.append({"name": k, "datatype": datatype, "shape": list(a.shape), "parameters": params})
                blobs.append(a.tobytes())
            header = orjson.dumps({"inputs": specs, "parameters": {"binary_data_output": True}})
            r = self._request(
                "POST",
                path,
                content=b"".join([header, *blobs]),
                headers={
                    "Inference-Header-Content-Length": str(len(header)),
                    "Content-Type": "application/octet-stream",
                },
            )
        else:
            if not isinstance(raw, Mapping) and getattr(raw, "fields", None):  # an awkward record array
                raw = {f: raw[f] for f in raw.fields}
            inputs = []
            for k, v in raw.items():
                v = (
                    v.tolist()
                    if isinstance(v, np.ndarray)
                    else v.to_list()
                    if hasattr(v, "to_list")
                    else list(v)
                )
                inputs.append({"name": k, "datatype": "FP64", "shape": [len(v)], "data": v})
            r = self._request(
                "POST",
                path,
                content=orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}),
                headers={"Content-Type": "application/json"},
            )
        return decode_outputs(r)[self._output_name(name, version)]

    def predict_json(self, name: str, keys: list[str], values: list) -> list:
        """TFaaS ``POST /json``: class probabilities (one per label) for one row, or a list per row."""
        return self._request(
            "POST", "/json", json={"keys": list(keys), "values": list(values), "model": name}
        ).json()

    def predict_root(
        self,
        name: str,
        url: str,
        tree: str | None = None,
        entry_start: int = 0,
        entry_stop: int | None = None,
        version: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Scores of every entry of a ROOT file the *server* reads, named as in its friend tree.

        The keys are those of the friend tree that ``format: root`` (and
        :meth:`predict_root_file`) writes: ``entry``, the ids the file has
        (``run``, ``luminosityBlock``, ``event``), and ``score`` (one output)
        or ``score_<label>`` per class; ``scores`` (``[n, K]``, the server's
        tensor) is kept for code that reads it.
        """
        body = {"url": url, "entry_start": entry_start, "format": "binary"}
        if tree:
            body["tree"] = tree
        if entry_stop is not None:
            body["entry_stop"] = entry_stop
        r = self._request("POST", _model_path(name, version) + "/predict_root", json=body)
        out = decode_outputs(r)
        scores = out.pop("scores")
        labels = self.labels(name, version) if scores.ndim == 2 and scores.shape[1] > 1 else []
        return {**out, **friend_branches(scores, labels), "scores": scores}

    def labels(self, name: str, version: int | None = None) -> list[str]:
        """The class names of a model (label 0 first), or [] when the server does not list them."""
        for m in self.models():
            if m["name"] == name and (version is None or int(version) in m.get("versions", [])):
                return [str(x) for x in m.get("label_names") or []]
        return []

    def predict_root_file(self, name: str, url: str, out: str | os.PathLike, **kw: Any) -> Path:
        """Like :meth:`predict_root`, writing the server's friend-tree ROOT file to ``out``."""
        version = kw.pop("version", None)
        body = {"url": url, "format": "root", **{k: v for k, v in kw.items() if v is not None}}
        r = self._request("POST", _model_path(name, version) + "/predict_root", json=body)
        Path(out).write_bytes(r.content)
        return Path(out)

    def _names(self, name: str, version: int | None) -> tuple[str, str]:
        key = (name, version)
        if key not in self._io_names:
            m = self.metadata(name, version)
            self._io_names[key] = (m["inputs"][0]["name"], m["outputs"][0]["name"])
        return self._io_names[key]

    def _input_name(self, name: str, version: int | None) -> str:
        return self._names(name, version)[0]

    def _output_name(self, name: str, version: int | None) -> str:
        return self._names(name, version)[1]


def friend_branches(scores: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """The score branches of ``predict_root``'s friend tree: ``score`` for one output, else
    ``score_<label>`` per class (characters other than letters and digits become ``_``)."""
    scores = np.asarray(scores).reshape(len(scores), -1)
    if scores.shape[1] == 1:
        return {"score": scores[:, 0]}
    names = labels if len(labels) == scores.shape[1] else [f"class{i}" for i in range(scores.shape[1])]
    safe = ["".join(c if c.isalnum() else "_" for c in str(n)) for n in names]
    return {f"score_{n}": scores[:, i] for i, n in enumerate(safe)}


def _model_path(name: str, version: int | None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")


def decode_outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    """The outputs of an OIP infer response (JSON or binary) as numpy arrays."""
    body = r.content
    hlen = r.headers.get("inference-header-content-length")
    n = int(hlen) if hlen is not None else len(body)
    header = orjson.loads(body[:n])
    out, offset = {}, n
    for o in header["outputs"]:
        dtype = DTYPES[o["datatype"]]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            out[o["name"]] = arr.reshape(o["shape"])
            offset += size
        else:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out
