"""A missing optional package names the extra that installs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlaas4hep import extras
from mlaas4hep.errors import Mlaas4hepError


def test_require_names_the_extra():
    with pytest.raises(extras.MissingDependencyError) as info:
        extras.require("distributed.not_a_module", "executor 'dask'")
    msg = str(info.value)
    assert "executor 'dask' needs the Python package 'distributed'" in msg
    assert "pip install 'mlaas4hep[scale]'" in msg
    # one of ours, and still an ImportError for code that catches those
    assert isinstance(info.value, Mlaas4hepError) and isinstance(info.value, ImportError)


def test_torch_hint_points_to_the_cpu_wheel():
    assert extras.install_hint("torch").startswith("pip install torch==2.13.0")


def test_serving_without_onnxruntime_says_what_to_install(tmp_path):
    """A client-only install (no onnxruntime) that tries to run a bundle gets the extra's name."""
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # as if not installed\n"
        "from mlaas4hep import bundle\n"
        "try:\n"
        f"    bundle.session({str(tmp_path / 'model.onnx')!r})\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "running an ONNX model needs the Python package 'onnxruntime'" in out.stdout, out.stderr
    assert "pip install 'mlaas4hep[serve]'" in out.stdout
