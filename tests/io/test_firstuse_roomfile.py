"""Raw units decoded into the page cache (``roomfile.RoomFile``) and laid out there as the cache's ``x.npy``.

Each is compared with the same unit decoded into memory and laid out by ``finalize``: values,
mask and the files in the decoded cache, byte for byte against ``np.save``.
"""

import os

import numpy as np
import pytest

from mlaas4hep.io import Dataset, firstuse, rawunit, roomfile
from mlaas4hep.io.chunk import Chunk, ChunkStore, Unit
from mlaas4hep.io.passes import stats_and_raw
from mlaas4hep.io.preprocess import Preprocessor

from ..conftest import sample_config


def _specs_reader(ds):
    sch = ds.schema
    reader = ds._reader(Preprocessor(flat=sch.flat, jagged=[(j, 0) for j in sch.jagged], tree="Events"))
    return reader, sch.flat + sch.jagged


@pytest.mark.parametrize("jagged", [{}, {"Jet": 4}], ids=["lengths from the specs", "lengths given"])
def test_a_unit_decoded_into_a_file_becomes_its_cache_file_with_the_values_of_memory(
    data_dir, tmp_path, jagged
):
    cfg = sample_config(data_dir, tmp_path / "cache", jagged=jagged, normalize="minmax")
    ds = Dataset.from_config(cfg)
    pre = ds.preprocessor
    reader, names = _specs_reader(ds)
    given = [jagged.get(j.split("_")[0]) for j in ds.schema.jagged]
    files = tmp_path / "rooms"
    store = ChunkStore(tmp_path / "store")
    for unit in ds.units(0)[:3]:
        stats, n, mem = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))
        stats2, n2, raw = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY), files=str(files))
        assert mem.file is None and raw.file is not None and n2 == n
        assert {k: (s.count, s.mean, s.m2) for k, s in stats2.items()} == {
            k: (s.count, s.mean, s.m2) for k, s in stats.items()
        }
        np.testing.assert_array_equal(raw.x, mem.x)
        assert os.listdir(files) == []  # an unnamed file: nothing on disk to clean up
        want = rawunit.finalize(mem, pre)
        got = firstuse.lay_out_to_store(raw, pre, store, unit)
        assert got is not None and not got.x.flags.writeable
        assert np.shares_memory(got.x, raw.file.buffer)  # laid out in place, in the file itself
        for f in Chunk.FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
            np.testing.assert_array_equal(getattr(store.read(unit), f), getattr(want, f))
        path = store.path(unit) / "x.npy"
        np.save(tmp_path / "want.npy", want.x)
        assert path.read_bytes() == (tmp_path / "want.npy").read_bytes()


def test_a_file_unit_not_published_leaves_nothing_and_lays_out_in_place(data_dir, tmp_path):
    """A unit whose chunk does not go to the cache is widened inside its unnamed file."""
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, normalize="minmax")
    ds = Dataset.from_config(cfg)
    pre = ds.preprocessor
    reader, names = _specs_reader(ds)
    given = [None] * len(ds.schema.jagged)
    files = tmp_path / "rooms"
    for unit in ds.units(0)[:3]:
        mem = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))[2]
        raw = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY), files=str(files))[2]
        want = rawunit.finalize(mem, pre)
        got = rawunit.finalize(raw, pre, inplace=True)
        if raw.x.shape[1] < pre.n_features:
            assert np.shares_memory(got.x, raw.file.buffer)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.mask, want.mask)
    assert os.listdir(files) == []


def test_a_full_disk_keeps_a_unit_in_memory_or_lays_it_out_elsewhere(data_dir, tmp_path, monkeypatch):
    """No room for the raw unit: it is decoded into memory. No room to widen it in its file
    (after it was decoded there): it is laid out into a new array, with the same values."""
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, normalize="minmax")
    ds = Dataset.from_config(cfg)
    pre = ds.preprocessor
    reader, names = _specs_reader(ds)
    given = [None] * len(ds.schema.jagged)
    unit = Unit(0, 0, 5000)
    mem = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY))[2]
    want = rawunit.finalize(mem, pre)
    raw = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY), files=str(tmp_path / "rooms"))[2]
    assert raw.file is not None and raw.x.shape[1] < pre.n_features

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert roomfile.RoomFile.create(tmp_path / "rooms", 100, 10) is None
    kept = stats_and_raw(reader, names, given, (unit, firstuse.MEMORY), files=str(tmp_path / "rooms"))[2]
    assert kept.file is None
    np.testing.assert_array_equal(kept.x, mem.x)
    got = rawunit.finalize(raw, pre, inplace=True)  # its file cannot grow: a new array
    assert not np.shares_memory(got.x, raw.file.buffer)
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(got.mask, want.mask)


def test_a_first_use_with_a_cache_publishes_its_files_and_reads_them_back_equal(data_dir, tmp_path):
    """End to end (threads): epoch 0 of a first use, whose raw units lived in files, equals
    epoch 1 read back from the cache and a first use with the raw units in memory."""
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, normalize="minmax", workers=2, shuffle=False)
    ds = Dataset.from_config(cfg)
    first = list(ds.chunks(0))
    again = list(ds.chunks(1))
    cfg2 = dict(cfg, cache_dir=None)
    plain = list(Dataset.from_config(cfg2).chunks(0))
    for a, b, c in zip(first, again, plain, strict=True):
        for f in Chunk.FIELDS:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
            np.testing.assert_array_equal(getattr(a, f), getattr(c, f))
    raws = list((tmp_path / "cache").rglob("raw-*"))
    assert all(not any(p.iterdir()) for p in raws if p.is_dir())


def test_room_files_open_at_once_are_capped_and_given_back(tmp_path, monkeypatch):
    """Each room file holds a descriptor until its unit goes: past ``MAX_OPEN`` units live in memory."""
    import gc

    monkeypatch.setattr(roomfile, "MAX_OPEN", 2)
    a = roomfile.RoomFile.create(tmp_path, 100, 10)
    b = roomfile.RoomFile.create(tmp_path, 100, 10)
    assert a is not None and b is not None
    assert roomfile.RoomFile.create(tmp_path, 100, 10) is None
    fd = a.fd
    del a
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its file
    c = roomfile.RoomFile.create(tmp_path, 100, 10)
    assert c is not None and os.listdir(tmp_path) == []
