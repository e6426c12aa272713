"""`tracking: mlflow` and `tracking: tensorboard`: a real run, read back with each tool's own reader.

What a physicist relies on: the MLflow run holds the configuration as parameters,
every epoch's loss, validation loss, AUC and events/s with the values of
metrics.json, the plots and a servable bundle as artifacts; TensorBoard's event
files hold the same scalars per epoch and the plots as images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mlaas4hep.errors import ConfigError
from mlaas4hep.train import train

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

EPOCH_KEYS = ("train_loss", "val_loss", "val_auc", "events_per_s")


def test_mlflow_run_holds_config_epochs_plots_and_bundle(make_config, tmp_path):
    import mlflow

    cfg = make_config("tth_mlp.py", nevts=4000, epochs=3, learning_rate=0.003)
    cfg["tracking"] = {"backend": "mlflow", "experiment": "tth-test", "run_name": "lr3"}
    out = tmp_path / "runs" / "tth"
    r = train(cfg, out, show_progress=False)
    saved = json.loads((out / "metrics.json").read_text())

    # the default store: mlflow.db and mlruns/ next to the output directory
    assert (tmp_path / "runs" / "mlflow.db").exists() and (tmp_path / "runs" / "mlruns").is_dir()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tth-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "lr3" and run.info.status == "FINISHED"
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run.info.run_id
    assert (
        r.tracking
        == f"MLflow run {run.info.run_id} (lr3) in experiment 'tth-test' at sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    )

    params = run.data.params
    assert params["training.learning_rate"] == "0.003"
    assert params["training.epochs"] == "3" and params["training.batch_size"] == "512"
    assert params["framework"] == "pytorch" and params["n_features"] == str(r.metrics["n_features"])
    assert json.loads(params["dataset.branches"]) == cfg["branches"]

    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1, 2], key
        assert [m.value for m in history] == pytest.approx([e[key] for e in saved["epochs"]], rel=1e-12)
    final = run.data.metrics
    assert final["final_val_auc"] == pytest.approx(saved["val_auc"], rel=1e-12)
    assert final["best_epoch"] == saved["best_epoch"]

    art = tmp_path / "artifacts"
    client.download_artifacts(run.info.run_id, "", str(art))
    assert sorted(p.name for p in (art / "plots").iterdir()) == sorted(
        p.name for p in (out / "plots").iterdir()
    )
    assert {"loss.png", "roc.png", "roc_rejection.png", "overtraining.png"} <= {
        p.name for p in (art / "plots").iterdir()
    }
    assert (art / "report.html").read_text() == (out / "report.html").read_text()
    assert sorted(p.name for p in (art / "bundle").iterdir()) == sorted(
        p.name for p in r.bundle_path.iterdir()
    )
    assert (art / "bundle" / "model.onnx").read_bytes() == (r.bundle_path / "model.onnx").read_bytes()
    assert json.loads((art / "metrics.json").read_text())["val_auc"] == saved["val_auc"]
    assert yaml.safe_load((art / "config.yaml").read_text())["training"]["learning_rate"] == 0.003

    # the downloaded bundle serves: same scores as the one on disk
    from mlaas4hep import bundle

    x = np.random.default_rng(0).random((5, r.metrics["n_features"]), dtype=np.float32)
    np.testing.assert_array_equal(
        bundle.load(art / "bundle").predict(x), bundle.load(r.bundle_path).predict(x)
    )


def test_mlflow_resume_continues_the_same_run(make_config, tmp_path):
    import mlflow

    cfg = make_config("tth_mlp.py", nevts=2000, epochs=3, plots=False)
    cfg["tracking"] = "mlflow"
    out = tmp_path / "tth"
    first = train(cfg, out, show_progress=False, callbacks=[lambda rec: rec["epoch"] == 0])
    assert first.interrupted
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tth_mlp").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_name == "tth"

    train(cfg, out, resume=True, show_progress=False)
    (run,) = client.search_runs([run.info.experiment_id])  # still one run
    assert run.info.status == "FINISHED"
    saved = json.loads((out / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1, 2]  # epoch 0 logged once
    assert [m.value for m in history] == pytest.approx([e["val_loss"] for e in saved["epochs"]], rel=1e-12)


def test_tensorboard_events_hold_the_epochs_and_plots(make_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("tth_mlp.py", nevts=4000, epochs=2)
    cfg["tracking"] = "tensorboard"
    out = tmp_path / "runs" / "tth"
    train(cfg, out, show_progress=False)
    saved = json.loads((out / "metrics.json").read_text())

    logdir = tmp_path / "runs" / "tensorboard" / "tth"
    ev = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    ev.Reload()
    tags = ev.Tags()
    for key in EPOCH_KEYS:
        scalars = ev.Scalars(key)
        assert [s.step for s in scalars] == [0, 1]
        # TensorBoard stores scalars as float32
        assert [s.value for s in scalars] == pytest.approx([e[key] for e in saved["epochs"]], rel=1e-6)
    assert ev.Scalars("final_val_auc")[0].value == pytest.approx(saved["val_auc"], rel=1e-6)
    assert sorted(tags["images"]) == sorted(f"plots/{p.stem}" for p in (out / "plots").glob("*.png"))
    assert "plots/roc_rejection" in tags["images"]
    roc = ev.Images("plots/roc")[0]
    assert roc.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and roc.width > 300
    assert "config.yaml/text_summary" in tags["tensors"]


def test_tracking_typo_is_a_config_error_before_any_read(make_config, tmp_path):
    cfg = make_config("tth_mlp.py")
    cfg["tracking"] = {"backend": "mlflow", "experimnt": "x"}
    with pytest.raises(
        ConfigError, match=r"unknown key 'experimnt' in the tracking section \(did you mean 'experiment'\?\)"
    ):
        train(cfg, tmp_path / "o", show_progress=False)
    cfg["tracking"] = "wandb"
    with pytest.raises(ConfigError, match=r"tracking\.backend must be mlflow or tensorboard, got 'wandb'$"):
        train(cfg, tmp_path / "o", show_progress=False)
    cfg["tracking"] = "mlfow"
    with pytest.raises(ConfigError, match=r"got 'mlfow' \(did you mean 'mlflow'\?\)"):
        train(cfg, tmp_path / "o", show_progress=False)
    assert not (tmp_path / "o").exists()
