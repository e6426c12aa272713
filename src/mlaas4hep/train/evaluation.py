"""How good a trained binary classifier is, as a physics note quotes it: with uncertainties.

* :func:`performance`: the validation AUC and the signal efficiency at fixed
  background efficiencies (1% and 10%), each with its bootstrap uncertainty:
  the validation events are resampled with replacement (``n`` times, with their
  weights) and the standard deviation of the resampled values is quoted.
* :func:`overtraining`: the network's scores on its *training* events against
  its *validation* events, per class. A network that learnt its training sample
  by heart scores it more confidently than unseen events; the two-sample
  Kolmogorov–Smirnov test quantifies the difference (:func:`ks_test`). A small
  p-value (say < 0.01) flags overtraining; with hundreds of thousands of events
  the test is very sensitive, so look at the plot as well.
* :func:`yields`: the expected signal and background events after a cut,
  ``S = σ_S L ε_S`` and ``B = σ_B L ε_B``, and ``S/√B``.

The training report (:mod:`.report`) and the demo's report use them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import efficiency_on_curve, roc_curve

#: Background efficiencies at which the signal efficiency is quoted.
BACKGROUND_EFFICIENCIES = (0.01, 0.10)
#: Bootstrap resamples of the validation events.
BOOTSTRAP = 100


def _curve_numbers(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, bkg: tuple[float, ...]) -> list[float]:
    fpr, tpr = roc_curve(y, s, w)
    return [float(np.trapezoid(tpr, fpr)), *(efficiency_on_curve(fpr, tpr, b) for b in bkg)]


class _Resampler:
    """:func:`.metrics.roc_curve` of bootstrap resamples of unweighted events, without sorting each one.

    A resample ``i`` (indices drawn with replacement) holds event ``k`` ``c[k]``
    times. On the events sorted by score once, its cumulated signal and
    background counts at each distinct score are cumulated sums of ``c``: O(n)
    instead of a sort. The counts are whole numbers, exact in float64, so the
    curve is the one ``roc_curve(y[i], s[i])`` returns, bit for bit (finite scores).
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        self.order = np.argsort(-s, kind="mergesort")
        self.s, self.y = s[self.order], y[self.order]

    def roc_curve(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.bincount(i, minlength=len(self.s))[self.order].astype(np.float64)
        kept = c > 0
        s = self.s[kept]
        tp, fp = np.cumsum(c[kept] * self.y[kept]), np.cumsum(c[kept] * ~self.y[kept])
        last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
        return np.r_[0.0, fp[last] / max(fp[-1], 1e-12)], np.r_[0.0, tp[last] / max(tp[-1], 1e-12)]


def performance(
    y: np.ndarray,
    scores: np.ndarray,
    w: np.ndarray | None = None,
    background_efficiencies: tuple[float, ...] = BACKGROUND_EFFICIENCIES,
    n: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"auc": a, "auc_unc": σ, "eff": {"0.01": ε, ...}, "eff_unc": {"0.01": σ, ...}}``.

    ``y`` are the labels (1 = signal), ``scores`` the probability of the signal.
    """
    y = np.asarray(y).reshape(-1) == 1
    s = np.asarray(scores, np.float64).reshape(len(y), -1)[:, -1]
    w = None if w is None else np.asarray(w, np.float64).reshape(-1)
    bkg = tuple(background_efficiencies)
    central = _curve_numbers(y, s, w, bkg)
    rng = np.random.default_rng(seed)
    samples = []
    # unweighted (no weights, or all 1): a resample's ROC curve from its event counts
    unweighted = w is None or bool(np.all(w == 1.0))
    counted = _Resampler(y, s) if unweighted and np.isfinite(s).all() else None
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        if counted is not None:
            fpr, tpr = counted.roc_curve(i)
            samples.append([float(np.trapezoid(tpr, fpr)), *(efficiency_on_curve(fpr, tpr, b) for b in bkg)])
        else:
            samples.append(_curve_numbers(y[i], s[i], None if w is None else w[i], bkg))
    unc = np.std(np.asarray(samples), axis=0, ddof=1) if len(samples) > 1 else np.full(len(central), np.nan)
    keys = [f"{b:g}" for b in bkg]
    return {
        "auc": central[0],
        "auc_unc": float(unc[0]),
        "eff": dict(zip(keys, central[1:])),
        "eff_unc": {k: float(u) for k, u in zip(keys, unc[1:])},
        "bootstrap": len(samples),
    }


def training_scores(result: Any, max_events: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores (of the signal) and labels of the training events, from the trained network.

    The streamed run reads its training rows back from the decoded cache (the
    rows it trained on, minus the validation events); the in-memory run holds
    them. ``max_events`` stops early (the KS test needs a sample, not all).
    """
    scores, labels, seen = [], [], 0
    for part in result.source.batches(0, 65_536):
        scores.append(np.asarray(result.backend.scores(part)).reshape(len(part), -1)[:, -1])
        labels.append(np.asarray(part.y))
        seen += len(part)
        if max_events is not None and seen >= max_events:
            break
    return np.concatenate(scores), np.concatenate(labels)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Kolmogorov–Smirnov distance between two samples (0: alike, 1: disjoint), non-finite values left out."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return 0.0
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))
        )
    )


def ks_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov–Smirnov test: (distance, p-value); NaN for an empty sample.

    The p-value is the asymptotic Kolmogorov distribution at ``D √(n m / (n + m))``,
    as ROOT's ``TMath::KolmogorovProb`` gives it (``scipy.special.kolmogorov``).
    Against ``scipy.stats.ks_2samp``'s finite-sample p-value, once ``n m / (n + m)``
    is over 800 (a few thousand events): within 3 % for p-values over 0.01 (1.5 %
    over 2,000) and 5 % down to 10⁻⁴; further apart for tiny p-values (40 % at
    10⁻³⁰, where both say the samples differ) and for small samples (5 % at 200).
    It needs no ``scipy.stats``, whose import takes about 2 s: a sixth of a short
    training run. Infinities are left out with the NaNs.
    """
    from scipy.special import kolmogorov

    n, m = int(np.isfinite(a).sum()), int(np.isfinite(b).sum())
    if not n or not m:
        return float("nan"), float("nan")
    d = ks_distance(a, b)
    return d, float(kolmogorov(d * np.sqrt(n * m / (n + m))))


def overtraining(result: Any, max_events: int | None = None) -> dict[str, Any]:
    """KS p-values and distances of training vs validation scores, per class (:func:`ks_test`),
    and the scores for the plot (``train``, ``val``: (scores, labels))."""
    train_s, train_y = training_scores(result, max_events)
    val = np.asarray(result.val_scores)
    val_s, val_y = val.reshape(len(val), -1)[:, -1], np.asarray(result.val_labels)
    out: dict[str, Any] = {"train": (train_s, train_y), "val": (val_s, val_y)}
    for cls, name in ((1, "signal"), (0, "background")):
        d, p = ks_test(train_s[train_y == cls], val_s[val_y == cls])
        out[f"ks_p_{name}"], out[f"ks_d_{name}"] = p, d
    return out


def ks_verdict(ot: dict[str, float]) -> str:
    """One sentence a physicist would write about the KS p-values."""
    worst = min(ot["ks_p_signal"], ot["ks_p_background"])
    if worst >= 0.01:
        return "training and validation scores agree: no sign of overtraining"
    return (
        "the KS test distinguishes training from validation scores (p < 0.01): "
        "compare the shapes; with this many events a tiny shift is significant"
    )


def yields(
    eff_s: float,
    eff_b: float,
    xsec_s_pb: float,
    xsec_b_pb: float,
    lumi_fb: float,
    eff_s_unc: float = 0.0,
    eff_b_unc: float = 0.0,
) -> dict[str, float]:
    """Expected events after a cut of efficiencies ``eff_s``, ``eff_b`` at ``lumi_fb``
    (fb⁻¹) for cross sections in pb (after any preselection), and S/√B."""
    lumi_pb = 1000.0 * lumi_fb
    s, b = xsec_s_pb * lumi_pb * eff_s, xsec_b_pb * lumi_pb * eff_b
    s_unc, b_unc = xsec_s_pb * lumi_pb * eff_s_unc, xsec_b_pb * lumi_pb * eff_b_unc
    z = s / np.sqrt(b) if b > 0 else float("inf")
    # propagated: d(S/√B) = S/√B · sqrt((σS/S)² + (σB/2B)²)
    z_unc = z * np.hypot(s_unc / s if s > 0 else 0.0, b_unc / (2 * b) if b > 0 else 0.0)
    return {
        "S": s,
        "S_unc": s_unc,
        "B": b,
        "B_unc": b_unc,
        "S_over_sqrt_B": float(z),
        "S_over_sqrt_B_unc": float(z_unc),
    }
