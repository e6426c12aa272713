"""The first-use layout against uproot: raw units scattered into x, laid out at the specs' widths.

Every value is compared exactly with ``uproot`` + ``awkward`` padding (``ak.pad_none`` then
``ak.fill_none``), on the generated sample, on real CMS NanoAOD, and on lists that are
clipped, empty or not contiguous in their content.
"""

import os
import threading

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.io import Dataset, firstuse, rawunit
from mlaas4hep.io.chunk import Chunk, ChunkStore, Unit, WriteBehind, wait_for_writers
from mlaas4hep.io.passes import stats_and_raw
from mlaas4hep.io.preprocess import PadPlans, pad_jagged
from mlaas4hep.io.scatter import ScatterPlans

from ..conftest import sample_config

JET = ["Jet_pt", "Jet_eta", "Jet_phi"]


def uproot_padded(path, branches, length, pad, entries=None):
    """``(x, mask)`` of ``branches`` padded to ``length`` by awkward, as float32."""
    arrays = uproot.open(path)["Events"].arrays(branches, entry_stop=entries)
    cols, masks = [], []
    for b in branches:
        padded = ak.pad_none(arrays[b], length, clip=True, axis=1)
        masks.append(ak.to_numpy(ak.is_none(padded, axis=1)))
        cols.append(ak.to_numpy(ak.fill_none(padded, pad)).astype(np.float32))
    return np.hstack(cols), np.hstack(masks)


@pytest.mark.parametrize(
    "executor, workers",
    [("local", 0), ("processes", 2), ("local", 2)],
    ids=["inline", "processes", "threads"],
)
@pytest.mark.parametrize("jagged", [{}, {"Jet": 3}], ids=["lengths from the specs", "lengths given, clipped"])
def test_first_use_equals_uproot_padding(data_dir, tmp_path, jagged, executor, workers):
    """No normalisation, no shuffling: epoch 0 of a first use is uproot's padding, bit for bit."""
    path = data_dir / "ttH_0.root"
    cfg = sample_config(data_dir, tmp_path, branches=JET, jagged=jagged, normalize="none", shuffle=False)
    cfg.update(files=[{"path": str(path), "label": 1}], pad_value=-7.0, workers=workers, chunk_size=3000)
    cfg.update(executor=executor)
    ds = Dataset.from_config(cfg)
    length = jagged.get("Jet") or int(uproot.open(path)["Events"]["nJet"].array(library="np").max())
    chunks = list(ds.chunks(0))
    x = np.concatenate([np.asarray(c.x) for c in chunks])
    mask = np.concatenate([np.asarray(c.mask) for c in chunks])
    want_x, want_mask = uproot_padded(path, JET, length, -7.0)
    assert ds.feature_names[:2] == ["Jet_pt[0]", "Jet_pt[1]"] and x.shape == want_x.shape
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(mask, want_mask)


def test_first_use_equals_uproot_padding_on_nanoaod(data_dir, tmp_path):
    """Real CMSSW NanoAOD (its own baskets and types: Muon_charge is an int, Muon_tightId a bool)."""
    path = data_dir / "nano_dimuon.root"
    if not path.exists():
        pytest.skip("the shared NanoAOD files are not here")
    branches = ["Muon_pt", "Muon_charge", "Muon_tightId"]
    cfg = sample_config(data_dir, tmp_path, branches=branches, jagged={}, normalize="none", shuffle=False)
    cfg.update(files=[{"path": str(path), "label": 1}], chunk_size=1000)
    ds = Dataset.from_config(cfg)
    length = int(uproot.open(path)["Events"]["nMuon"].array(library="np").max())
    x = np.concatenate([np.asarray(c.x) for c in ds.chunks(0)])
    mask = np.concatenate([np.asarray(c.mask) for c in ds.chunks(0)])  # epoch 0 again: from the cache
    want_x, want_mask = uproot_padded(path, branches, length, 0.0)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.parametrize("width", [0, 1, 2, 4])
def test_scatter_plans_place_every_value_as_padding_does(width):
    """Lists not contiguous in their content (an awkward ListArray), empty and clipped ones."""
    content = np.arange(1, 21, dtype=np.float64) * 1.5
    starts = np.array([10, 0, 3, 3, 17, 12])
    stops = np.array([13, 0, 7, 4, 20, 12])
    lists = ak.Array(
        ak.contents.ListArray(
            ak.index.Index64(starts), ak.index.Index64(stops), ak.contents.NumpyArray(content)
        )
    )
    want, pad = pad_jagged(lists, width, "J", PadPlans())
    row = width + 2  # the branch sits among other columns
    x = np.zeros((len(starts), row), np.float32)
    src, dst = ScatterPlans().plan(starts, stops, width, row)
    assert src is not None  # not contiguous: the values are gathered first
    x.reshape(-1)[1:][dst] = content[src] if src is not None else content[: len(dst)]
    got = x[:, 1 : 1 + width]
    np.testing.assert_array_equal(np.where(pad, 0, got), np.where(pad, 0, want))


def test_a_unit_the_calling_process_decodes_while_workers_start_stays_in_memory(data_dir, tmp_path):
    """``HereOr``: memory in the process it names (no disk write), the raw store anywhere else."""
    cfg = sample_config(data_dir, tmp_path, jagged={}, normalize="minmax")
    ds = Dataset.from_config(cfg)
    from mlaas4hep.io.preprocess import Preprocessor

    sch = ds.schema
    reader = ds._reader(Preprocessor(flat=sch.flat, jagged=[(j, 0) for j in sch.jagged], tree="Events"))
    names, given, unit = sch.flat + sch.jagged, [None] * len(sch.jagged), Unit(0, 0, 5000)
    store = firstuse.raw_store(tmp_path / "raw")
    _, n, raw = stats_and_raw(reader, names, given, (unit, firstuse.HereOr(os.getpid(), str(store.root))))
    assert raw is not None and len(raw) == n == 5000 and not store.has(unit)
    _, _, none = stats_and_raw(
        reader, names, given, (unit, firstuse.HereOr(os.getpid() + 1, str(store.root)))
    )
    assert none is None and store.has(unit)
    for f in rawunit.RawChunk.FIELDS:
        np.testing.assert_array_equal(getattr(store.read(unit), f), getattr(raw, f))


def test_the_last_writes_of_an_epoch_go_on_behind_it_and_the_next_epoch_waits_for_them(tmp_path):
    """``finish`` returns while a write is held; ``wait_for_writers`` returns once it is done."""
    release = threading.Event()

    class SlowStore(ChunkStore):
        def write(self, unit, chunk):
            release.wait(10)
            return super().write(unit, chunk)

    store = SlowStore(tmp_path / "cache")
    chunk = Chunk(
        np.ones((3, 2), np.float32), np.zeros((3, 2), bool), np.ones(3), np.ones(3), np.zeros((3, 2))
    )
    writer = WriteBehind(store)
    writer.put(Unit(0, 0, 3), chunk)
    writer.finish()  # returns at once: the write is still held
    assert not store.has(Unit(0, 0, 3))
    threading.Timer(0.2, release.set).start()
    wait_for_writers()
    assert store.has(Unit(0, 0, 3))
    np.testing.assert_array_equal(store.read(Unit(0, 0, 3)).x, chunk.x)


def test_a_unit_laid_out_straight_into_the_cache_equals_one_laid_out_in_memory(
    data_dir, tmp_path, monkeypatch
):
    """``lay_out_to_store``: the chunk maps its cache files, read-only, equal to ``finalize`` in memory
    (lengths from the specs: widened); a disk that cannot take it leaves nothing and returns None."""
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, normalize="minmax")
    ds = Dataset.from_config(cfg)
    pre = ds.preprocessor
    from mlaas4hep.io.preprocess import Preprocessor

    sch = ds.schema
    reader = ds._reader(Preprocessor(flat=sch.flat, jagged=[(j, 0) for j in sch.jagged], tree="Events"))
    names, given, unit = sch.flat + sch.jagged, [None] * len(sch.jagged), Unit(0, 0, 5000)

    def raw():
        return stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))[2]

    want = rawunit.finalize(raw(), pre)
    store = ChunkStore(tmp_path / "store")
    got = firstuse.lay_out_to_store(raw(), pre, store, unit)
    assert got is not None and store.has(unit) and not got.x.flags.writeable and not got.mask.flags.writeable
    for f in Chunk.FIELDS:
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
        np.testing.assert_array_equal(getattr(store.read(unit), f), getattr(want, f))

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    other = ChunkStore(tmp_path / "full")
    assert firstuse.lay_out_to_store(raw(), pre, other, unit) is None
    assert not other.has(unit) and list(other.root.iterdir()) == []


def test_a_raw_unit_with_room_is_widened_in_place_to_the_same_values(data_dir, tmp_path):
    """Lengths from the specs: epoch 0 widens a raw unit's rows inside its own buffer, last block
    first, with the values of a layout into a new array (several blocks: ``BLOCK_BYTES`` made small)."""
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, normalize="minmax")
    ds = Dataset.from_config(cfg)
    pre = ds.preprocessor
    from mlaas4hep.io.preprocess import Preprocessor

    sch = ds.schema
    reader = ds._reader(Preprocessor(flat=sch.flat, jagged=[(j, 0) for j in sch.jagged], tree="Events"))
    names, given = sch.flat + sch.jagged, [None] * len(sch.jagged)
    widened = 0
    for unit in ds.units(0):
        a = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))[2]
        b = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))[2]
        assert a.room is not None
        if a.x.shape[1] == pre.n_features:  # this unit holds the longest list: laid out in place as is
            continue
        widened += 1
        want = rawunit.finalize(a, pre)  # into a new array
        old = rawunit.BLOCK_BYTES
        rawunit.BLOCK_BYTES = 4096  # many blocks, so that later rows move over earlier ones
        try:
            got = rawunit.finalize(b, pre, inplace=True)
        finally:
            rawunit.BLOCK_BYTES = old
        assert np.shares_memory(got.x, b.room)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.mask, want.mask)
    assert widened  # units whose lists are all shorter than the longest of the dataset
