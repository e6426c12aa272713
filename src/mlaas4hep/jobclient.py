"""The training jobs of a server (``mlaas4hep serve --jobs``), for :class:`mlaas4hep.client.Client`.

::

    from mlaas4hep.client import Client

    c = Client("https://mlaas.example.org", token=access_token)   # the server's token or an OIDC one
    job = c.submit("train.yaml", model="my_model.py", cpus=2)     # or c.submit(folder="mlaas4hep_dir/")
    job = c.wait(job["id"])                                        # {"state": "succeeded", "model": {...}}
    c.predict(job["model"]["name"], x)                             # the model is served at once
    c.fetch(job["id"], "bundle.tar.gz")                            # or its bundle, to keep

A job is a dict as the server answers it: ``id``, ``name``, ``user``,
``state`` (``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``),
``progress`` (the last epoch: ``epoch``, ``events``, ``events_per_s``,
``val_loss``, ``val_auc``...), ``created``/``started``/``finished``,
``error`` (one line) and, once it succeeded, ``model`` (``name``, ``version``).
Like the rest of the client, this imports nothing of the server.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "cancelled")
#: The files of MLaaS4HEP's folder that a job takes besides its model file.
FOLDER_FILES = ("files.txt", "labels.txt", "params.json")


def pack_folder(folder: str | os.PathLike[str]) -> bytes:
    """A ``.tar.gz`` of MLaaS4HEP's folder: its ``.py`` model file, ``files.txt``, ``labels.txt``, ``params.json``."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}")
    names = [p for p in sorted(d.iterdir()) if p.is_file() and (p.suffix == ".py" or p.name in FOLDER_FILES)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in names:
            tar.add(p, arcname=p.name, recursive=False)
    return buf.getvalue()


class JobsMixin:
    """The jobs methods of :class:`mlaas4hep.client.Client` (which provides ``_request`` and ``_http``)."""

    _http: httpx.Client

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:  # pragma: no cover - Client's
        raise NotImplementedError

    def submit(
        self,
        config: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
        *,
        folder: str | os.PathLike[str] | None = None,
        name: str | None = None,
        cpus: int | None = None,
        memory: float | None = None,
        device: str | None = None,
        time_limit: float | None = None,
    ) -> dict[str, Any]:
        """Submit a training: ``config`` (a YAML file) and ``model`` (its Python model file), or
        MLaaS4HEP's ``folder``; ``name`` of the model it installs; the resources it may use
        (``memory`` in GB, ``time_limit`` in seconds). The job, queued."""
        files: dict[str, tuple[str, bytes, str]] = {}
        if folder is not None:
            if config is not None or model is not None:
                raise ValueError("give a config and a model file, or a folder, not both")
            files["folder"] = (Path(folder).name + ".tar.gz", pack_folder(folder), "application/gzip")
        else:
            if config is None or model is None:
                raise ValueError("a job needs a config and a model file (or a folder)")
            files["config"] = (Path(config).name, Path(config).read_bytes(), "application/yaml")
            files["model"] = (Path(model).name, Path(model).read_bytes(), "text/x-python")
        fields = {"name": name, "cpus": cpus, "memory": memory, "device": device, "time_limit": time_limit}
        data = {k: str(v) for k, v in fields.items() if v is not None}
        result: dict[str, Any] = self._request("POST", "/jobs", files=files, data=data).json()
        return result

    def jobs(self) -> list[dict[str, Any]]:
        """The caller's jobs, newest first."""
        result: list[dict[str, Any]] = self._request("GET", "/jobs").json()["jobs"]
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/jobs/{job_id}").json()
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (its processes end); the job, ``cancelled`` (or already final)."""
        result: dict[str, Any] = self._request("DELETE", f"/jobs/{job_id}").json()
        return result

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        """The job once it is final (``TimeoutError`` after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout:g} s")
            time.sleep(poll)

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The job's log, line by line; ``follow``: until the job ends."""
        params = {"follow": "1" if follow else "0"}
        with self._http.stream("GET", f"/jobs/{job_id}/logs", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                self._raise(r)
            yield from r.iter_lines()

    def fetch(self, job_id: str, out: str | os.PathLike[str] | None = None) -> Path:
        """Download the trained bundle (``.tar.gz``) to ``out`` (default: the server's file name, here)."""
        r = self._request("GET", f"/jobs/{job_id}/bundle")
        disposition = r.headers.get("content-disposition", "")
        default = (
            disposition.split("filename=")[-1].strip('"')
            if "filename=" in disposition
            else f"{job_id}.tar.gz"
        )
        path = Path(out) if out is not None else Path(Path(default).name)
        if path.is_dir():
            path = path / Path(default).name
        path.write_bytes(r.content)
        return path

    def _raise(self, r: httpx.Response) -> None:  # pragma: no cover - Client's
        raise NotImplementedError
