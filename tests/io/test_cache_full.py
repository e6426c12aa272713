"""A full disk under the decoded cache: a one-line error that names the directory, and no
temporary folders left behind (issue 24, point 7), on a real (small) file system."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mlaas4hep.generate import generate
from mlaas4hep.io.cache import evict
from mlaas4hep.io.chunk import Chunk, ChunkStore, Unit, clean_stale


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (as root), unmounted after the test."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_under_the_cache_is_one_clear_line(tmp_path, small_disk, workers):
    generate(tmp_path / "data", events=20_000, files=1, seed=5, show_progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "files": [
                    {"path": str(tmp_path / "data" / "ttH_*.root"), "label": 1},
                    {"path": str(tmp_path / "data" / "ttbar_*.root"), "label": 0},
                ],
                "branches": ["MET_pt", "Jet_pt", "Jet_eta", "Jet_phi"],
                "jagged": {"Jet": 6},
                "chunk_size": 5000,
                "cache_dir": str(small_disk),
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "mlaas4hep.cli",
        "stream",
        str(cfg),
        "--workers",
        str(workers),
        "--epochs",
        "1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert f"the disk holding the decoded cache {small_disk}/chunks/" in lines[0], r.stderr
    assert "is full (" in lines[0] and "cache_dir" in lines[0] and "cache_max_gb" in lines[0], r.stderr
    made_here = r.returncode == 0
    # workers: 0, or with workers the units this process decoded while they started (kept in
    # memory, so which process meets the full disk first is a matter of timing): the cache
    # stops, the epoch goes on
    if workers == 0 or made_here:
        assert r.returncode == 0 and lines[0].startswith("WARNING") and "writing stopped" in lines[0]
    else:  # a worker met the full disk: the run stops with the reason
        assert r.returncode == 1 and lines[0].startswith("error: the disk holding"), r.stderr
    left = [p.name for p in small_disk.rglob(".tmp-*")]
    assert left == [], left


def test_stale_temporary_chunks_of_dead_processes_are_removed(tmp_path):
    store = ChunkStore(tmp_path / "c")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = store.root / f".tmp-0_0_10-{dead.pid}"
    live = store.root / f".tmp-0_10_20-{os.getpid()}"
    for d in (stale, live):
        d.mkdir()
        (d / "x.npy").write_bytes(b"half")
    chunk = Chunk(
        np.zeros((10, 2), np.float32),
        np.zeros((10, 2), bool),
        np.zeros(10, np.int64),
        np.ones(10, np.float32),
        np.zeros((10, 2), np.int64),
    )
    store.write(Unit(0, 20, 30), chunk)
    evict(tmp_path, keep={"c"}, limit=2**40)  # what a dataset does when it opens its cache
    assert not stale.exists() and live.exists() and store.has(Unit(0, 20, 30))
    assert clean_stale(store.root) == []
