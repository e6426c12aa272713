"""Bad input: each case raises a specific error that names the file and the branch."""

import numpy as np
import pytest
import uproot

from mlaas4hep.io import (
    BranchNotFoundError,
    ConfigError,
    CorruptFileError,
    Dataset,
    FileOpenError,
    TreeNotFoundError,
    UnsupportedBranchError,
)

from ..conftest import sample_config


def cfg_for(data_dir, path, **kw):
    cfg = sample_config(data_dir, shuffle=False)
    cfg["files"] = [{"path": str(path), "label": 1}]
    cfg.update(kw)
    return cfg


def test_missing_file(data_dir, tmp_path):
    with pytest.raises(FileOpenError, match=r"nothere\.root.*no such file"):
        Dataset.from_config(cfg_for(data_dir, tmp_path / "nothere.root")).to_numpy()


def test_missing_glob_is_a_config_error(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        Dataset.from_config(cfg_for(data_dir, tmp_path / "none_*.root"))


def test_missing_tree(data_dir):
    with pytest.raises(TreeNotFoundError, match=r"no tree 'boostedAk8/events' in file .*ttH_0\.root.*Events"):
        Dataset.from_config(cfg_for(data_dir, data_dir / "ttH_0.root", tree="boostedAk8/events")).to_numpy()


def test_missing_branch(data_dir):
    with pytest.raises(BranchNotFoundError, match=r"'FatJet_pt'.*ttH_0\.root"):
        Dataset.from_config(cfg_for(data_dir, data_dir / "ttH_0.root", branches=["FatJet_pt"])).to_numpy()


def test_branch_missing_in_a_later_file(data_dir, tmp_path):
    other = tmp_path / "other.root"
    with uproot.recreate(other) as f:
        f.mktree("Events", {"MET_pt": np.float32}).extend({"MET_pt": np.ones(10, np.float32)})
    cfg = sample_config(data_dir, shuffle=False, branches=["MET_pt", "nJet"])
    cfg["files"] = [{"path": str(data_dir / "ttH_0.root"), "label": 1}, {"path": str(other), "label": 0}]
    with pytest.raises(BranchNotFoundError, match=r"'nJet'.*other\.root"):
        Dataset.from_config(cfg).to_numpy()


def test_not_a_root_file(data_dir, tmp_path):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"this is not ROOT" * 100)
    with pytest.raises(CorruptFileError, match=r"bad\.root"):
        Dataset.from_config(cfg_for(data_dir, bad)).to_numpy()


def test_truncated_file(data_dir, tmp_path):
    src = data_dir / "ttH_0.root"
    cut = tmp_path / "truncated.root"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"truncated\.root"):
        Dataset.from_config(cfg_for(data_dir, cut)).to_numpy()


def test_unsupported_type_names_file_and_branch(data_dir, tmp_path):
    path = tmp_path / "nested.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {"x": np.float32, "matrix": np.dtype((np.float32, (3, 2)))}).extend(
            {"x": np.ones(3, np.float32), "matrix": np.ones((3, 3, 2), np.float32)}
        )
    with pytest.raises(
        UnsupportedBranchError, match=r"branch 'matrix' in file .*nested\.root' has type 'float\[3\]\[2\]'"
    ):
        Dataset.from_config(cfg_for(data_dir, path, branches=["x", "matrix"])).to_numpy()


def test_skip_reads_the_rest_and_reports(data_dir, tmp_path):
    cut = tmp_path / "truncated.root"
    cut.write_bytes((data_dir / "ttbar_0.root").read_bytes()[:200_000])
    cfg = sample_config(data_dir, shuffle=False, on_error="skip")
    cfg["files"] = [
        {"path": str(data_dir / "ttH_0.root"), "label": 1},
        {"path": str(cut), "label": 0},
        {"path": str(data_dir / "ttbar_1.root"), "label": 0},
    ]
    ds = Dataset.from_config(cfg)
    x, y = ds.to_numpy()
    assert len(x) >= 40_000 and (y == 1).sum() == 20_000 and (y == 0).sum() >= 20_000
    assert ds.report and all("truncated.root" in r["file"] for r in ds.report)


def test_bad_config_values():
    from mlaas4hep.io import DatasetConfig

    with pytest.raises(ConfigError, match="normalize"):
        DatasetConfig(normalize="zscore")
    with pytest.raises(ConfigError, match="on_error"):
        DatasetConfig(on_error="ignore")
    with pytest.raises(ConfigError, match="unknown function 'open'"):
        from mlaas4hep.io.expr import Expression

        Expression("open('/etc/passwd')")


def test_skip_reports_a_skipped_range_once_over_epochs(data_dir, tmp_path):
    """Each epoch meets the bad range again: the report lists it once (issue 24, point 8)."""
    cut = tmp_path / "truncated.root"
    cut.write_bytes((data_dir / "ttbar_0.root").read_bytes()[:200_000])
    cfg = sample_config(data_dir, shuffle=False, on_error="skip")
    cfg["files"] = [{"path": str(data_dir / "ttH_0.root"), "label": 1}, {"path": str(cut), "label": 0}]
    ds = Dataset.from_config(cfg)
    once = [sum(len(c) for c in ds.chunks(epoch=e)) for e in range(3)]
    assert once[0] == once[1] == once[2] >= 20_000
    ranges = [(r["file"], tuple(r.get("entries", ()))) for r in ds.report]
    assert ranges and len(ranges) == len(set(ranges)), ranges
