"""The demo's physics numbers: working points, the overtraining check, key input variables.

* :func:`working_points`: a network's signal efficiency at background
  efficiencies of 1% and 10%, and at the cut-based selection's background
  efficiency (the fair comparison with the cuts, which are a single point).
* :func:`overtraining`: the network's scores on its *training* events against
  its *validation* events, per class. A network that learnt its training sample
  by heart scores it more confidently than unseen events; the two-sample
  Kolmogorov–Smirnov test quantifies the difference. A small p-value (say
  < 0.01) flags overtraining; with hundreds of thousands of events the test is
  very sensitive, so look at the plot as well.
* :func:`key_inputs`: reconstructed quantities from the raw ROOT branches, for
  signal and background: the invariant mass of the two jets with the highest
  b-tag score (m(bb), the Higgs peak near 125 GeV in ttH), HT (the scalar sum of
  the jets' pT), the number of b-tagged jets and the leading jet's pT.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from ..train.metrics import signal_efficiency_at

#: Background efficiencies at which the signal efficiency is quoted.
BACKGROUND_EFFICIENCIES = (0.01, 0.10)


def working_points(result, cuts_background: float | None = None) -> dict[str, float]:
    """``{"0.01": eff_S, "0.1": eff_S, "cuts": eff_S at the cuts' background efficiency}``."""
    y, s, w = result.val_labels == 1, np.asarray(result.val_scores).reshape(-1), result.val_weights
    out = {f"{b:g}": signal_efficiency_at(y, s, b, w) for b in BACKGROUND_EFFICIENCIES}
    if cuts_background is not None:
        out["cuts"] = signal_efficiency_at(y, s, cuts_background, w)
    return out


def mean_rate(metrics: dict[str, Any]) -> float:
    """Training events/s averaged over the epochs of a run's ``metrics``."""
    rates = [e["events_per_s"] for e in metrics["epochs"]]
    return float(np.mean(rates)) if rates else 0.0


def training_scores(result) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of the training events, from the trained network (dropout off).

    The streamed run reads its training rows back from the decoded cache (the
    rows it trained on, minus the validation events); the in-memory run holds them.
    """
    scores, labels = [], []
    for part in result.source.batches(0, 65_536):
        scores.append(np.asarray(result.backend.scores(part)).reshape(len(part), -1)[:, -1])
        labels.append(np.asarray(part.y))
    return np.concatenate(scores), np.concatenate(labels)


def overtraining(result) -> dict[str, Any]:
    """KS p-values of training vs validation scores, per class, and the scores for the plot."""
    from scipy.stats import ks_2samp

    train_s, train_y = training_scores(result)
    val_s, val_y = np.asarray(result.val_scores).reshape(-1), np.asarray(result.val_labels)
    out: dict[str, Any] = {"train": (train_s, train_y), "val": (val_s, val_y)}
    for cls, name in ((1, "signal"), (0, "background")):
        a, b = train_s[train_y == cls], val_s[val_y == cls]
        test = ks_2samp(a, b) if len(a) and len(b) else None
        out[f"ks_p_{name}"] = float(test.pvalue) if test is not None else float("nan")
        out[f"ks_d_{name}"] = float(test.statistic) if test is not None else float("nan")
    return out


def bb_mass(pt, eta, phi, mass, btag) -> np.ndarray:
    """Invariant mass (GeV) of the two jets with the highest b-tag score; NaN with fewer than 2 jets."""
    order = ak.argsort(btag, axis=1, ascending=False)[:, :2]
    pt, eta, phi, mass = pt[order], eta[order], phi[order], mass[order]
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    two = ak.num(pt, axis=1) == 2
    m2 = ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2 - ak.sum(py, axis=1) ** 2 - ak.sum(pz, axis=1) ** 2
    m = np.sqrt(np.maximum(ak.to_numpy(m2), 0.0))
    return np.where(ak.to_numpy(two), m, np.nan)


def key_inputs(files: list[str], btag_wp: float, max_events: int = 100_000) -> dict[str, np.ndarray]:
    """m(bb), HT, number of b-tagged jets and leading jet pT of the events of ``files``.

    Reads at most ``max_events`` in all (spread over the files) with uproot: enough
    for smooth histograms, and a second or two on a laptop.
    """
    import uproot

    per_file = max(1, max_events // max(len(files), 1))
    branches = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"]
    parts: list[dict[str, np.ndarray]] = []
    for f in files:
        with uproot.open(f) as fh:
            a = fh["Events"].arrays(branches, entry_stop=per_file, library="ak", how=dict)
        pt, btag = a["Jet_pt"], a["Jet_btagDeepFlavB"]
        parts.append(
            {
                "mbb": bb_mass(pt, a["Jet_eta"], a["Jet_phi"], a["Jet_mass"], btag),
                "ht": ak.to_numpy(ak.sum(pt, axis=1)),
                "nbtag": ak.to_numpy(ak.sum(btag > btag_wp, axis=1)),
                "lead_pt": ak.to_numpy(ak.fill_none(ak.firsts(ak.sort(pt, axis=1, ascending=False)), np.nan)),
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


#: How :func:`key_inputs`'s quantities are plotted: axis label (with unit), binning.
INPUT_AXES = {
    "mbb": ("m(bb) of the two highest b-tag jets [GeV]", np.linspace(0, 500, 51)),
    "ht": ("H$_T$ = Σ jet p$_T$ [GeV]", np.linspace(0, 1200, 41)),
    "nbtag": ("number of b-tagged jets (DeepFlavB medium)", np.arange(-0.5, 8.5, 1.0)),
    "lead_pt": ("leading jet p$_T$ [GeV]", np.linspace(0, 500, 41)),
}
