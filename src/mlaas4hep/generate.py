"""Synthetic ttH(→bb) and tt̄+jets samples in CMS NanoAOD layout.

The generator is a parametric *physics-motivated* toy, not a matrix-element
generator, but the features that separate the processes behave as in data:

* both processes hold a tt̄ pair: two b quarks from the tops, and per W either a
  lepton + neutrino (MET) or two light/charm quarks (semi-leptonic, di-leptonic
  and all-hadronic tt̄ branching fractions);
* ttH adds a Higgs boson decaying to bb̄: a two-body decay with m(bb) = 125 GeV,
  boosted with the Higgs pT;
* tt̄ gets tt̄+bb̄ (g → bb̄ with a falling mass spectrum) and tt̄+cc̄ admixtures,
  which mimic the signal; both processes get ISR jets;
* partons become jets through pT/η/φ resolution, the b-tagger (DeepFlavB)
  responds to the true flavour with realistic efficiencies and mistag rates,
  and only jets with pT > 25 GeV, |η| < 2.5 are kept.

So signal has more jets, more b-tags, a harder HT and a bb mass peak near
125 GeV, but overlaps the background: a good classifier reaches AUC ≈ 0.8, not 1.

Files are TTrees named ``Events``: flat branches (``run``, ``luminosityBlock``,
``event``, ``MET_pt`` ...) and NanoAOD collections (``nJet`` + ``Jet_pt`` ...).
The output is deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

COMPRESSION = {
    "zlib": lambda: uproot.ZLIB(4),
    "lz4": lambda: uproot.LZ4(4),
    "zstd": lambda: uproot.ZSTD(5),
    "lzma": lambda: uproot.LZMA(9),
    "none": lambda: None,
}
M_B = 4.8


def _four(pt, eta, phi, m):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)


def _to_ptetaphi(px, py, pz):
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / np.maximum(pt, 1e-9)), np.arctan2(py, px)


def two_body(rng: np.random.Generator, pt: Any, eta: Any, phi: Any, mass: Any) -> list[tuple[Any, Any, Any]]:
    """Decay parents of ``mass`` into two b quarks; returns two (pt, eta, phi)."""
    n = len(pt)
    px, py, pz, e = _four(pt, eta, phi, mass)
    pstar = np.sqrt(np.maximum(mass**2 / 4 - M_B**2, 1.0))
    cos, ph = rng.uniform(-1, 1, n), rng.uniform(-np.pi, np.pi, n)
    sin = np.sqrt(1 - cos**2)
    d = np.stack([pstar * sin * np.cos(ph), pstar * sin * np.sin(ph), pstar * cos])
    estar = np.sqrt(pstar**2 + M_B**2)
    b = np.stack([px, py, pz]) / e
    b2 = (b**2).sum(0)
    gamma = 1 / np.sqrt(1 - np.minimum(b2, 1 - 1e-12))
    out: list[tuple[Any, Any, Any]] = []
    for sign in (1, -1):
        p = sign * d
        bp = (b * p).sum(0)
        coef = (gamma - 1) * bp / np.maximum(b2, 1e-12) + gamma * estar
        lab = p + coef * b
        out.append(_to_ptetaphi(*lab))
    return out


class _Partons:
    """Flat lists of (event, pt, eta, phi, flavour) to be turned into jets."""

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in ("ev", "pt", "eta", "phi", "flav")}

    def add(self, ev: Any, pt: Any, eta: Any, phi: Any, flav: Any) -> None:
        for k, v in zip(self.cols, (ev, pt, eta, phi, np.broadcast_to(flav, np.shape(ev)))):
            self.cols[k].append(np.asarray(v))

    def arrays(self):
        return {k: np.concatenate(v) for k, v in self.cols.items()}


def generate_events(n: int, signal: bool, rng: np.random.Generator) -> dict[str, np.ndarray | ak.Array]:
    """Generate ``n`` events of ttH(bb) (``signal``) or tt̄+jets, as NanoAOD-like arrays."""
    ev = np.arange(n)
    P = _Partons()
    # top decays: two b quarks
    for _ in range(2):
        P.add(ev, rng.gamma(3.0, 25.0, n) + 10, rng.normal(0, 1.2, n), rng.uniform(-np.pi, np.pi, n), 5)
    # W decays: 0 = hadronic, 1 = leptonic; tt̄ branching fractions
    w_lep = rng.random((2, n)) < 0.33
    lep_ev, nu_px, nu_py = [], np.zeros(n), np.zeros(n)
    for w in range(2):
        had = ev[~w_lep[w]]
        for q in range(2):
            flav = np.where(rng.random(len(had)) < 0.5 * (q == 0), 4, 0)  # W -> cs half the time
            P.add(
                had,
                rng.gamma(2.5, 22.0, len(had)) + 8,
                rng.normal(0, 1.3, len(had)),
                rng.uniform(-np.pi, np.pi, len(had)),
                flav,
            )
        lep = ev[w_lep[w]]
        lep_ev.append(lep)
        nupt, nuphi = rng.gamma(2.5, 18.0, len(lep)), rng.uniform(-np.pi, np.pi, len(lep))
        nu_px[lep] += nupt * np.cos(nuphi)
        nu_py[lep] += nupt * np.sin(nuphi)
    # the extra b pair: H -> bb (signal) or g -> bb in a tt̄+bb fraction (background)
    if signal:
        pair = ev
        mass = np.full(n, 125.0)
        ppt = rng.gamma(2.2, 55.0, n)
    else:
        pair = ev[rng.random(n) < 0.15]
        mass = 12.0 + rng.gamma(1.6, 38.0, len(pair))
        ppt = rng.gamma(1.8, 55.0, len(pair))
    (b1, b2) = two_body(rng, ppt, rng.normal(0, 1.1, len(pair)), rng.uniform(-np.pi, np.pi, len(pair)), mass)
    for b in (b1, b2):
        P.add(pair, *b, 5)
    if not signal:  # tt̄ + cc̄
        cc = ev[rng.random(n) < 0.12]
        for _ in range(2):
            P.add(
                cc,
                rng.gamma(1.8, 25.0, len(cc)) + 10,
                rng.normal(0, 1.4, len(cc)),
                rng.uniform(-np.pi, np.pi, len(cc)),
                4,
            )
    # initial-state radiation
    n_isr = rng.poisson(1.3, n)
    isr = np.repeat(ev, n_isr)
    P.add(
        isr,
        22 + rng.exponential(35.0, len(isr)),
        rng.normal(0, 1.8, len(isr)),
        rng.uniform(-np.pi, np.pi, len(isr)),
        np.where(rng.random(len(isr)) < 0.04, 5, 0),
    )

    jets = _jets(P.arrays(), n, rng)
    out: dict[str, object] = {}
    out.update(_leptons(np.concatenate(lep_ev), n, rng))
    npv = rng.poisson(32, n)
    jet_px = ak.sum(jets["pt"] * np.cos(jets["phi"]), axis=1)
    jet_py = ak.sum(jets["pt"] * np.sin(jets["phi"]), axis=1)
    met_x = nu_px + rng.normal(0, 12 + 0.4 * np.sqrt(npv), n) - 0.03 * ak.to_numpy(jet_px)
    met_y = nu_py + rng.normal(0, 12 + 0.4 * np.sqrt(npv), n) - 0.03 * ak.to_numpy(jet_py)
    flat = {
        "MET_pt": np.hypot(met_x, met_y).astype(np.float32),
        "MET_phi": np.arctan2(met_y, met_x).astype(np.float32),
        "MET_sumEt": (ak.to_numpy(ak.sum(jets["pt"], axis=1)) + rng.gamma(6, 60, n)).astype(np.float32),
        "PV_npvs": npv.astype(np.int32),
        "fixedGridRhoFastjet": np.clip(0.55 * npv + rng.normal(0, 2.5, n), 0, None).astype(np.float32),
        "genWeight": np.where(rng.random(n) < 0.02, -1.0, 1.0).astype(np.float32),
        "Flag_goodVertices": rng.random(n) > 0.002,
    }
    return {**flat, "Jet": jets, **out}


def _jets(p: dict[str, np.ndarray], n: int, rng) -> ak.Array:
    m = len(p["pt"])
    pt = p["pt"] * np.clip(rng.normal(1.0, 0.12, m), 0.5, None) + rng.normal(0, 4.0, m)
    eta = p["eta"] + rng.normal(0, 0.03, m)
    phi = np.mod(p["phi"] + rng.normal(0, 0.03, m) + np.pi, 2 * np.pi) - np.pi
    keep = (pt > 25) & (np.abs(eta) < 2.5)
    flav = p["flav"][keep]
    ev, pt, eta, phi = p["ev"][keep], pt[keep], eta[keep], phi[keep]
    order = np.lexsort((-pt, ev))
    ev, pt, eta, phi, flav = ev[order], pt[order], eta[order], phi[order], flav[order]
    k = len(pt)
    # DeepFlavB-like response: at the medium working point (0.2783) about 77% of b jets,
    # 18% of c jets and 0.9% of light jets are tagged
    btag = np.where(
        flav == 5, rng.beta(1.0, 0.8, k), np.where(flav == 4, rng.beta(0.7, 4.0, k), rng.beta(0.4, 10.0, k))
    )
    cvl = np.where(flav == 4, rng.beta(3.0, 2.0, k), rng.beta(1.2, 4.0, k))
    qgl = np.where(flav == 0, rng.beta(1.4, 1.4, k), rng.beta(3.0, 1.5, k))
    fields = {
        "pt": pt.astype(np.float32),
        "eta": eta.astype(np.float32),
        "phi": phi.astype(np.float32),
        "mass": (pt * rng.uniform(0.06, 0.2, k)).astype(np.float32),
        "btagDeepFlavB": btag.astype(np.float32),
        "btagDeepFlavCvL": cvl.astype(np.float32),
        "qgl": qgl.astype(np.float32),
        "nConstituents": (rng.poisson(8 + pt / 8)).astype(np.uint8),
        "hadronFlavour": flav.astype(np.int32),
    }
    counts = np.bincount(ev, minlength=n)
    return ak.unflatten(ak.zip(fields), counts)


def _leptons(ev: np.ndarray, n: int, rng) -> dict[str, ak.Array]:
    # fakes / leptons from b decays on top of the W leptons
    extra = np.repeat(np.arange(n), rng.poisson(0.08, n))
    ev = np.concatenate([ev, extra])
    m = len(ev)
    pt = np.concatenate([rng.gamma(2.2, 22.0, m - len(extra)) + 8, rng.exponential(8.0, len(extra)) + 5])
    eta = rng.normal(0, 1.1, m)
    phi = rng.uniform(-np.pi, np.pi, m)
    charge = rng.choice(np.array([-1, 1], np.int32), m)
    is_mu = rng.random(m) < 0.5
    iso = np.concatenate([rng.exponential(0.04, m - len(extra)), rng.exponential(0.4, len(extra))])
    keep = (pt > 10) & (np.abs(eta) < 2.4)
    out = {}
    for name, sel in (("Muon", is_mu & keep), ("Electron", ~is_mu & keep)):
        e = ev[sel]
        order = np.lexsort((-pt[sel], e))
        fields = {
            "pt": pt[sel][order].astype(np.float32),
            "eta": eta[sel][order].astype(np.float32),
            "phi": phi[sel][order].astype(np.float32),
            "charge": charge[sel][order],
        }
        if name == "Muon":
            fields["pfRelIso04_all"] = iso[sel][order].astype(np.float32)
            fields["tightId"] = iso[sel][order] < 0.15
        else:
            fields["pfRelIso03_all"] = iso[sel][order].astype(np.float32)
            fields["cutBased"] = np.clip(4 - (iso[sel][order] / 0.05).astype(int), 0, 4).astype(np.uint8)
        out[name] = ak.unflatten(ak.zip(fields), np.bincount(e[order], minlength=n))
    return out


def write_sample(
    path: str | os.PathLike,
    n: int,
    signal: bool,
    seed: int,
    first_event: int = 1,
    run: int = 1,
    compression: str = "zlib",
    basket: int = 100_000,
) -> int:
    """Write one file of ``n`` events as a TTree ``Events``; returns ``n``."""
    if compression not in COMPRESSION:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION)}, got {compression!r}")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with uproot.recreate(tmp, compression=COMPRESSION[compression]()) as f:
        tree = None
        for start in range(0, max(n, 1), basket):
            m = min(basket, n - start)
            if m <= 0:
                break
            data = generate_events(m, signal, rng)
            ids = np.arange(first_event + start, first_event + start + m, dtype=np.uint64)
            chunk = {
                "run": np.full(m, run, np.uint32),
                "luminosityBlock": (1 + (ids - 1) // 1000).astype(np.uint32),
                "event": ids,
                **data,
            }
            if tree is None:
                types = {
                    k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in chunk.items()
                }
                tree = f.mktree(
                    "Events",
                    types,
                    counter_name=lambda counted: "n" + counted,
                    field_name=lambda outer, inner: f"{outer}_{inner}",
                    title="Events",
                )
            tree.extend(chunk)
    os.replace(tmp, path)
    return n


def generate(
    out: str | os.PathLike,
    events: int = 100_000,
    files: int = 1,
    seed: int = 42,
    compression: str = "zlib",
    show_progress: bool | None = None,
) -> list[Path]:
    """Write ``files`` signal (``ttH_{i}.root``) and background (``ttbar_{i}.root``) files."""
    from . import progress

    out = Path(out)
    written = []
    with progress.bar("generate", 2 * files * events, show=show_progress) as bar:
        for i in range(files):
            for name, signal, run in (("ttH", True, 2), ("ttbar", False, 1)):
                p = out / f"{name}_{i}.root"
                file_seed = int(np.random.SeedSequence([seed, int(signal), i]).generate_state(1)[0])
                write_sample(
                    p, events, signal, file_seed, first_event=1 + i * events, run=run, compression=compression
                )
                written.append(p)
                bar.advance(events)
    return written
