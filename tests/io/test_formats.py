"""RNTuple and Parquet inputs (issue 13): the same events as a TTree, an RNTuple and a Parquet file
give the same feature names, specs and batches, locally and through real XRootD and HTTP servers."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.io import Dataset
from mlaas4hep.io.errors import UnsupportedBranchError
from mlaas4hep.io.formats import RNTupleView
from mlaas4hep.io.inspect import inspect_file
from mlaas4hep.io.reader import get_tree, read_arrays

N = 6_000
FORMATS = {"ttree": "fmt_tree.root", "rntuple": "fmt_rntuple.root", "parquet": "fmt_table.parquet"}
#: The same events in row groups of 1,300 rows, which units of 1,000 events cannot follow exactly.
ODD_GROUPS = "fmt_table_rg1300.parquet"


def events(n: int = N, seed: int = 3) -> dict:
    """NanoAOD-like events; keys in name order, the order in which uproot writes an RNTuple's fields."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(4, n)
    total = int(counts.sum())

    def jagged(values):
        return ak.unflatten(values, counts)

    jet = ak.zip(
        {
            "pt": jagged(rng.exponential(40, total).astype(np.float32)),
            "eta": jagged(rng.normal(0, 1.5, total).astype(np.float32)),
            "btag": jagged(rng.random(total).astype(np.float32)),
            "jetId": jagged(rng.integers(0, 7, total).astype(np.int32)),
        }
    )
    return {
        "Jet": jet,
        "MET_pt": rng.exponential(30, n).astype(np.float32),
        "event": np.arange(n, dtype=np.int64),
        "genWeight": rng.choice([-1.0, 1.0], n).astype(np.float32),
        "isSignal": (rng.random(n) > 0.5).astype(np.int32),
        "run": np.ones(n, dtype=np.int32),
    }


def write_all(directory, data: dict) -> None:
    """The same events as a TTree (mktree + extend), an RNTuple (f[name] = ...) and Parquet."""
    with uproot.recreate(directory / FORMATS["ttree"]) as f:
        t = f.mktree("Events", {k: (v.type.content if k == "Jet" else v.dtype) for k, v in data.items()})
        for s in range(0, N, 2_500):
            t.extend({k: v[s : s + 2_500] for k, v in data.items()})
    with uproot.recreate(directory / FORMATS["rntuple"]) as f:
        f["Events"] = data
    table = ak.zip(data, depth_limit=1)
    ak.to_parquet(table, directory / FORMATS["parquet"], row_group_size=1_000)  # one per unit
    ak.to_parquet(table, directory / ODD_GROUPS, row_group_size=1_300)
    for name in [*FORMATS.values(), ODD_GROUPS]:
        (directory / name).chmod(0o644)


@pytest.fixture(scope="module")
def fmt_dir(data_dir):
    """The three files in the directory that the session's XRootD and nginx servers export."""
    write_all(data_dir, events())
    return data_dir


def config(paths, **overrides) -> dict:
    cfg = {
        "tree": "Events",
        "files": [{"path": str(p), "label": 0} for p in paths],
        "branches": ["MET_pt", "nJet", "Jet_*"],
        "identifier": ["run", "event"],
        "jagged": {"Jet": 5},
        "selection": "(nJet >= 2) & (MET_pt > 5)",
        "new_variables": {"HT": "sum(Jet_pt)", "nBtag": "count(Jet_btag > 0.5)"},
        "label_branch": "isSignal",
        "weight_branch": "genWeight",
        "chunk_size": 1_000,
        "workers": 0,
        "seed": 4,
    }
    cfg.update(overrides)
    return cfg


def _specs(ds: Dataset) -> dict:
    d = ds.specs.to_dict()
    return {k: v for k, v in d.items() if k not in ("files", "key")}


def _batches(ds: Dataset, epoch: int = 0) -> list:
    return [(b.x, b.mask, b.y, b.weight, b.event_id) for b in ds.batches(batch_size=700, epoch=epoch)]


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        for u, v in zip(ba, bb):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("fmt", ["rntuple", "parquet"])
def test_same_events_same_names_specs_and_batches(fmt_dir, fmt):
    ref = Dataset.from_config(config([fmt_dir / FORMATS["ttree"]]))
    ds = Dataset.from_config(config([fmt_dir / FORMATS[fmt]]))
    assert ds.feature_names == ref.feature_names
    assert ds.feature_names[:4] == ["nJet", "MET_pt", "HT", "nBtag"]
    assert ds.schema.jagged == ["Jet_pt", "Jet_eta", "Jet_btag", "Jet_jetId"]
    assert _specs(ds) == _specs(ref)
    assert 0 < ds.nevents < N
    _assert_same_batches(_batches(ds), _batches(ref))
    _assert_same_batches(_batches(ds, epoch=1), _batches(ref, epoch=1))


def test_units_follow_row_groups(fmt_dir):
    """Units never split a row group they could hold whole; unshuffled batches equal the TTree's."""
    cfg = {"shuffle": False}
    odd = Dataset.from_config(config([fmt_dir / ODD_GROUPS], **cfg))
    spans = [(u.start, u.stop) for u in odd.units()]
    assert spans[:3] == [(0, 1_000), (1_000, 1_300), (1_300, 2_300)]
    assert sorted(spans) == spans and spans[-1][1] == N
    assert sum(b - a for a, b in spans) == N
    ref = Dataset.from_config(config([fmt_dir / FORMATS["ttree"]], **cfg))
    assert [(u.start, u.stop) for u in ref.units()][:2] == [(0, 1_000), (1_000, 2_000)]
    a, b = _specs(odd), _specs(ref)
    for key in ("mean", "std", "m2"):  # merged over other units: equal up to rounding
        x = a.pop(key)
        assert x == pytest.approx(b.pop(key), rel=1e-12)
    assert a == b  # min, max, counts, lengths: exact
    x, y = odd.to_numpy()
    xr, yr = ref.to_numpy()
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)


def test_jagged_chunks_are_the_same(fmt_dir):
    cfg = {"shuffle": False}
    ref = list(Dataset.from_config(config([fmt_dir / FORMATS["ttree"]], **cfg)).jagged_chunks())
    for fmt in ("rntuple", "parquet"):
        got = list(Dataset.from_config(config([fmt_dir / FORMATS[fmt]], **cfg)).jagged_chunks())
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert list(a.arrays) == list(b.arrays)
            for name in a.arrays:
                assert ak.to_list(a.arrays[name]) == ak.to_list(b.arrays[name]), name
            np.testing.assert_array_equal(a.y, b.y)


def test_a_dataset_mixes_formats(fmt_dir):
    """One group per format in a single dataset: each file read as when alone."""
    paths = [fmt_dir / FORMATS[f] for f in ("parquet", "rntuple", "ttree")]
    mixed = Dataset.from_config(config(paths, shuffle=False))
    x, y = mixed.to_numpy()
    alone = Dataset.from_config(config([paths[2]], shuffle=False))
    xa, ya = alone.to_numpy()
    assert x.shape == (3 * len(xa), xa.shape[1])
    for k in range(3):  # the same normalisation: the three files hold the same events
        np.testing.assert_array_equal(x[k * len(xa) : (k + 1) * len(xa)], xa)
        np.testing.assert_array_equal(y[k * len(xa) : (k + 1) * len(xa)], ya)
    assert len(mixed.reference_files) == 3


def test_decoded_cache_replays_rntuple_and_parquet(fmt_dir, cache_dir):
    for fmt in ("rntuple", "parquet"):
        ds = Dataset.from_config(config([fmt_dir / FORMATS[fmt]], cache_dir=str(cache_dir / fmt)))
        first = _batches(ds, epoch=0)
        assert ds.cache is not None and ds.cache.size() > 0
        again = Dataset.from_config(config([fmt_dir / FORMATS[fmt]], cache_dir=str(cache_dir / fmt)))
        _assert_same_batches(_batches(again, epoch=0), first)


def test_predict_root_path_reads_every_format_alike(fmt_dir):
    """What predict_root does with a file: get_tree, then read_arrays of the model's inputs."""
    pre = Dataset.from_config(config([fmt_dir / FORMATS["ttree"]])).preprocessor
    ref = None
    for fmt in ("ttree", "rntuple", "parquet"):
        url = str(fmt_dir / FORMATS[fmt])
        t = get_tree(url, "Events", 30)
        assert t.num_entries == N and "event" in t and "luminosityBlock" not in t
        arrays = read_arrays(url, "Events", [*pre.inputs, "event"], 1_234, 4_321)
        x = pre.transform(arrays, apply_selection=False)[0]
        np.testing.assert_array_equal(np.asarray(arrays["event"]), np.arange(1_234, 4_321))
        if ref is None:
            ref = x
        np.testing.assert_array_equal(x, ref)


def test_inspect_maps_fields_to_branch_names(fmt_dir):
    tree = inspect_file(str(fmt_dir / FORMATS["ttree"]))["trees"][0]
    for fmt in ("rntuple", "parquet"):
        info = inspect_file(str(fmt_dir / FORMATS[fmt]))["trees"][0]
        assert info["format"] == {"rntuple": "RNTuple", "parquet": "Parquet"}[fmt]
        assert info["entries"] == N
        got = {b["name"]: (b["kind"], b["type"]) for b in info["branches"]}
        assert got == {b["name"]: (b["kind"], b["type"]) for b in tree["branches"]}
        fields = {b["name"]: b.get("field") for b in info["branches"]}
        assert fields["Jet_pt"] == "Jet.pt" and fields["nJet"] == "len(Jet)" and fields["MET_pt"] is None
    rn = inspect_file(str(fmt_dir / FORMATS["rntuple"]), pattern="Jet_*")["trees"][0]
    assert [b["name"] for b in rn["branches"]] == ["Jet_pt", "Jet_eta", "Jet_btag", "Jet_jetId"]


def test_unsupported_fields_name_their_type(tmp_path):
    """A string or a fixed-size array cannot be a feature: the error names file, branch and type."""
    n = 50
    data = {
        "x": np.arange(n, dtype=np.float32),
        "name": ak.Array([f"e{i}" for i in range(n)]),
        "p3": ak.to_regular(ak.Array(np.ones((n, 3), dtype=np.float32)), axis=1),
        "MET": ak.zip({"pt": np.ones(n), "phi": np.zeros(n)}),
        "nested": ak.Array([[[1.0], [2.0, 3.0]]] * n),
    }
    with uproot.recreate(tmp_path / "odd.root") as f:
        f["Events"] = data
    ak.to_parquet(ak.zip(data, depth_limit=1), tmp_path / "odd.parquet")
    for name, strtype in (("odd.root", "std::string"), ("odd.parquet", "string")):
        path = str(tmp_path / name)
        with pytest.raises(UnsupportedBranchError, match=f"'name'.*{strtype}"):
            Dataset.from_config(config([path], branches=["*"], **_plain())).schema  # noqa: B018
        ds = Dataset.from_config(config([path], branches=["x", "MET_*"], **_plain()))
        # a record's members are flat branches; the order is the file's (an RNTuple's is by name)
        assert sorted(ds.feature_names) == ["MET_phi", "MET_pt", "x"]
        x, _ = ds.to_numpy()
        np.testing.assert_array_equal(x[:, ds.feature_names.index("x")], np.arange(n, dtype=np.float32))
        kinds = {b["name"]: b["kind"] for b in inspect_file(path)["trees"][0]["branches"]}
        assert kinds == {
            "x": "flat",
            "name": "unsupported",
            "p3": "unsupported",
            "MET_pt": "flat",
            "MET_phi": "flat",
            "nested": "unsupported",
        }


def _plain() -> dict:
    return {
        "identifier": [],
        "jagged": {},
        "selection": None,
        "new_variables": {},
        "label_branch": None,
        "weight_branch": None,
        "normalize": "none",
        "shuffle": False,
    }


def test_rntuple_view_type(fmt_dir):
    assert isinstance(get_tree(str(fmt_dir / FORMATS["rntuple"]), "Events", 30), RNTupleView)


@pytest.mark.parametrize("server", ["xrootd", "http_server"])
def test_rntuple_remote_equals_local(request, fmt_dir, server):
    srv = request.getfixturevalue(server)
    local = Dataset.from_config(config([fmt_dir / FORMATS["rntuple"]], shuffle=False))
    remote = Dataset.from_config(config([srv.url(FORMATS["rntuple"])], shuffle=False))
    assert remote.feature_names == local.feature_names
    assert _specs(remote) == _specs(local)
    _assert_same_batches(_batches(remote), _batches(local))
    shown = inspect_file(srv.url(FORMATS["rntuple"]))["trees"]
    assert shown == inspect_file(str(fmt_dir / FORMATS["rntuple"]))["trees"]


@pytest.mark.parametrize("server", ["xrootd", "http_server"])
def test_parquet_over_fsspec_equals_local(request, fmt_dir, server):
    """Parquet through fsspec: HTTP (nginx) and root:// (fsspec-xrootd)."""
    srv = request.getfixturevalue(server)
    local = Dataset.from_config(config([fmt_dir / FORMATS["parquet"]], shuffle=False))
    remote = Dataset.from_config(config([srv.url(FORMATS["parquet"])], shuffle=False))
    assert _specs(remote) == _specs(local)
    _assert_same_batches(_batches(remote), _batches(local))


def test_predict_root_scores_every_format_alike(fmt_dir, xrootd, tmp_path):
    """A bundle trained on an RNTuple scores TTree, RNTuple (local and root://) and Parquet files alike."""
    from mlaas4hep import bundle

    from ..serve.conftest import mlp_onnx

    ds = Dataset.from_config(config([fmt_dir / FORMATS["rntuple"]]))
    path = bundle.write(
        tmp_path / "b", mlp_onnx(len(ds.feature_names)), ds.preprocessor, ["bkg", "sig"], "m", "onnx"
    )
    model = bundle.load(path)
    urls = [str(fmt_dir / FORMATS[f]) for f in ("ttree", "rntuple", "parquet")]
    urls.append(xrootd.url(FORMATS["rntuple"]))
    scored = [list(model.predict_root(u, "Events", chunk_size=2_500)) for u in urls]
    ref = scored[0]
    assert sum(len(c["entry"]) for c in ref) == N
    assert set(ref[0]) == {"entry", "run", "event", "scores"}
    for chunks in scored[1:]:
        assert len(chunks) == len(ref)
        for a, b in zip(chunks, ref):
            assert set(a) == set(b)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_importer_layout_keeps_branch_names(fmt_dir, tmp_path):
    """ROOT's RNTupleImporter layout: an anonymous collection ``_collection0`` {Jet_pt, ...} plus ``nJet``."""
    data = events()
    jet = data.pop("Jet")
    layout = {
        "_collection0": ak.zip({f"Jet_{m}": jet[m] for m in jet.fields}),
        "nJet": ak.num(jet, axis=1).to_numpy().astype(np.int32),
        **data,
    }
    path = tmp_path / "imported.root"
    with uproot.recreate(path) as f:
        f["Events"] = layout
    names = [b["name"] for b in inspect_file(str(path))["trees"][0]["branches"]]
    assert sorted(names) == sorted(["Jet_pt", "Jet_eta", "Jet_btag", "Jet_jetId", "nJet", *data])
    cfg = {"shuffle": False}
    got = Dataset.from_config(config([path], **cfg))
    ref = Dataset.from_config(config([fmt_dir / FORMATS["ttree"]], **cfg))
    assert sorted(got.feature_names) == sorted(ref.feature_names)
    x, _ = got.to_numpy()
    xr, _ = ref.to_numpy()
    order = [ref.feature_names.index(n) for n in got.feature_names]
    np.testing.assert_array_equal(x, xr[:, order])


def test_a_field_uproot_cannot_read_is_named(tmp_path, monkeypatch):
    """A field whose form uproot cannot build is listed as unsupported, and refused when selected."""
    from uproot.models.RNTuple import RField

    with uproot.recreate(tmp_path / "f.root") as f:
        f["Events"] = {"x": np.arange(5.0), "y": np.arange(5.0)}
    real = RField.to_akform

    def to_akform(self, *a, **kw):
        if self.name == "y":
            raise NotImplementedError("std::variant is not supported")
        return real(self, *a, **kw)

    monkeypatch.setattr(RField, "to_akform", to_akform)
    path = str(tmp_path / "f.root")
    kinds = {b["name"]: (b["kind"], b["type"]) for b in inspect_file(path)["trees"][0]["branches"]}
    assert kinds["x"] == ("flat", "double")
    assert kinds["y"][0] == "unsupported" and "unreadable by uproot" in kinds["y"][1]
    with pytest.raises(UnsupportedBranchError, match=r"'y'.*unreadable by uproot.*std::variant"):
        Dataset.from_config(config([path], branches=["*"], **_plain())).schema  # noqa: B018
    assert Dataset.from_config(config([path], branches=["x"], **_plain())).feature_names == ["x"]
