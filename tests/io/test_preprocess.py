"""Padding of jagged branches: shared gather plans never mix collections."""

import awkward as ak
import numpy as np
import pytest

from mlaas4hep.io.preprocess import PadPlans, pad_jagged


def _reference(values, length):
    padded = ak.pad_none(values, length, clip=True, axis=1)
    pad = ak.to_numpy(ak.is_none(padded, axis=1))
    return ak.to_numpy(ak.fill_none(padded, 0.0)).astype(np.float32), np.asarray(pad, bool)


def test_branches_share_plans_only_when_their_lists_are_equal():
    rng = np.random.default_rng(3)
    n = 500
    jets = rng.poisson(4, n)
    muons = rng.poisson(1, n)
    same_total = rng.permutation(jets)  # same number of values as the jets, other lists

    def lists(counts, scale):
        return ak.unflatten((rng.normal(size=counts.sum()) * scale).astype(np.float32), counts)

    branches = [
        (lists(jets, 100), 6),  # Jet_pt
        (lists(jets, 2), 6),  # Jet_eta: the jets' plan reused
        (lists(jets, 1), 3),  # another length: a new plan
        (lists(muons, 50), 6),  # Muon_pt: other lists
        (lists(same_total, 1), 6),  # the jets' total, other lists
        (lists(jets, 1)[::-1], 6),  # a ListArray: the lists in another order
    ]
    plans = PadPlans()
    for values, length in branches:
        got, got_pad = pad_jagged(values, length, "x", plans)
        want, want_pad = _reference(values, length)
        assert np.array_equal(got_pad, want_pad)
        assert np.array_equal(np.where(got_pad, 0, got), want)


@pytest.mark.parametrize("length", [0, 1, 8])
def test_empty_lists_and_lengths(length):
    values = ak.Array([[], [], []], with_name=None)
    values = ak.values_astype(values, np.float32)
    got, pad = pad_jagged(values, length, "x", PadPlans())
    assert got.shape == (3, length) and pad.all()
