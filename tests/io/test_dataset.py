"""The Dataset API against plain uproot: values, padding, masks, labels, event ids."""

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.io import Dataset

from ..conftest import sample_config

JAGGED = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB"]


def uproot_reference(files, flat, jagged, length, pad=0.0):
    """Plain uproot + awkward padding: the reference the issue asks us to equal."""
    cols, masks = [], []
    for f in files:
        arr = uproot.open(f)["Events"].arrays(flat + jagged, library="ak")
        fc, fm = [], []
        for b in flat:
            fc.append(ak.to_numpy(arr[b]).astype(np.float32)[:, None])
            fm.append(np.zeros((len(arr), 1), bool))
        for b in jagged:
            padded = ak.pad_none(arr[b], length, clip=True)
            fm.append(ak.to_numpy(ak.is_none(padded, axis=1)))
            fc.append(ak.to_numpy(ak.fill_none(padded, pad)).astype(np.float32))
        cols.append(np.hstack(fc))
        masks.append(np.hstack(fm))
    return np.vstack(cols), np.vstack(masks)


def test_to_numpy_equals_uproot(data_dir):
    ds = Dataset.from_config(sample_config(data_dir, shuffle=False, normalize="none", pad_value=-7.0))
    x, y = ds.to_numpy()
    files = [str(data_dir / n) for n in ("ttH_0.root", "ttH_1.root", "ttbar_0.root", "ttbar_1.root")]
    ref, ref_mask = uproot_reference(files, ["MET_pt", "nJet"], JAGGED, 6, pad=-7.0)
    assert x.shape == ref.shape == (80_000, 2 + 5 * 6)
    np.testing.assert_array_equal(x, ref)
    ch = ds.to_chunk()
    np.testing.assert_array_equal(ch.mask, ref_mask)
    np.testing.assert_array_equal(y, np.repeat([1, 0], 40_000))
    assert ds.feature_names[:4] == ["MET_pt", "nJet", "Jet_pt[0]", "Jet_pt[1]"]
    assert ds.feature_names[-1] == "Jet_btagDeepFlavB[5]"
    # event ids point back to (file, entry)
    assert ch.event_id[0].tolist() == [0, 0] and ch.event_id[-1].tolist() == [3, 19_999]


def test_jagged_length_from_specs_is_the_max_multiplicity(data_dir):
    cfg = sample_config(data_dir, shuffle=False, normalize="none", branches=["Jet_pt"], jagged={})
    ds = Dataset.from_config(cfg)
    njet = np.concatenate(
        [uproot.open(str(f))["Events"]["nJet"].array(library="np") for f in sorted(data_dir.glob("tt*.root"))]
    )
    assert ds.specs.max_length("Jet_pt") == njet.max()
    assert len(ds.feature_names) == njet.max()


def test_minmax_and_standard_normalisation(data_dir):
    raw = Dataset.from_config(sample_config(data_dir, shuffle=False, normalize="none"))
    mm = Dataset.from_config(sample_config(data_dir, shuffle=False, normalize="minmax"))
    st = Dataset.from_config(sample_config(data_dir, shuffle=False, normalize="standard"))
    x, chm = raw.to_numpy()[0], raw.to_chunk().mask
    xm, xs = mm.to_numpy()[0], st.to_numpy()[0]
    met = x[:, 0]
    np.testing.assert_allclose(xm[:, 0], (met - met.min()) / (met.max() - met.min()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xs[:, 0], (met - met.mean()) / met.std(), rtol=1e-4, atol=1e-5)
    # a jagged branch: constants come from all its values, padded slots hold pad_value
    cols = [i for i, n in enumerate(raw.feature_names) if n.startswith("Jet_pt[")]
    jet_pt = np.concatenate(
        [
            ak.to_numpy(ak.flatten(uproot.open(str(f))["Events"]["Jet_pt"].array()))
            for f in sorted(data_dir.glob("tt*.root"))
        ]
    )
    stats = raw.specs.stats["Jet_pt"]
    assert (stats.min, stats.max, stats.count) == (jet_pt.min(), jet_pt.max(), len(jet_pt))
    assert stats.mean == pytest.approx(jet_pt.astype(np.float64).mean(), rel=1e-9)
    assert stats.std == pytest.approx(jet_pt.astype(np.float64).std(), rel=1e-9)
    assert np.all(xm[:, cols][chm[:, cols]] == 0.0)
    assert xm[:, cols][~chm[:, cols]].min() >= 0.0 and xm[:, cols].max() <= 1.0


def test_selection_and_new_variables(data_dir):
    cfg = sample_config(
        data_dir,
        shuffle=False,
        normalize="none",
        branches=["MET_pt", "Jet_pt"],
        selection="nJet >= 5 and MET_pt > 30",
        new_variables={"HT": "sum(Jet_pt)", "nBtag": "count(Jet_btagDeepFlavB > 0.3)"},
    )
    ds = Dataset.from_config(cfg)
    x, _ = ds.to_numpy()
    arr = uproot.open(str(data_dir / "ttH_0.root"))["Events"].arrays(
        ["MET_pt", "nJet", "Jet_pt", "Jet_btagDeepFlavB"]
    )
    keep = (arr.nJet >= 5) & (arr.MET_pt > 30)
    sel = arr[keep]
    n0 = int(ak.sum(keep))
    assert ds.feature_names[:3] == ["MET_pt", "HT", "nBtag"]
    np.testing.assert_allclose(x[:n0, 1], ak.to_numpy(ak.sum(sel.Jet_pt, axis=1)), rtol=1e-5)
    np.testing.assert_array_equal(x[:n0, 2], ak.to_numpy(ak.sum(sel.Jet_btagDeepFlavB > 0.3, axis=1)))
    ch = ds.to_chunk()
    np.testing.assert_array_equal(ch.event_id[:n0, 1], np.flatnonzero(ak.to_numpy(keep)))
    assert ds.nevents == len(x)


def test_batches_cover_every_event_exactly_once_and_are_deterministic(data_dir, cache_dir):
    cfg = sample_config(data_dir, cache_dir, shuffle=True, chunk_size=2_000)
    ds = Dataset.from_config(cfg)
    ids = [b.event_id for b in ds.batches(batch_size=1000, epoch=0)]
    ids2 = [b.event_id for b in Dataset.from_config(cfg).batches(batch_size=1000, epoch=0)]
    all_ids = np.concatenate(ids)
    assert len(all_ids) == 80_000
    assert len(np.unique(all_ids[:, 0] * 1_000_000 + all_ids[:, 1])) == 80_000
    np.testing.assert_array_equal(all_ids, np.concatenate(ids2))
    ep1 = np.concatenate([b.event_id for b in ds.batches(batch_size=1000, epoch=1)])
    assert not np.array_equal(ep1, all_ids)  # a new order each epoch
    assert sorted(map(tuple, ep1.tolist())) == sorted(map(tuple, all_ids.tolist()))


def test_shuffled_batches_are_class_balanced(data_dir):
    # 40 single-file units of 2,000 events, pooled 16,000 at a time: every batch,
    # the last ones included, follows the dataset's 50/50 class mix, varying like
    # 256 independent draws (blocks of 4 rows): std sqrt(0.25 / 256) = 0.031
    cfg = sample_config(data_dir, shuffle=True, chunk_size=2_000, shuffle_buffer=16_000)
    ds = Dataset.from_config(cfg)
    fractions = np.array([b.y.mean() for b in ds.batches(batch_size=1024) if len(b.y) == 1024])
    assert len(fractions) == 80_000 // 1024
    assert abs(fractions.mean() - 0.5) < 0.01 and fractions.std() < 0.045
    assert fractions.min() > 0.35 and fractions.max() < 0.65
    assert 0.4 < fractions[-5:].mean() < 0.6


def test_workers_give_the_same_stream_as_inline(data_dir, cache_dir):
    inline = Dataset.from_config(sample_config(data_dir, None, shuffle=True, workers=0))
    pooled = Dataset.from_config(sample_config(data_dir, cache_dir, shuffle=True, workers=2))
    a = list(inline.batches(batch_size=4096))
    b = list(pooled.batches(batch_size=4096))
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        np.testing.assert_array_equal(ba.x, bb.x)
        np.testing.assert_array_equal(ba.event_id, bb.event_id)


def test_cached_epoch_equals_decoded_epoch(data_dir, cache_dir):
    ds = Dataset.from_config(sample_config(data_dir, cache_dir, shuffle=False))
    first = ds.to_chunk()
    assert ds.cache is not None and ds.cache.size() > 0
    n_files = len(list(ds.cache.root.iterdir()))
    second = Dataset.from_config(sample_config(data_dir, cache_dir, shuffle=False)).to_chunk()
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.mask, second.mask)
    assert len(list(ds.cache.root.iterdir())) == n_files == 16  # 4 files x 4 units


def test_cache_size_limit_is_respected(data_dir, cache_dir):
    ds = Dataset.from_config(sample_config(data_dir, cache_dir, shuffle=False, cache_max_gb=2e-3))
    x, _ = ds.to_numpy()
    assert len(x) == 80_000
    assert ds.cache.size() <= 2e-3 * 2**30


def test_nevts_limits_events_per_file(data_dir):
    ds = Dataset.from_config(sample_config(data_dir, shuffle=False, nevts=1234))
    x, _y = ds.to_numpy()
    assert len(x) == 4 * 1234


def test_sharding_is_disjoint_and_complete(data_dir):
    ds = Dataset.from_config(sample_config(data_dir, chunk_size=3_000))
    parts = [ds.units(epoch=3, rank=r, world=3) for r in range(3)]
    flat = [u for p in parts for u in p]
    assert sorted(flat) == sorted(ds.units(epoch=3))
    sizes = [sum(u.stop - u.start for u in p) for p in parts]
    assert max(sizes) - min(sizes) <= 3_000


def test_jagged_output_keeps_awkward_lists(data_dir):
    cfg = sample_config(data_dir, shuffle=False, normalize="minmax", branches=["MET_pt", "Jet_pt"])
    ds = Dataset.from_config(cfg)
    chunks = list(ds.jagged_chunks())
    assert sum(len(c) for c in chunks) == 80_000
    first = chunks[0]
    ref = uproot.open(str(data_dir / "ttH_0.root"))["Events"]["Jet_pt"].array(entry_stop=len(first))
    s = ds.specs.stats["Jet_pt"]
    expected = (ref - s.min) / (s.max - s.min)
    assert ak.all(ak.num(first.arrays["Jet_pt"]) == ak.num(ref))  # not padded, not clipped
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(first.arrays["Jet_pt"])), ak.to_numpy(ak.flatten(expected)), rtol=1e-6
    )
    assert first.y.tolist() == [1] * len(first) and first.event_id[0].tolist() == [0, 0]
