"""A server process with gRPC (and optionally TLS), and a self-signed certificate for 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mlaas4hep.localservers import free_port

from .conftest import ServerProcess


def self_signed(dirpath: Path) -> tuple[Path, Path]:
    """A certificate (and its key) for 127.0.0.1 and localhost, valid for a day: ``(cert.pem, key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dirpath / "cert.pem", dirpath / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class GrpcServerProcess(ServerProcess):
    """``python -m mlaas4hep.serve ... --grpc-port N`` [``--tls-cert C --tls-key K``]; ready when HTTP answers."""

    def __init__(self, repo: Path, *args: str, tls: tuple[Path, Path] | None = None, **kw):
        super().__init__(repo, *args, **kw)
        self.tls = tls

    def start(self, timeout: float = 30.0) -> GrpcServerProcess:
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        extra = ["--grpc-port", str(self.grpc_port)]
        if self.tls is not None:
            extra += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        self.args = [*self.args, *extra]
        if self.tls is None:
            return super().start(timeout)
        # HTTPS: the same start as the base class, with a health check that trusts our certificate
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mlaas4hep.serve", "--repo", str(self.repo), "--port", str(self.port)]
        cmd += self.args
        if self.token:
            tf = self.repo.parent / "token.txt"
            tf.write_text(self.token + "\n")
            cmd += ["--token-file", str(tf)]
        self._log_file = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        env = {k: v for k, v in os.environ.items() if k != "MLAAS4HEP_TOKEN"}  # only what the test asks for
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=ssl.create_default_context(cafile=str(self.tls[0])), timeout=2) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
                try:
                    if http.get(self.url + "/v2/health/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready: {self.log.read_text()[-3000:]}")


def infer_request(x: Any, model: str = "tth") -> bytes:
    """A serialized ``ModelInferRequest`` of ``x`` as FP32 raw contents (input ``x``), as a raw
    HTTP/2 test sends it."""
    import numpy as np

    from mlaas4hep.serve._proto import grpc_service_pb2 as pb

    x = np.ascontiguousarray(x, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()
