"""First use in one read: the fused specs pass + epoch 0 equal today's two passes, bit for bit."""

import gc
import json

import numpy as np
import pytest

from mlaas4hep.io import Dataset, firstuse
from mlaas4hep.io.chunk import ChunkStore, dir_size
from mlaas4hep.io.reader import UnitReader

from ..conftest import sample_config

CONFIGS = {
    "minmax, lengths from the specs, shuffled": dict(jagged={}, normalize="minmax"),
    "standard, lengths given, pad -3": dict(normalize="standard", shuffle=False, pad_value=-3.0),
    "selection and new variables": dict(
        jagged={},
        selection="MET_pt > 30",
        new_variables={"ht": "sum(Jet_pt)", "jpt2": "Jet_pt * 2"},
    ),
}


def epochs(ds, n=2):
    """Every batch of epochs 0..n-1, copied out of the memory maps."""
    return [
        [
            {f: np.array(getattr(b, f)) for f in ("x", "mask", "y", "weight", "event_id")}
            for b in ds.batches(3000, e)
        ]
        for e in range(n)
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for ba, bb in zip(ea, eb):
            for f in ba:
                assert ba[f].dtype == bb[f].dtype
                np.testing.assert_array_equal(ba[f], bb[f], err_msg=f)  # NaN == NaN, else exact


@pytest.fixture
def count_decodes(monkeypatch):
    """How many units were decoded into tensors (inline workers only: the count is in this process)."""
    calls = []
    real = UnitReader.decode

    def decode(self, unit):
        calls.append(unit)
        return real(self, unit)

    monkeypatch.setattr(UnitReader, "decode", decode)
    return calls


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("cached", [True, False])
def test_fused_first_use_equals_two_passes(data_dir, tmp_path, count_decodes, name, cached):
    over = CONFIGS[name]
    two = Dataset.from_config(
        sample_config(data_dir, tmp_path / "two" if cached else None, **over),
        fused=False,
        specs=tmp_path / "two.json",  # without a cache directory specs go to a shared temporary one
    )
    ref = epochs(two)
    ref_specs = json.dumps(two.specs.to_dict(), sort_keys=True)
    count_decodes.clear()

    cfg = sample_config(data_dir, tmp_path / "one" if cached else None, **over)
    fused = Dataset.from_config(cfg, specs=tmp_path / "one.json")
    specs = json.dumps(fused.specs.to_dict(), sort_keys=True)
    first = [
        {f: np.array(getattr(b, f)) for f in ("x", "mask", "y", "weight", "event_id")}
        for b in fused.batches(3000, 0)
    ]
    assert count_decodes == []  # epoch 0 laid out the specs pass's units: no second decode
    assert specs == ref_specs
    assert_same([first, epochs(fused, 2)[1]], ref)


@pytest.mark.parametrize(
    "jagged",
    [{}, {"Jet": 6}],
    ids=["lengths from the specs: laid out anew", "lengths given: laid out in place, moved into the cache"],
)
def test_fused_with_workers_equals_two_passes(data_dir, tmp_path, jagged):
    over = dict(jagged=jagged, workers=2, executor="processes", normalize="standard")
    ref = epochs(Dataset.from_config(sample_config(data_dir, tmp_path / "two", **over), fused=False), 2)
    fused = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over))
    first = epochs(fused, 1)
    raw, cache = fused._raw_store(), fused.cache
    assert raw is not None and raw.size() == 0  # every raw unit was laid out into the cache
    assert cache is not None and all(cache.has(u) for u in fused.units(0))
    assert_same(first + epochs(fused, 2)[1:], ref)  # epoch 1 from the cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_first_use_on_threads_equals_two_passes_on_processes(
    data_dir, tmp_path, count_decodes, monkeypatch, name
):
    """Two workers are threads (``executor: local``): raw units stay in memory (never on disk), threads lay them out,
    no unit is decoded twice, and every batch equals the two passes on worker processes."""
    over = dict(CONFIGS[name], workers=2)
    two = Dataset.from_config(
        sample_config(data_dir, tmp_path / "two", executor="processes", **over), fused=False
    )
    ref = epochs(two, 2)
    count_decodes.clear()
    written, real = [], ChunkStore.write
    monkeypatch.setattr(ChunkStore, "write", lambda self, u, c: written.append(self.root) or real(self, u, c))
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over))  # executor: local
    assert ds.executor_kind == "threads"
    first = epochs(ds, 1)
    assert count_decodes == []  # epoch 0 laid out the specs pass's units (in this process: counted)
    assert all(root == ds.cache.root for root in written)  # no raw unit went to disk
    assert all(ds.cache.has(u) for u in ds.units(0))
    assert not ds._raw.memory.units and ds._raw.memory.used == 0
    assert_same(first + epochs(ds, 2)[1:], ref)  # epoch 1 from the cache


def test_a_raw_unit_interrupted_while_laid_out_is_decoded_again(data_dir, tmp_path):
    """The x file leaves the raw store before it changes: a unit without it is decoded anew."""
    from mlaas4hep.io.firstuse import lay_out_into

    over = dict(workers=0, normalize="minmax")
    ref = epochs(Dataset.from_config(sample_config(data_dir, tmp_path / "ref", **over), fused=False), 1)
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over), raw_memory=0)
    _ = ds.specs  # raw units on disk (no memory budget)
    raw, cache = ds._raw_store(), ds.cache
    assert raw is not None and cache is not None
    units = ds.units(0)
    assert lay_out_into(raw, cache, units[0], ds.preprocessor) == units[0].stop - units[0].start
    assert cache.has(units[0]) and not raw.has(units[0])
    (raw.path(units[1]) / "x.npy").unlink()  # as if a run stopped after the move
    assert_same(epochs(ds, 1), ref)


@pytest.mark.parametrize("where", ["memory, written when the dataset goes", "disk"])
def test_raw_units_of_a_specs_only_run_serve_the_next_run(data_dir, tmp_path, count_decodes, where):
    cfg = sample_config(data_dir, tmp_path / "cache", jagged={}, selection="nJet >= 4")
    ref = epochs(
        Dataset.from_config(
            sample_config(data_dir, tmp_path / "two", jagged={}, selection="nJet >= 4"), fused=False
        )
    )
    first = Dataset.from_config(cfg, raw_memory=0 if where == "disk" else None)
    first.specs  # noqa: B018  (e.g. `mlaas4hep specs`): the fused pass keeps its units
    raw = first._raw_store()
    assert raw is not None
    if where != "disk":
        assert len(first._raw.memory.units) == 16 and not list(raw.root.iterdir())  # held in memory
        del first  # a run that stops after the specs: what it holds goes to the cache directory
        gc.collect()
    assert len(list(raw.root.iterdir())) == 16  # 4 files x 4 units
    count_decodes.clear()

    second = Dataset.from_config(cfg)  # a new run: specs loaded from disk, units from the raw store
    assert_same(epochs(second, 1), ref[:1])
    assert count_decodes == []
    assert raw.size() == 0 and len(list(second.cache.root.iterdir())) == 16

    third = Dataset.from_config(cfg)  # later runs read the decoded cache
    assert_same(epochs(third, 2), ref)
    assert count_decodes == []


def test_no_specs_pass_when_nothing_depends_on_it(data_dir, tmp_path, monkeypatch):
    over = dict(normalize="none", jagged={"Jet": 4}, shuffle=True)
    ref = epochs(Dataset.from_config(sample_config(data_dir, tmp_path / "two", **over), fused=False), 1)

    def no_specs(self):
        raise AssertionError("the specs pass ran")

    monkeypatch.setattr(Dataset, "compute_specs", no_specs)
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over))
    # what a training run asks before epoch 0 (the model's width, the progress bar's total)
    assert ds.n_features == 2 + 5 * 4
    assert ds.nevents == sum(len(b["y"]) for b in ref[0])
    assert_same(epochs(ds, 1), ref)


def test_cache_size_leaves_out_files_that_move_while_counted(tmp_path, monkeypatch):
    """A write-behind thread or another run renames files while the cache is measured."""
    import pathlib

    for name in ("a", "b"):
        (tmp_path / "u" / name).mkdir(parents=True)
        np.save(tmp_path / "u" / name / "x.npy", np.zeros(100, np.float32))
    real = pathlib.Path.stat

    def stat(self, **kw):
        if self.parent.name == "b":  # renamed away after the listing
            raise FileNotFoundError(self)
        return real(self, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert dir_size(tmp_path) == real(tmp_path / "u" / "a" / "x.npy").st_size
    assert dir_size(tmp_path / "missing") == 0


def test_the_cache_budget_holds_raw_and_decoded_units(data_dir, tmp_path):
    limit = 2e-3  # GiB: room for a few units of 5,000 events, not 16
    over = dict(jagged={}, shuffle=False, cache_max_gb=limit)
    ref = epochs(Dataset.from_config(sample_config(data_dir, None, **over), fused=False), 2)
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "c", **over), raw_memory=0)
    ds.specs  # noqa: B018
    root = tmp_path / "c" / "chunks"
    sizes = [dir_size(root)]
    raw = ds._raw_store()
    assert raw is not None and 0 < len(list(raw.root.iterdir())) < 16  # some units kept, not all
    out = []
    for e in range(2):
        batches = []
        for b in ds.batches(3000, e):
            batches.append({f: np.array(getattr(b, f)) for f in ("x", "mask", "y", "weight", "event_id")})
            sizes.append(dir_size(root))  # while the cache is written behind
        out.append(batches)
    assert_same(out, ref)
    assert max(sizes) <= limit * 2**30


def test_raw_units_in_memory_stay_within_their_budget(data_dir, tmp_path):
    """A budget of about 5 units: those are held in memory, the others go to the store on disk."""
    over = dict(jagged={}, normalize="standard", workers=0)
    ref = epochs(Dataset.from_config(sample_config(data_dir, tmp_path / "two", **over), fused=False), 2)
    per_event = firstuse.bytes_per_event(2, [None] * 5)  # MET_pt, nJet; five Jet branches
    budget = 5 * 5_000 * per_event + 100
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over), raw_memory=budget)
    ds.specs  # noqa: B018
    held = ds._raw.memory
    assert 0 < len(held.units) < 16
    assert held.used == sum(r.nbytes for r in held.units.values()) <= budget
    raw = ds._raw_store()
    assert raw is not None and len(list(raw.root.iterdir())) == 16 - len(held.units)
    assert_same(epochs(ds, 2), ref)
    assert not held.units and held.used == 0 and raw.size() == 0


def test_cache_written_behind_serves_the_next_run(data_dir, tmp_path, count_decodes, monkeypatch):
    """Epoch 0 of a first use lays units out in memory and writes them behind; the next run reads them."""
    over = dict(jagged={}, normalize="minmax", shuffle=True)
    ref = epochs(Dataset.from_config(sample_config(data_dir, tmp_path / "two", **over), fused=False), 2)
    cfg = sample_config(data_dir, tmp_path / "one", **over)
    count_decodes.clear()
    first = Dataset.from_config(cfg)
    assert_same(epochs(first, 1), ref[:1])
    assert count_decodes == [] and not first._raw.memory.units  # every unit laid out from memory
    assert len(list(first.cache.root.iterdir())) == 16  # and written (close() waited for the last)

    def no_layout(*args, **kwargs):
        raise AssertionError("a unit was laid out again")

    monkeypatch.setattr(firstuse, "finalize", no_layout)
    second = Dataset.from_config(cfg)  # a new run: specs and every chunk from the cache
    assert_same(epochs(second, 2), ref)
    assert count_decodes == []


def test_a_failing_cache_write_costs_the_cache_only(tmp_path, caplog):
    from mlaas4hep.io.chunk import Chunk, ChunkStore, Unit, WriteBehind

    class FullDisk(ChunkStore):
        def write(self, unit, chunk):
            raise OSError(28, "No space left on device")

    writer = WriteBehind(FullDisk(tmp_path))
    chunks = [Chunk.empty(3) for _ in range(4)]
    for i, ch in enumerate(chunks):
        writer.put(Unit(0, i, i + 1), ch)
    writer.close()
    assert isinstance(writer.failed, OSError) and "writing stopped" in caplog.text
    assert not chunks[0].x.flags.writeable  # what is written behind cannot change meanwhile


def test_a_dataset_sent_to_another_process_leaves_its_raw_units_behind(data_dir, tmp_path):
    """A spawned DataLoader worker gets a pickled dataset: without the raw units, which it decodes."""
    import pickle

    over = dict(jagged={}, shuffle=False)
    ds = Dataset.from_config(sample_config(data_dir, tmp_path / "one", **over))
    ds.specs  # noqa: B018
    assert len(ds._raw.memory.units) == 16
    copy = pickle.loads(pickle.dumps(ds))
    assert not copy._raw.memory.units and copy._raw.memory.used == 0
    ref = epochs(Dataset.from_config(sample_config(data_dir, None, **over), fused=False), 1)
    assert_same(epochs(copy, 1), ref)
    assert len(ds._raw.memory.units) == 16  # the original still holds its own
