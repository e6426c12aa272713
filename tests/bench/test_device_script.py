"""bench/device.sh, the prepared call for the lent GPU host, runs here in its --smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_script_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", "bench/device.sh", "--smoke", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    machine = (out / "machine.txt").read_text()
    assert "cores:" in machine and "torch:" in machine and "gpu:" in machine
    scale = (out / "scale.md").read_text()
    # one row per worker count (the smoke run leaves Dask to tests/scale)
    assert "| processes | 1 |" in scale and "| processes | 2 |" in scale, scale
    for tag in ("bs256", "bs256-amp"):
        train = (out / f"train-{tag}.md").read_text()
        assert "| tth | 32 | cpu |" in train, train
    e2e = (out / "e2e.txt").read_text()
    assert "end to end: PASS" in e2e and "max_abs_diff" in e2e, e2e
    assert not (out / "data").exists()  # generated files are not left behind
