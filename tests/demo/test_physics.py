"""The physics helpers of the demo and the training plots, on inputs whose answer is known."""

import io
import math

import awkward as ak
import numpy as np
import pytest

from mlaas4hep.demo.physics import bb_mass
from mlaas4hep.demo.report import pct, pvalue, rate
from mlaas4hep.train.metrics import signal_efficiency_at
from mlaas4hep.train.plots import class_names, display_label, write_all


def test_signal_efficiency_at_matches_gaussians():
    """Signal N(1, 1) against background N(0, 1): at background efficiency b the cut is
    x > Φ⁻¹(1 - b) and the signal efficiency 1 - Φ(Φ⁻¹(1 - b) - 1)."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    n = 200_000
    y = np.r_[np.ones(n), np.zeros(n)]
    s = np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]
    for b in (0.01, 0.1, 0.5):
        want = 1 - norm.cdf(norm.ppf(1 - b) - 1)
        assert signal_efficiency_at(y, s, b) == pytest.approx(want, abs=0.01)
    assert signal_efficiency_at(y, s, 0.0) < 1e-3  # only the few signal events above every background one
    assert signal_efficiency_at(y, s, 1.0) == 1.0


def test_signal_efficiency_at_weights_and_ties():
    y = np.array([1, 1, 0, 0])
    # tied scores: one signal and one background pass together, so 50% background keeps 50% signal
    assert signal_efficiency_at(y, np.array([1.0, 0.0, 1.0, 0.0]), 0.5) == pytest.approx(0.5)
    # a background event of weight 3 scores above all signal: any cut that keeps
    # signal keeps 75% of the background
    s = np.array([0.9, 0.5, 0.95, 0.1])
    w = np.array([1.0, 1.0, 3.0, 1.0])
    assert signal_efficiency_at(y, s, 0.5, w) == 0.0
    assert signal_efficiency_at(y, s, 0.75, w) == 1.0
    assert signal_efficiency_at(y, s, 0.5) == 1.0  # unweighted, that event is half the background


def test_bb_mass_of_two_back_to_back_jets():
    """Two massless jets of pT 62.5 GeV at η = 0, back to back: m = 125 GeV. The third jet has a low b-tag."""
    pt = ak.Array([[62.5, 200.0, 62.5], [30.0]])
    eta = ak.Array([[0.0, 1.0, 0.0], [0.0]])
    phi = ak.Array([[0.0, 1.0, math.pi], [0.0]])
    mass = ak.zeros_like(pt)
    btag = ak.Array([[0.9, 0.1, 0.8], [0.9]])
    m = bb_mass(pt, eta, phi, mass, btag)
    assert m[0] == pytest.approx(125.0)
    assert np.isnan(m[1])  # one jet: no pair


def test_numbers_read_as_in_a_note():
    assert rate(69_059) == "69k events/s"
    assert rate(1_234_567) == "1.2M events/s"
    assert rate(5_230) == "5.2k events/s"
    assert rate(850) == "850 events/s"
    assert pct(0.6840) == "68.4%"
    assert pvalue(0.4321) == "0.43" and pvalue(0.0042) == "0.004" and pvalue(1e-9) == "< 0.001"


def test_training_plot_wording():
    assert display_label("ttH") == "ttH"
    assert display_label("ttbar") == r"t$\mathrm{\bar{t}}$"  # drawn as tt̄ by mathtext
    assert class_names(["ttbar", "ttH"]) == (r"t$\mathrm{\bar{t}}$ (background)", "ttH (signal)")


def test_training_plots_are_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    scores = np.clip(0.3 * y + rng.uniform(0, 0.7, 2000), 0, 1)
    history = [
        {"epoch": e, "train_loss": 0.6 - 0.05 * e, "val_loss": 0.62 - 0.04 * e, "val_auc": 0.7 + 0.02 * e}
        for e in range(3)
    ]
    paths = write_all(tmp_path, history, y, scores, None, ["ttbar", "ttH"])
    assert [p.name for p in paths] == ["loss.png", "roc.png", "scores.png"]
    for p in paths:
        img = Image.open(io.BytesIO(p.read_bytes()))
        img.verify()
        assert img.format == "PNG" and img.size[0] > 300


def test_training_plots_of_three_classes(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 900)
    p = rng.dirichlet(np.ones(3), 900)
    paths = write_all(tmp_path, [], y, p, None, ["ttbar", "ttH", "ttZ"])
    assert [q.name for q in paths] == ["roc.png", "scores.png"]
    assert all(q.read_bytes()[:4] == b"\x89PNG" for q in paths)
