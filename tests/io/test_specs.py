"""The specs pass: parallel equals serial, fingerprints make stale specs recompute."""

import json
import os
import shutil

import numpy as np
import pytest

from mlaas4hep.cli import main
from mlaas4hep.io import Dataset, Specs
from mlaas4hep.io.specs import Stats

from ..conftest import sample_config


def test_stats_merge_equals_whole():
    rng = np.random.default_rng(0)
    v = rng.normal(3, 2, 10_001)
    parts = np.array_split(v, 7)
    merged = Stats()
    for p in parts:
        merged = merged.merge(Stats.of(p))
    whole = Stats.of(v)
    assert merged.count == whole.count
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.std == pytest.approx(v.std(), rel=1e-10)
    assert (merged.min, merged.max) == (v.min(), v.max())


def test_parallel_specs_equal_inline(data_dir, tmp_path):
    a = Dataset.from_config(sample_config(data_dir, workers=0)).compute_specs().to_dict()
    b = Dataset.from_config(sample_config(data_dir, workers=2)).compute_specs().to_dict()
    for key in ("minv", "maxv", "jdim", "count", "nans"):
        assert a[key] == b[key]
    for key in ("mean", "std"):
        assert a[key] == pytest.approx(b[key], rel=1e-12)


def test_specs_cli_and_reuse(data_dir, tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(sample_config(data_dir, tmp_path / "cache")))
    out = tmp_path / "specs.json"
    assert main(["specs", str(cfg), "-o", str(out), "--workers", "0"]) == 0
    d = json.loads(out.read_text())
    assert d["nevents"] == 80_000 and len(d["files"]) == 4
    assert {"url", "size", "mtime", "uuid", "entries"} <= set(d["files"][0])
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "cache", specs=str(out)))
    assert ds.specs.to_dict()["maxv"] == d["maxv"]


def test_stale_specs_are_recomputed(data_dir, tmp_path, caplog):
    local = tmp_path / "data"
    local.mkdir()
    for n in ("ttH_0.root", "ttbar_0.root"):
        shutil.copy(data_dir / n, local / n)
    cfg = sample_config(local, None, specs=str(tmp_path / "specs.json"))
    _ = Dataset.from_config(cfg).specs
    before = Specs.load(tmp_path / "specs.json")
    assert before.nevents == 40_000
    # replace a file by another of different content: same name, new fingerprint
    shutil.copy(data_dir / "ttH_1.root", local / "ttH_0.root")
    os.utime(local / "ttH_0.root", ns=(1, 1))
    with caplog.at_level("WARNING"):
        after = Dataset.from_config(cfg).specs
    assert "stale" in caplog.text and "ttH_0.root" in caplog.text
    assert after.files[0]["mtime"] == 1 and before.files[0]["mtime"] != 1
    assert after.stats["MET_pt"].mean != before.stats["MET_pt"].mean
    assert Specs.load(tmp_path / "specs.json").files[0] == after.files[0]


def test_specs_for_another_configuration_are_not_reused(data_dir, tmp_path, caplog):
    path = tmp_path / "specs.json"
    _ = Dataset.from_config(sample_config(data_dir, None, specs=str(path))).specs
    other = sample_config(data_dir, None, specs=str(path), branches=["MET_pt"])
    with caplog.at_level("WARNING"):
        s = Dataset.from_config(other).specs
    assert "configuration" in caplog.text
    assert s.flat == ["MET_pt"] and s.jagged == []
