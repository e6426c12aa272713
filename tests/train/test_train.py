"""End-to-end training per framework, streamed vs in-memory, ONNX parity, resume, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

import mlaas4hep
from mlaas4hep import bundle
from mlaas4hep.train import train
from mlaas4hep.train.cli import add_train_commands

from .conftest import MODELS, NEVTS, train_config


@pytest.fixture(scope="module")
def streamed_3_epochs(data_dir, shared_cache, tmp_path_factory):
    """``make_config("tth_mlp.py", epochs=3)`` trained streamed, once for the tests that read such a
    run (the module's first training: its epoch 0 decodes the files, later epochs read the cache)."""
    cfg = train_config(data_dir, shared_cache, "tth_mlp.py", epochs=3)
    return train(cfg, tmp_path_factory.mktemp("streamed-3") / "out", show_progress=False)


def _check_bundle(result, framework: str, native: str | None) -> None:
    b = result.bundle_path
    for name in ("model.onnx", "bundle.json", "labels.txt") + ((native,) if native else ()):
        assert (b / name).is_file(), name
    assert not list(b.glob("*.pkl")) and not list(b.glob("*.pickle"))
    meta = json.loads((b / "bundle.json").read_text())
    assert meta["framework"] == framework
    assert meta["producer"] == f"mlaas4hep {mlaas4hep.__version__}"  # the version that wrote it
    assert meta["outputs"]["labels"] == ["ttbar", "ttH"]
    assert meta["data_fingerprint"].startswith("sha256:")
    assert meta["metrics"]["onnx_parity"]["max_abs_diff"] <= meta["metrics"]["onnx_parity"]["tolerance"]
    assert len(meta["inputs"]["features"]) == 32
    # the predictor (preprocessing + ONNX) reproduces the native validation scores
    pred = bundle.load(b)
    x = result.source.val.x[:500]
    p = pred.predict(x)
    assert p.shape == (len(x), 1)
    assert np.abs(p[:, 0] - result.val_scores[:500]).max() <= meta["metrics"]["onnx_parity"]["tolerance"]
    assert ((p >= 0) & (p <= 1)).all()


def _check_metrics(result) -> None:
    m = json.loads((result.out_dir / "metrics.json").read_text())
    assert m["val_auc"] >= 0.7, m["val_auc"]
    for rec in m["epochs"]:
        assert {"train_loss", "val_loss", "val_auc", "events_per_s", "events"} <= set(rec)
    for name in ("loss.png", "roc.png", "scores.png"):
        assert (result.out_dir / "plots" / name).stat().st_size > 1000


def test_pytorch_streamed_end_to_end(streamed_3_epochs):
    r = streamed_3_epochs
    assert r.framework == "pytorch" and r.metrics["device"] == "cpu"
    _check_metrics(r)
    _check_bundle(r, "pytorch", "model.safetensors")
    src = [e["source"] for e in r.history]
    assert src[1:] == ["cache", "cache"], src  # epochs >= 1 read the decoded cache
    assert r.metrics["n_val"] == pytest.approx(0.2 * 4 * NEVTS, rel=0.05)
    assert len(r.val_scores) == len(r.val_labels) == r.metrics["n_val"]
    # predict_root on a raw file gives the same scores as the dataset path
    pred = bundle.load(r.bundle_path)
    first = next(pred.predict_root(r.dataset.urls[0], entry_stop=100))
    assert first["scores"].shape == (100, 1)


def test_streamed_and_in_memory_agree(make_config, tmp_path, streamed_3_epochs):
    cfg = make_config("tth_mlp.py", epochs=3)
    a = streamed_3_epochs
    b = train(cfg, tmp_path / "memory", in_memory=True, show_progress=False, overrides={"plots": False})
    assert b.history[0]["source"] == "memory"
    # the same validation events, whatever the path: the held-out rows (features and
    # labels) are equal as sets, row for row once both are put in the same order
    assert len(a.val_labels) == len(b.val_labels) > 0
    va, vb = a.source.val, b.source.val
    rows_a = np.column_stack([va.x, va.y])
    rows_b = np.column_stack([vb.x, vb.y])
    order_a, order_b = np.lexsort(rows_a.T[::-1]), np.lexsort(rows_b.T[::-1])
    np.testing.assert_array_equal(rows_a[order_a], rows_b[order_b])
    assert abs(a.metrics["val_auc"] - b.metrics["val_auc"]) < 0.01, (
        a.metrics["val_auc"],
        b.metrics["val_auc"],
    )


def test_resume_reaches_the_same_state(make_config, tmp_path, streamed_3_epochs):
    from safetensors.numpy import load_file

    cfg = make_config("tth_mlp.py", epochs=3, plots=False)
    full = streamed_3_epochs  # the same configuration, with plots: the same training

    stopped = train(cfg, tmp_path / "part", show_progress=False, callbacks=[lambda rec: rec["epoch"] == 0])
    assert stopped.interrupted and stopped.bundle_path is None
    state = json.loads((tmp_path / "part" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 0
    resumed = train(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert not resumed.interrupted
    assert [e["epoch"] for e in resumed.history] == [0, 1, 2]
    for x, y in zip(full.history, resumed.history):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-6)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-6)
    wa = load_file(str(full.bundle_path / "model.safetensors"))
    wb = load_file(str(resumed.bundle_path / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], atol=1e-6)
    # resuming a finished run changes nothing and still writes the bundle
    again = train(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert len(again.history) == 3 and again.bundle_path is not None


def test_resume_refuses_another_run(make_config, tmp_path):
    from mlaas4hep.train import TrainError

    train(
        make_config("tth_mlp.py", epochs=2, plots=False),
        tmp_path / "o",
        show_progress=False,
        callbacks=[lambda rec: True],
    )
    with pytest.raises(TrainError, match="another run"):
        train(
            make_config("mlp111.py", epochs=2, plots=False), tmp_path / "o", resume=True, show_progress=False
        )


def test_keras_end_to_end(make_config, tmp_path):
    r = train(make_config("keras_mlp.py", epochs=2), tmp_path / "out", show_progress=False)
    assert r.framework == "keras"
    _check_metrics(r)
    _check_bundle(r, "keras", "model.keras")


def test_sklearn_partial_fit_end_to_end(make_config, tmp_path):
    r = train(make_config("sklearn_sgd.py", epochs=2), tmp_path / "out", show_progress=False)
    assert r.framework == "sklearn"
    _check_metrics(r)
    _check_bundle(r, "sklearn", None)


def test_sklearn_accumulate_opt_in(make_config, tmp_path):
    model = tmp_path / "lr.py"
    model.write_text(
        "from sklearn.linear_model import LogisticRegression\n"
        "def model():\n    return LogisticRegression(max_iter=300)\n"
    )
    r = train(
        make_config(model, epochs=3, accumulate=True, plots=False), tmp_path / "out", show_progress=False
    )
    assert len(r.history) == 1 and r.metrics["val_auc"] >= 0.7


def test_xgboost_end_to_end(make_config, tmp_path):
    model = tmp_path / "bdt.py"
    model.write_text(
        "from xgboost import XGBClassifier\n"
        "def model():\n    return XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.3)\n"
    )
    r = train(make_config(model), tmp_path / "out", show_progress=False)
    assert r.framework == "xgboost"
    _check_metrics(r)
    _check_bundle(r, "xgboost", "model.json")
    json.loads((r.bundle_path / "model.json").read_text())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlaas4hep")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train(make_config, tmp_path, capsys):
    import torch

    cfg = make_config("tth_mlp.py", epochs=5, plots=False)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = torch.get_num_threads()
    try:
        args = ["train", str(path), "--out", str(tmp_path / "o"), "--epochs", "1", "--threads", "1"]
        assert _cli([*args, "--no-progress", "-q"]) == 0
        assert torch.get_num_threads() == 1  # training.threads reached PyTorch
    finally:
        torch.set_num_threads(before)
    assert "val AUC" in capsys.readouterr().out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["epochs_trained"] == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", True])
def test_training_threads_must_be_a_positive_integer(bad):
    from mlaas4hep.io.errors import ConfigError
    from mlaas4hep.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"training\.threads must be a positive integer"):
        TrainConfig(model="m.py", threads=bad)
    assert TrainConfig(model="m.py", threads=3).threads == 3


def test_cli_reports_bad_model(tmp_path, make_config, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def model(:\n")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(make_config(bad, cache=tmp_path / "c")))
    assert _cli(["train", str(path), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "syntax error" in capsys.readouterr().err


def test_workflow_trio(data_dir, shared_cache, tmp_path):
    (tmp_path / "files.txt").write_text(
        "\n".join(str(data_dir / f) for f in ("ttH_0.root", "ttbar_0.root", "ttH_1.root", "ttbar_1.root"))
        + "\n"
    )
    (tmp_path / "labels.txt").write_text("# one label per file\n1\n0\n1\n0\n")
    params = {
        "nevts": 5000,
        "chunk_size": 5000,
        "epochs": 2,
        "batch_size": 256,
        "shuffle": True,
        "branch": "Events",
        "identifier": "run,event,luminosityBlock",
        "selected_branches": ["MET_pt", "nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepFlavB"],
        "nan": 0,
        "verbose": 1,
        "training": "standard",
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "preproc.json").write_text(
        json.dumps(
            {
                "new_branch": {"HT": {"def": "sum(Jet_pt)", "type": "flat"}},
                "flat_cut": {"nJet": {"cut_1": ">= 2"}},
            }
        )
    )
    model = MODELS / "keras_mlp.py"
    rc = _cli(
        [
            "workflow",
            f"--files={tmp_path / 'files.txt'}",
            f"--labels={tmp_path / 'labels.txt'}",
            f"--model={model}",
            f"--params={tmp_path / 'params.json'}",
            f"--specs={tmp_path / 'specs.json'}",
            f"--preproc={tmp_path / 'preproc.json'}",
            f"--fout={tmp_path / 'out'}",
            f"--cache-dir={shared_cache}",
            "--no-progress",
            "-q",
        ]
    )
    assert rc == 0
    meta = json.loads((tmp_path / "out" / "bundle" / "bundle.json").read_text())
    assert meta["framework"] == "keras"
    assert "HT" in meta["inputs"]["features"]
    assert meta["inputs"]["preprocessing"]["selection"] == "(nJet >= 2)"
    assert (tmp_path / "specs.json").is_file()
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["epochs_trained"] == 2 and m["val_auc"] >= 0.7
    assert m["training"]["batch_size"] == 256


def test_preproc_mapping():
    from mlaas4hep.train.workflow import preproc_to_config

    out = preproc_to_config(
        {
            "new_branch": {"logpt": {"def": "log(Jet_pt)", "type": "jagged", "cut_1": "> 3"}},
            "flat_cut": {"nJet": {"cut_1": ">= 4", "cut_2": "< 12"}},
            "jagged_cut": {"Jet_pt": {"type": "any", "cut_1": "> 100"}},
        }
    )
    assert out["new_variables"] == {"logpt": "log(Jet_pt)"}
    assert out["selection"] == "all(logpt > 3) & (nJet >= 4) & (nJet < 12) & any(Jet_pt > 100)"


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_the_command_lets_openmp_threads_sleep_unless_told_otherwise(data_dir, given):
    """`mlaas4hep` sets OMP_WAIT_POLICY=PASSIVE before PyTorch loads; a value the user set wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import os, sys; from mlaas4hep.cli import main; "
        f"rc = main(['inspect', {str(data_dir / 'ttH_0.root')!r}]); "
        "print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == f"policy {given or 'PASSIVE'} False 0", out.stderr
