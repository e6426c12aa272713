"""Small calls of a small model run in a one-thread onnxruntime session, with the same results.

For a few rows, waking onnxruntime's other intra-op threads costs more CPU and time than they
save (issue 25: one row of the reference MLP, about 40 µs with two threads, 20 µs with one),
so the repository gives a small model a second, one-thread session for calls of at most
``SMALL_ROWS`` rows. The scores must not depend on which session ran: they are compared bit
for bit with a plain onnxruntime session of the model, batch by batch and row by row.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

from mlaas4hep import bundle
from mlaas4hep.serve.repository import SMALL_ROWS, Repository

from .conftest import install_copy, mlp_onnx

N_FEATURES = 24

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one session is enough")


def _repo(tmp_path, onnx_bytes: bytes) -> Repository:
    src = bundle.write(
        tmp_path / "m",
        onnx_bytes,
        None,
        ["b", "s"],
        name="m",
        framework="onnx",
        features=[f"f{i}" for i in range(N_FEATURES)],
    )
    install_copy(tmp_path / "repo", src, "m")
    return Repository(tmp_path / "repo")


def test_small_calls_of_a_small_model_give_the_scores_of_onnxruntime_bit_for_bit(tmp_path):
    onnx_bytes = mlp_onnx(N_FEATURES, hidden=64)
    p = _repo(tmp_path, onnx_bytes).predictor("m", 1)
    assert p.single is not None and p.small_rows == SMALL_ROWS
    plain = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((300, N_FEATURES)).astype(np.float32)
    for n in (1, 2, SMALL_ROWS, SMALL_ROWS + 1, 300):  # both sessions
        want = plain.run(None, {"x": x[:n]})[0]
        assert np.array_equal(p.run({"x": x[:n]}), want), n
    rows = np.concatenate([p.run({"x": x[i : i + 1]}) for i in range(300)])
    assert np.array_equal(rows, plain.run(None, {"x": x})[0])  # one by one as in one batch


def test_a_large_model_gets_no_second_session(tmp_path, monkeypatch):
    """Its weights would be in memory twice, for calls whose overhead its own cost dwarfs."""
    onnx_bytes = mlp_onnx(N_FEATURES, hidden=64)
    monkeypatch.setattr(bundle, "SINGLE_MAX_BYTES", len(onnx_bytes) - 1)
    p = _repo(tmp_path, onnx_bytes).predictor("m", 1)
    assert p.single is None
    x = np.ones((1, N_FEATURES), np.float32)
    plain = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert np.array_equal(p.run({"x": x}), plain.run(None, {"x": x})[0])
