"""What the jobs tests share: small training configurations, model files, and an OIDC issuer of their own.

:class:`Issuer` makes an RSA key pair, publishes its public key as a JWKS on
127.0.0.1 (a real HTTP server, as an OIDC provider's ``jwks_uri``) and signs
access tokens with it, so that the server checks them exactly as it would
check CERN SSO's or INDIGO IAM's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mlaas4hep import MODELS_DIR

from ..conftest import sample_config

ISSUER = "https://issuer.test"
#: Events read per file: a job trains in a few seconds.
NEVTS = 2000
BRANCHES = ["MET_pt", "nJet", "Jet_pt", "Jet_eta"]

#: A model file whose import takes a minute: the job runs (its process lives) without using the CPU.
SGD_MODEL_BODY = """\
from sklearn.linear_model import SGDClassifier


def model():
    return SGDClassifier(loss="log_loss")
"""
SLOW_MODEL = "import time\ntime.sleep(120)\n" + SGD_MODEL_BODY


def train_config(data_dir: Path, path: Path, **training: Any) -> Path:
    """A training YAML over the generated sample (absolute paths, inside ``data_dir``); its path."""
    cfg = sample_config(data_dir, None, nevts=NEVTS, chunk_size=1000, branches=BRANCHES, jagged={"Jet": 4})
    cfg.pop("cache_dir")
    cfg["model"] = "model.py"  # replaced by the uploaded model file
    cfg["training"] = {
        "epochs": 2,
        "batch_size": 512,
        "early_stopping": 0,
        "seed": 3,
        "plots": False,
        **training,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def sgd_model() -> Path:
    return Path(MODELS_DIR) / "sklearn_sgd.py"


def job_pids(job_dir: Path) -> list[int]:
    """Processes whose command line names ``job_dir`` (a job's process and what it started)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(job_dir).encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


class Issuer:
    """An OIDC issuer on 127.0.0.1: an RSA key, its JWKS served over HTTP, tokens signed with it."""

    def __init__(self, kid: str = "test-key"):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, use="sig", alg="RS256")
        body = json.dumps({"keys": [jwk]}).encode()
        self.requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, user: str, expires_in: float = 600, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "sub": f"id-{user}",
            "preferred_username": user,
            "iat": now,
            "exp": now + int(expires_in),
        }
        payload.update(claims)
        pem = (key or self.key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return jwt.encode(payload, pem, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def env_with_source() -> dict[str, str]:
    """The environment of a server whose jobs import this checkout's mlaas4hep."""
    import mlaas4hep

    src = str(Path(mlaas4hep.__file__).parents[1])
    return {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
