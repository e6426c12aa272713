"""The client is usable from a client-only install: importing it pulls in no server code."""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_no_server_frameworks():
    code = (
        "import sys\n"
        "from mlaas4hep.client import Client\n"
        "print(sorted(m for m in ('starlette', 'prometheus_client', 'uvicorn', 'onnxruntime', 'grpc')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
