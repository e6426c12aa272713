"""The report's numbers on inputs whose answer is known: bootstrap uncertainties, yields, separation."""

from __future__ import annotations

import numpy as np
import pytest

from mlaas4hep.train.evaluation import ks_distance, ks_test, performance, yields
from mlaas4hep.train.metrics import roc_auc, signal_efficiency_at


def _gaussians(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n), np.zeros(n)]
    s = np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]
    return y, s


def test_bootstrap_auc_uncertainty_matches_hanley_mcneil():
    """Signal N(1, 1) vs background N(0, 1), 2000 events each: the bootstrap standard deviation of
    the AUC agrees with Hanley & McNeil's formula (Radiology 143 (1982) 29)."""
    n = 2000
    y, s = _gaussians(n)
    p = performance(y, s, n=200)
    a = roc_auc(y == 1, s)
    assert p["auc"] == a  # the central value is the AUC of the validation events
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley = np.sqrt((a * (1 - a) + (n - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (n * n))
    assert p["auc_unc"] == pytest.approx(hanley, rel=0.25)
    assert p["bootstrap"] == 200


def test_bootstrap_efficiency_uncertainty_is_about_binomial():
    n = 5000
    y, s = _gaussians(n, seed=4)
    p = performance(y, s, n=200)
    for b in (0.01, 0.1):
        eff = p["eff"][f"{b:g}"]
        assert eff == signal_efficiency_at(y == 1, s, b)
        binomial = np.sqrt(eff * (1 - eff) / n)
        # the cut's own uncertainty (the background quantile) adds to the binomial one
        assert binomial * 0.8 < p["eff_unc"][f"{b:g}"] < binomial * 3


def test_weighted_performance_uses_the_weights():
    y = np.array([1, 1, 0, 0] * 50)
    s = np.array([0.9, 0.5, 0.95, 0.1] * 50)
    w = np.array([1.0, 1.0, 3.0, 1.0] * 50)
    p = performance(y, s, w, n=20)
    assert p["auc"] == pytest.approx(roc_auc(y == 1, s, w))
    assert p["auc"] != pytest.approx(roc_auc(y == 1, s))


def test_yields_and_significance():
    r = yields(0.1, 0.01, 0.3, 800.0, 138.0, eff_s_unc=0.01)
    assert r["S"] == pytest.approx(0.3 * 138_000 * 0.1)  # σ [pb] × L [pb⁻¹] × ε
    assert r["B"] == pytest.approx(800.0 * 138_000 * 0.01)
    assert r["S_over_sqrt_B"] == pytest.approx(r["S"] / np.sqrt(r["B"]))
    assert r["S_unc"] == pytest.approx(0.3 * 138_000 * 0.01)
    assert r["S_over_sqrt_B_unc"] == pytest.approx(r["S_over_sqrt_B"] * 0.1)  # 10% on S, none on B


def test_ks_test_is_scipys_two_sample_test():
    """The distance is ks_2samp's exactly; the asymptotic p-value is within 3 % of its finite-sample
    one for p over 0.01 and 5 % down to 1e-4, at a report's sample sizes (n m / (n + m) over 800)."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(5)
    cases = [
        (32000, 8000, 0.0, 0.03),
        (20000, 5000, 0.03, 0.03),
        (10000, 2500, 0.09, 0.05),
        (4000, 1000, 0.12, 0.05),
    ]
    for n, m, shift, rel in cases:
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1.0, m)
        d, p = ks_test(a, b)
        ref = ks_2samp(a, b)
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert ref.pvalue > 1e-4 and p == pytest.approx(ref.pvalue, rel=rel), (n, m, shift)
    a, b = rng.normal(0, 1, 8000), rng.normal(0.3, 1.0, 2000)
    assert ks_test(a, b)[1] < 1e-20 and ks_2samp(a, b).pvalue < 1e-20  # both: the samples differ
    assert ks_distance(a, a) == 0.0 and ks_test(a, a)[1] == 1.0
    assert ks_distance(np.array([np.nan, np.inf, 1.0]), np.array([1.0])) == 0.0  # non-finite left out
    assert all(np.isnan(v) for v in ks_test(a, np.array([np.nan])))  # nothing to compare with


@pytest.mark.parametrize("decimals", [None, 2])  # distinct scores, and many ties
def test_bootstrap_resample_curve_is_roc_curve_bit_for_bit(decimals):
    """The bootstrap's counted ROC curve of a resample is the sorted one, exactly (same metrics.json)."""
    from mlaas4hep.train.evaluation import _Resampler
    from mlaas4hep.train.metrics import roc_curve

    rng = np.random.default_rng(7)
    y, s = _gaussians(3000, seed=5)
    s = s if decimals is None else np.round(s, decimals)
    counted = _Resampler(y == 1, s)
    for _ in range(5):
        i = rng.integers(0, len(y), len(y))
        for got, want in zip(counted.roc_curve(i), roc_curve(y[i] == 1, s[i])):
            np.testing.assert_array_equal(got, want)


def test_unit_weights_give_the_unweighted_numbers_exactly():
    """A run's validation weights are all 1 without a weight branch: the same bootstrap, bit for bit."""
    y, s = _gaussians(1000, seed=6)
    assert performance(y, np.round(s, 1), np.ones(len(y)), n=20) == performance(y, np.round(s, 1), n=20)
