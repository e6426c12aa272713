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


def _reference(values):
    """Statistics as a reader would compute them by hand: non-finite values counted, left out."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return int((~ok).sum()), v[ok]


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_stats_count_and_leave_out_non_finite_values(bad):
    v = np.random.default_rng(1).normal(5, 3, 1000).astype(np.float32)
    if bad is not None:
        v[[3, 500, 999]] = bad
    s = Stats.of(v)
    nans, good = _reference(v)
    assert (s.nans, s.count) == (nans, good.size)
    assert (s.min, s.max) == (good.min(), good.max())
    assert s.mean == good.mean() and s.std == pytest.approx(good.std(), rel=1e-12)
    only_bad = Stats.of(np.full(4, np.nan))
    assert (only_bad.nans, only_bad.count, only_bad.min, only_bad.max) == (4, 0, float("inf"), float("-inf"))


def test_stats_of_jagged_lists_sliced_and_not_contiguous():
    import awkward as ak

    whole = ak.Array([[1.0, 2.0], [], [3.0, np.nan, 5.0], [6.0], [7.0, 8.0]])
    sliced = whole[2:]  # offsets that do not start at 0
    listarray = whole[[4, 0, 2]]  # a ListArray: lists anywhere in the content
    for arr, flat, multiplicities in (
        (sliced, [3.0, 5.0, 6.0, 7.0, 8.0], [0, 1, 1, 1]),
        (listarray, [7.0, 8.0, 1.0, 2.0, 3.0, 5.0], [0, 0, 2, 1]),
    ):
        s = Stats.of(arr)
        assert (s.nans, s.count, s.min, s.max) == (1, len(flat), min(flat), max(flat))
        assert s.mean == pytest.approx(np.mean(flat), rel=1e-15)
        assert s.lengths.tolist() == multiplicities


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
    other = sample_config(data_dir, None, specs=str(path), branches=["MET_pt"], jagged={})
    with caplog.at_level("WARNING"):
        s = Dataset.from_config(other).specs
    assert "configuration" in caplog.text
    assert s.flat == ["MET_pt"] and s.jagged == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_stats_are_those_of_float64_arithmetic_whatever_the_reused_scratch_holds(dtype):
    """``Stats.of`` casts into a scratch array reused from call to call (and overwrites it with
    the deviations): every call, larger or smaller than the last, gives numpy's float64 values
    exactly, and the caller's array is left as it was."""
    rng = np.random.default_rng(2)
    for n in (50_000, 1_000, 70_001, 3):
        v = (rng.normal(4, 2, n) * (10 if dtype is np.int32 else 1)).astype(dtype)
        before = v.copy()
        s = Stats.of(v)
        w = v.astype(np.float64)
        mean = float(w.mean())
        assert (s.count, s.mean, s.min, s.max) == (n, mean, float(w.min()), float(w.max()))
        assert s.m2 == float(np.square(w - mean).sum())
        np.testing.assert_array_equal(v, before)
