"""What ``bench/soak.py`` adds for issue 24: gRPC clients, operators churning models, and faults.

* :func:`grpc_clients`: tritonclient gRPC clients scoring the good model; every answer must be
  OK (any status code is counted);
* :func:`churn`: an operator uploading a new version of model ``churn`` through HTTP, deleting
  the previous one, and loading and unloading it through gRPC, while others ask for the
  repository index; after every acknowledged change the index and a model-ready call must
  agree with what was acknowledged: a version acknowledged as installed and not deleted that
  is missing is a **lost version**;
* :func:`hostile_faults`: a model whose ONNX graph loops forever (installed on disk, since an
  upload is smoke-tested and refused), called now and then: it must be cut off (503) while the
  good model keeps answering; request heads of 10,000 headers and of 1 MB (431 expected); a
  61 MB inference request (its memory must come back).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def grpc_clients(grpc_url: str, clients: int, deadline: float, stats: Counter) -> list[threading.Thread]:
    """Threads of tritonclient gRPC clients scoring model ``m`` until ``deadline``."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def run() -> None:
        c = grpcclient.InferenceServerClient(grpc_url)
        x = np.full((1, 14), 0.5, np.float32)
        while time.monotonic() < deadline:
            t = grpcclient.InferInput("x", [1, 14], "FP32")
            t.set_data_from_numpy(x)
            try:
                c.infer("m", [t], client_timeout=60)
                stats["grpc ok"] += 1
            except InferenceServerException as err:
                stats[f"grpc {err.status()}"] += 1

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def churn(url: str, grpc_url: str, token: str, tgz: bytes, deadline: float, stats: Counter) -> None:
    """One operator: upload v(k), delete v(k-1), unload/load, checking the repository after each."""
    import tritonclient.grpc as grpcclient

    admin = {"Authorization": f"Bearer {token}"}
    g = grpcclient.InferenceServerClient(grpc_url)
    alive: set[int] = set()
    with httpx.Client(base_url=url, timeout=60, headers=admin) as c:
        while time.monotonic() < deadline:
            r = c.post("/upload?name=churn", content=tgz, headers={"Content-Type": "application/gzip"})
            stats["churn uploads"] += 1
            if r.status_code != 200:
                stats[f"churn upload {r.status_code}"] += 1
                continue
            v = int(r.json()["version"])
            alive.add(v)
            for old in sorted(alive - {v}):
                d = c.delete(f"/delete/churn?version={old}")
                stats["churn deletes"] += 1
                if d.status_code == 200:
                    alive.discard(old)
                else:
                    stats[f"churn delete {d.status_code}"] += 1
            if stats["churn uploads"] % 5 == 0:
                grpc_admin = {"authorization": admin["Authorization"]}  # gRPC metadata keys are lower case
                g.unload_model("churn", headers=grpc_admin)
                g.load_model("churn", headers=grpc_admin)
                stats["churn unload+load"] += 1
            index = c.post("/v2/repository/index")
            listed = (
                {int(m["version"]) for m in index.json() if m["name"] == "churn"}
                if index.is_success
                else set()
            )
            stats["churn lost versions"] += len(alive - listed)
            stats["churn ghost versions"] += len(listed - alive)
            if c.get(f"/v2/models/churn/versions/{v}/ready").status_code != 200:
                stats["churn version not ready"] += 1
    with httpx.Client(base_url=url, timeout=60, headers=admin) as c:
        c.delete("/delete/churn")


def _raw_head(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def hostile_faults(url: str, port: int, deadline: float, stats: Counter, rss: Any) -> None:
    """The faults of issue 24, one after another until ``deadline``."""
    one = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]
    }  # the loop model's
    big = np.random.default_rng(0).random((1_090_000, 14), dtype=np.float32)  # 61 MB of float32
    with httpx.Client(base_url=url, timeout=120) as c:
        while time.monotonic() < deadline:
            r = c.post("/v2/models/loop/infer", json=one)  # cut off, then refused at once
            stats[f"loop model {r.status_code}"] += 1
            c.post("/v2/repository/models/loop/load", headers={"Authorization": f"Bearer {rss.token}"})
            many = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: y\r\n" % i for i in range(10_000)
            )
            status = _raw_head(port, many + b"\r\n")[9:12].decode() or "closed"
            stats[f"10,000 headers {status}"] += 1
            huge = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 1_000_000 + b"\r\n\r\n"
            status = _raw_head(port, huge)[9:12].decode() or "closed"
            stats[f"1 MB header {status}"] += 1
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": list(big.shape),
                        "parameters": {"binary_data_size": big.nbytes},
                    }
                ]
            }
            import orjson

            header = orjson.dumps(body)
            r = c.post(
                "/v2/models/m/infer",
                content=header + big.tobytes(),
                headers={
                    "Inference-Header-Content-Length": str(len(header)),
                    "Content-Type": "application/octet-stream",
                },
            )
            stats[f"61 MB request {r.status_code}"] += 1
            rss.sample()
            time.sleep(5)


class RssWatch:
    """The server's resident memory, sampled: start, peak and the latest value (MB)."""

    def __init__(self, pid: int, token: str):
        self.pid, self.token = pid, token
        self.start = self.peak = self.last = self.read()

    def read(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def sample(self) -> None:
        self.last = self.read()
        self.peak = max(self.peak, self.last)
