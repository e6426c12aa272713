"""`mlaas4hep scan`: real Optuna scans of a small network on the generated sample.

What a physicist relies on: each trial trains with the drawn values, the best
trial is the one with the best recorded metric and its bundle is the one in
OUT/bundle, the ROOT files are decoded once (the later trials read the decoded
cache), and trials run in parallel locally or on a Dask cluster.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from mlaas4hep.cli import main
from mlaas4hep.errors import ConfigError
from mlaas4hep.train.scan import scan
from mlaas4hep.train.scanspace import DEFAULT_SPACE, ScanSpace

pytest.importorskip("optuna")

SMALL_MODEL = """\
from torch import nn


def model(idim):
    return nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), nn.Linear(16, 1))
"""

SPACE = {
    "learning_rate": {"log_uniform": ["1e-4", 3.0e-2]},  # PyYAML reads 1e-4 as a string: accepted
    "batch_size": {"choice": [128, 512]},
    "metric": "val_auc",
}


@pytest.fixture
def scan_config(make_config, tmp_path):
    (tmp_path / "small.py").write_text(SMALL_MODEL)

    def make(**scan_section):
        cfg = make_config(tmp_path / "small.py", nevts=2000, cache=tmp_path / "cache", epochs=1)
        cfg["scan"] = {**SPACE, **scan_section}
        return cfg

    return make


def _check_scan(out, result_json, plots=True):
    trials = result_json["trials"]
    values = {t["number"]: t["value"] for t in trials}
    best = max(values, key=values.get)  # maximize val_auc
    assert result_json["best"] == best and result_json["best_value"] == values[best]
    for t in trials:
        saved = json.loads((out / "trials" / f"{t['number']:03d}" / "metrics.json").read_text())
        # the value recorded is the trial's own final val_auc, trained with the drawn values
        assert t["value"] == saved["val_auc"]
        assert saved["training"]["learning_rate"] == t["params"]["learning_rate"]
        assert saved["training"]["batch_size"] == t["params"]["batch_size"] in (128, 512)
        assert 1e-4 <= t["params"]["learning_rate"] <= 3e-2
    # the best trial's bundle is the scan's
    best_bundle = out / "trials" / f"{best:03d}" / "bundle"
    assert (out / "bundle" / "model.onnx").read_bytes() == (best_bundle / "model.onnx").read_bytes()
    if plots:
        assert (out / "scan.png").stat().st_size > 10_000 and (out / "roc.png").stat().st_size > 10_000
    return trials


def test_parallel_scan_reads_the_data_once_and_keeps_the_best(scan_config, tmp_path, capsys):
    cfg = scan_config()
    seen = []
    r = scan(cfg, tmp_path / "scan", trials=3, parallel=2, on_trial=lambda t: seen.append(t.number))
    out = tmp_path / "scan"
    saved = json.loads((out / "scan.json").read_text())
    trials = _check_scan(out, saved)
    assert len(trials) == 3 and all(t["state"] == "COMPLETE" for t in trials)
    assert seen[0] == 0  # the first trial runs alone ...
    assert trials[0]["sources"] == ["stream"]  # ... and decodes the ROOT files into the cache,
    assert [t["sources"] for t in trials[1:]] == [["cache"], ["cache"]]  # which the others read
    assert r.best is not None and r.best.number == saved["best"]
    # a second scan into the same directory would mix the trials: refused
    with pytest.raises(ConfigError, match="already holds a scan"):
        scan(cfg, out, trials=1)
    # two trials at a time share the cores: half of PyTorch's threads each
    for t in trials:
        saved = json.loads((out / "trials" / f"{t['number']:03d}" / "metrics.json").read_text())
        assert saved["training"]["threads"] == max(1, (os.cpu_count() or 1) // 2)
        assert sorted(t["params"]) == ["batch_size", "learning_rate"]


def test_scan_command_on_a_dask_cluster(scan_config, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    path = tmp_path / "scan.yaml"
    cfg = scan_config(sampler="random", seed=5)
    cfg["training"]["plots"] = False  # no PNGs of the trials, nor of the scan
    path.write_text(yaml.safe_dump(cfg))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        rc = main(
            [
                "scan",
                str(path),
                "--trials",
                "2",
                "--scheduler",
                cluster.scheduler_address,
                "-o",
                str(tmp_path / "s"),
            ]
        )
    printed = capsys.readouterr().out
    assert rc == 0
    saved = json.loads((tmp_path / "s" / "scan.json").read_text())
    trials = _check_scan(tmp_path / "s", saved, plots=False)
    assert len(trials) == 2 and not list((tmp_path / "s").glob("*.png"))
    # the table: one row per trial, the best marked, the values rounded
    best = saved["best"]
    assert f"{best} ★" in printed and f"{saved['best_value']:.4f}" in printed
    assert "learning_rate" in printed and "batch_size" in printed and "data" in printed
    assert f"best: trial {best}" in printed and str(tmp_path / "s" / "bundle") in printed


def test_default_space_and_minimized_loss():
    s = ScanSpace.parse({"metric": "val_loss"})
    assert [p.name for p in s.params] == list(DEFAULT_SPACE) and s.defaulted
    assert s.direction == "minimize" and s.better(0.1, 0.2)
    s = ScanSpace.parse(None)
    assert s.metric == "val_auc" and s.direction == "maximize"
    p = ScanSpace.parse({"epochs": {"log_int": [1, 8]}}).params[0]
    assert p.distribution().log and p.distribution().low == 1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"learnig_rate": [0.1]},
            "unknown key 'learnig_rate' in the scan section (did you mean 'learning_rate'?)",
        ),
        (
            {"learning_rate": {"loguniform": [1, 2]}},
            "unknown key 'loguniform' in scan.learning_rate (did you mean 'log_uniform'?)",
        ),
        (
            {"learning_rate": {"log_uniform": [0.1, 0.01]}},
            "scan.learning_rate.log_uniform must be [low, high] with low < high",
        ),
        ({"learning_rate": {"log_uniform": [0, 0.01]}}, "needs a positive low bound, got 0"),
        ({"metric": "auc"}, "scan.metric must be one of val_auc, val_loss, val_accuracy, got 'auc'"),
        ({"direction": "up"}, "scan.direction must be maximize or minimize, got 'up'"),
    ],
)
def test_scan_section_mistakes_are_named(section, message):
    with pytest.raises(ConfigError) as info:
        ScanSpace.parse(section)
    assert message in str(info.value)


def test_scan_typo_in_the_yaml_names_its_line(scan_config, tmp_path, capsys):
    cfg = scan_config()
    cfg["scan"] = {"batch_sise": [128, 256]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc = main(["scan", str(path), "--trials", "2", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    line = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if "batch_sise" in s)
    assert (
        f"bad.yaml, line {line}: unknown key 'batch_sise' in the scan section (did you mean 'batch_size'?)"
        in err
    )
