"""`mlaas4hep train` writes OUT/report.html: the demo's note for any binary classifier.

What a physicist relies on: the performance table quotes the AUC and the signal
efficiencies of the run with bootstrap uncertainties, the overtraining check
scores the training events again and gives KS p-values, the inputs that separate
the classes are shown per class, and every figure is a valid PNG in the page.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from mlaas4hep.train import train
from mlaas4hep.train.metrics import signal_efficiency_at

FIGURES = ["ROC curve", "Overtraining check", "Input variables", "Loss curves"]


def test_train_writes_the_report(make_config, tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    r = train(make_config("tth_mlp.py", nevts=3000, epochs=2), out, show_progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    perf, ot = saved["performance"], saved["overtraining"]
    # the central values are the run's own, recomputed from its validation scores
    assert perf["auc"] == saved["val_auc"]
    y, s = r.val_labels == 1, np.asarray(r.val_scores).reshape(-1)
    for b in ("0.01", "0.1"):
        assert perf["eff"][b] == signal_efficiency_at(y, s, float(b), r.val_weights)
        assert 0 < perf["eff_unc"][b] < 0.1
    assert 0.001 < perf["auc_unc"] < 0.05 and perf["bootstrap"] == 100
    # every training event was scored again (fewer than KS_EVENTS) for the KS test
    assert ot["training_events"] == saved["n_train"]
    for cls in ("signal", "background"):
        assert 0.0 <= ot[f"ks_p_{cls}"] <= 1.0 and 0.0 < ot[f"ks_d_{cls}"] < 1.0

    page = (out / "report.html").read_text()
    assert f"{perf['auc']:.3f} ± {perf['auc_unc']:.3f}" in page
    assert f"{100 * perf['eff']['0.1']:.1f}% ± {100 * perf['eff_unc']['0.1']:.1f}%" in page
    assert "KS p-value, signal (ttH)" in page and "KS p-value, background (ttbar)" in page
    assert f"{len(r.val_labels):,} validation events" in page
    blobs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in blobs] == FIGURES
    for alt, b64 in blobs:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert img.format == "PNG" and img.size[0] > 400, alt
    # the ROC figure has two panels: efficiency and log-scale rejection, side by side
    roc = Image.open(out / "plots" / "roc_rejection.png")
    assert roc.size[0] > 1.8 * roc.size[1]
    assert {p.name for p in r.plots} >= {"roc_rejection.png", "overtraining.png", "inputs.png", "report.html"}


def test_no_report_without_plots(make_config, tmp_path):
    out = tmp_path / "run"
    train(make_config("tth_mlp.py", nevts=1000, epochs=1, plots=False), out, show_progress=False)
    assert not (out / "report.html").exists()
    assert "performance" not in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("model", ["sklearn_sgd.py"])
def test_report_for_another_framework(make_config, tmp_path, model):
    out = tmp_path / "run"
    train(make_config(model, nevts=1000, epochs=1), out, show_progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["performance"]["auc"] == saved["val_auc"]
    assert (out / "report.html").exists()
