"""The demo's physics numbers: working points, the overtraining check, key input variables.

* :func:`working_points`: a network's signal efficiency at background
  efficiencies of 1% and 10%, and at the cut-based selection's background
  efficiency (the fair comparison with the cuts, which are a single point).
* :func:`overtraining` and :func:`performance` (from :mod:`mlaas4hep.train.evaluation`):
  the KS check of training vs validation scores, and the AUC and efficiencies
  with bootstrap uncertainties;
* :func:`expected_yields`: S, B and S/√B at 138 fb⁻¹ at each working point,
  from the cross sections :data:`XSEC_PB`.
* :func:`key_inputs`: reconstructed quantities from the raw ROOT branches, for
  signal and background: the invariant mass of the two jets with the highest
  b-tag score (m(bb), the Higgs peak near 125 GeV in ttH), HT (the scalar sum of
  the jets' pT), the number of b-tagged jets and the leading jet's pT.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from ..train.evaluation import BACKGROUND_EFFICIENCIES, overtraining, performance, training_scores, yields
from ..train.metrics import signal_efficiency_at

__all__ = [
    "BACKGROUND_EFFICIENCIES",
    "LUMINOSITY_FB",
    "XSEC_PB",
    "bb_mass",
    "expected_yields",
    "key_inputs",
    "mean_rate",
    "overtraining",
    "performance",
    "training_scores",
    "working_points",
]

#: Cross sections at 13 TeV (pb), for the expected yields: ttH with H → bb (σ(ttH) = 0.5071 pb,
#: BR(H → bb) = 0.5824, LHC Higgs WG) and tt̄ (833.9 pb, NNLO+NNLL). The toy samples carry no
#: trigger or preselection, so the yields are those of the full processes.
XSEC_PB = {"ttH": 0.5071 * 0.5824, "ttbar": 833.9}
#: The integrated luminosity of the yields: CMS Run 2, 138 fb⁻¹.
LUMINOSITY_FB = 138.0


def working_points(result, cuts_background: float | None = None) -> dict[str, float]:
    """``{"0.01": eff_S, "0.1": eff_S, "cuts": eff_S at the cuts' background efficiency}``."""
    y, s, w = result.val_labels == 1, np.asarray(result.val_scores).reshape(-1), result.val_weights
    out = {f"{b:g}": signal_efficiency_at(y, s, b, w) for b in BACKGROUND_EFFICIENCIES}
    if cuts_background is not None:
        out["cuts"] = signal_efficiency_at(y, s, cuts_background, w)
    return out


def expected_yields(perf: dict[str, Any], cuts: dict[str, Any] | None = None) -> dict[str, Any]:
    """S, B and S/√B at :data:`LUMINOSITY_FB` for each working point of ``perf``
    (:func:`~mlaas4hep.train.evaluation.performance`: ε_B fixed, ε_S with its
    bootstrap uncertainty) and, given ``cuts``, for the cut-based selection."""
    xs, xb = XSEC_PB["ttH"], XSEC_PB["ttbar"]
    out = {
        k: yields(perf["eff"][k], float(k), xs, xb, LUMINOSITY_FB, eff_s_unc=perf["eff_unc"][k])
        for k in perf["eff"]
    }
    if cuts is not None:
        out["cuts"] = yields(cuts["tpr"], cuts["fpr"], xs, xb, LUMINOSITY_FB)
    return out


def mean_rate(metrics: dict[str, Any]) -> float:
    """Training events/s averaged over the epochs of a run's ``metrics``."""
    rates = [e["events_per_s"] for e in metrics["epochs"]]
    return float(np.mean(rates)) if rates else 0.0


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
