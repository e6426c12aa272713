"""Input groups (objects as sets with masks) against uproot + awkward, locally and over root://."""

from __future__ import annotations

import textwrap

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.io import Dataset, DatasetConfig
from mlaas4hep.io.errors import ConfigError
from mlaas4hep.io.groups import GroupLayout
from mlaas4hep.io.preprocess import Preprocessor

NEVTS = 3_000
FILES = [("ttH_0.root", 1), ("ttbar_0.root", 0)]
JETS = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagDeepFlavB", "Jet_logpt", "Jet_deta", "Jet_dphi"]
NEW = {
    "Jet_logpt": "log(Jet_pt)",
    "Jet_deta": "Jet_eta - leading(Jet_eta)",
    "Jet_dphi": "deltaphi(Jet_phi, leading(Jet_phi))",
}


def group_config(paths: list[tuple[str, int]], **overrides: object) -> dict:
    cfg = {
        "files": [{"path": p, "label": lab} for p, lab in paths],
        "new_variables": dict(NEW),
        "inputs": {
            "jets": {"branches": JETS, "length": 8, "sort_by": "Jet_pt"},
            "leptons": {
                "branches": [
                    "Muon_pt",
                    "Muon_eta",
                    "Muon_charge",
                    "Electron_pt",
                    "Electron_eta",
                    "Electron_charge",
                ],
                "length": 3,
                "sort_by": "pt",
            },
            "event": {"branches": ["MET_pt", "MET_phi", "nJet"]},
        },
        "normalize": "none",
        "pad_value": -7.0,
        "shuffle": False,
        "nevts": NEVTS,
        "chunk_size": 1_000,
        "workers": 0,
        "cache_dir": None,
    }
    cfg.update(overrides)
    return cfg


def _padded(values: ak.Array, order: ak.Array, length: int, pad: float) -> tuple[np.ndarray, np.ndarray]:
    v = ak.pad_none(values[order], length, clip=True, axis=1)
    return ak.to_numpy(ak.fill_none(v, pad)).astype(np.float32), ak.to_numpy(ak.is_none(v, axis=1))


def expected(paths: list[str], pad: float = -7.0, jets_length: int = 8, ascending: bool = False) -> dict:
    """What uproot + awkward give for the groups of :func:`group_config` (files concatenated)."""
    out: dict[str, list[np.ndarray]] = {}
    for p in paths:
        a = uproot.open(p)["Events"].arrays(entry_stop=NEVTS)
        jets = {b: a[b] for b in JETS if b in a.fields}
        jets["Jet_logpt"] = np.log(a["Jet_pt"])
        jets["Jet_deta"] = a["Jet_eta"] - ak.fill_none(ak.firsts(a["Jet_eta"], axis=1), 0.0)
        lead = ak.fill_none(ak.firsts(a["Jet_phi"], axis=1), 0.0)
        jets["Jet_dphi"] = (a["Jet_phi"] - lead + np.pi) % (2 * np.pi) - np.pi
        order = ak.argsort(a["Jet_pt"], axis=1, ascending=ascending, stable=True)
        cols = [_padded(jets[b], order, jets_length, pad) for b in JETS]
        out.setdefault("jets", []).append(np.stack([c[0] for c in cols], axis=-1))
        out.setdefault("jets_mask", []).append(cols[0][1])
        lep = {
            f: ak.concatenate([a[f"Muon_{f}"], a[f"Electron_{f}"]], axis=1) for f in ("pt", "eta", "charge")
        }
        order = ak.argsort(lep["pt"], axis=1, ascending=False, stable=True)
        cols = [_padded(lep[f], order, 3, pad) for f in ("pt", "eta", "charge")]
        out.setdefault("leptons", []).append(np.stack([c[0] for c in cols], axis=-1))
        out.setdefault("leptons_mask", []).append(cols[0][1])
        out.setdefault("event", []).append(
            np.stack([ak.to_numpy(a[b]).astype(np.float32) for b in ("MET_pt", "MET_phi", "nJet")], axis=-1)
        )
    return {k: np.concatenate(v) for k, v in out.items()}


def collect(ds: Dataset, **kw: object) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for b in ds.batches(batch_size=700, **kw):
        for k, v in b.inputs.items():
            parts.setdefault(k, []).append(v)
        for k, v in b.masks.items():
            parts.setdefault(k + "_mask", []).append(v)
        parts.setdefault("x", []).append(np.asarray(b.x))
        parts.setdefault("event_id", []).append(np.asarray(b.event_id))
    return {k: np.concatenate(v) for k, v in parts.items()}


def assert_groups_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for k, v in want.items():
        assert got[k].shape == v.shape, k
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


# ---------------------------------------------------------------------------- exactness
def test_groups_equal_uproot_padded_sorted_arrays(data_dir):
    paths = [str(data_dir / n) for n, _ in FILES]
    ds = Dataset.from_config(group_config(list(zip(paths, [1, 0]))), show_progress=False)
    assert ds.input_shapes() == {"jets": (8, 7), "leptons": (3, 3), "event": (3,)}
    got = collect(ds)
    want = expected(paths)
    assert_groups_equal(got, want)
    # padding holds pad_value, the masks say where; some events do have padding and clipping
    assert (got["jets"][got["jets_mask"]] == -7.0).all()
    assert got["jets_mask"].any() and (~got["jets_mask"]).all(axis=1).any()
    assert (got["leptons_mask"][:, 0] == False).any() and got["leptons_mask"].all(axis=1).any()  # noqa: E712
    # the flat vector is still all the features; the event group is a view of its columns
    cols = [ds.feature_names.index(b) for b in ("MET_pt", "MET_phi", "nJet")]
    np.testing.assert_array_equal(got["x"][:, cols], got["event"])


def test_groups_over_xrootd_equal_uproot(data_dir, xrootd):
    urls = [(xrootd.url(n), lab) for n, lab in FILES]
    ds = Dataset.from_config(group_config(urls), show_progress=False)
    assert_groups_equal(collect(ds), expected([str(data_dir / n) for n, _ in FILES]))


def test_padding_sorts_last_whatever_pad_value_and_order(data_dir):
    """A pad_value above every pt (descending) or below (ascending) must not move padding first."""
    paths = [str(data_dir / n) for n, _ in FILES]
    inputs = group_config([])["inputs"]
    inputs["jets"] = dict(inputs["jets"], sort_order="ascending")
    for pad, ascending in ((1e6, False), (-1e6, True)):
        cfg = group_config(list(zip(paths, [1, 0])), pad_value=pad, jagged={"Jet": 20})
        if ascending:
            cfg["inputs"] = inputs
        got = collect(Dataset.from_config(cfg, show_progress=False))
        want = expected(paths, pad=pad, ascending=ascending)
        np.testing.assert_array_equal(got["jets"], want["jets"])
        np.testing.assert_array_equal(got["jets_mask"], want["jets_mask"])


def test_longer_jagged_length_sorts_before_clipping(data_dir):
    """With jagged: {Jet: 20} x holds 20 jets; the group sorts all 20 by eta, then keeps 8."""
    path = str(data_dir / "ttbar_0.root")
    cfg = group_config([(path, 0)], jagged={"Jet": 20})
    cfg["inputs"] = {"jets": {"branches": ["Jet_eta", "Jet_pt"], "length": 8, "sort_by": "Jet_eta"}}
    ds = Dataset.from_config(cfg, show_progress=False)
    assert ds.feature_names.count("Jet_eta[19]") == 1
    got = collect(ds)
    a = uproot.open(path)["Events"].arrays(["Jet_eta", "Jet_pt"], entry_stop=NEVTS)
    order = ak.argsort(a["Jet_eta"], axis=1, ascending=False, stable=True)
    eta, pad = _padded(a["Jet_eta"], order, 8, -7.0)
    np.testing.assert_array_equal(got["jets"][..., 0], eta)
    np.testing.assert_array_equal(got["jets_mask"], pad)
    np.testing.assert_array_equal(got["jets"][..., 1], _padded(a["Jet_pt"], order, 8, -7.0)[0])


def test_union_without_sort_by_keeps_file_order_real_objects_first(data_dir):
    path = str(data_dir / "ttH_0.root")
    cfg = group_config([(path, 1)])
    cfg["inputs"] = {"leptons": {"branches": ["Muon_pt", "Electron_pt"], "length": 1}}
    got = collect(Dataset.from_config(cfg, show_progress=False))
    a = uproot.open(path)["Events"].arrays(["Muon_pt", "Electron_pt"], entry_stop=NEVTS)
    both = ak.concatenate([a["Muon_pt"], a["Electron_pt"]], axis=1)
    pt, pad = _padded(both, ak.local_index(both, axis=1), 1, -7.0)
    np.testing.assert_array_equal(got["leptons"][..., 0], pt)
    np.testing.assert_array_equal(got["leptons_mask"], pad)
    # events with a muon and an electron (clipped), and with an electron only (moved to the front)
    mu, el = ak.num(a["Muon_pt"]).to_numpy(), ak.num(a["Electron_pt"]).to_numpy()
    assert ((mu > 0) & (el > 0)).any() and ((mu == 0) & (el > 0)).any()


def test_normalised_groups_keep_the_order_of_raw_values(data_dir, cache_dir):
    """minmax/standard are increasing maps, so sorting normalised values sorts the raw ones."""
    paths = [str(data_dir / n) for n, _ in FILES]
    cfg = group_config(list(zip(paths, [1, 0])), normalize="standard", cache_dir=str(cache_dir))
    ds = Dataset.from_config(cfg, show_progress=False)
    got = collect(ds)
    want = expected(paths)
    np.testing.assert_array_equal(got["jets_mask"], want["jets_mask"])
    pre = ds.preprocessor
    pt = got["jets"][..., 0][~got["jets_mask"]]
    raw = want["jets"][..., 0][~want["jets_mask"]]
    np.testing.assert_allclose(pt, (raw - pre.offset["Jet_pt"]) * pre.scale["Jet_pt"], rtol=1e-5, atol=1e-5)


def test_shuffled_batches_carry_the_groups_of_their_events(data_dir):
    paths = [str(data_dir / n) for n, _ in FILES]
    plain = collect(Dataset.from_config(group_config(list(zip(paths, [1, 0]))), show_progress=False))
    ds = Dataset.from_config(group_config(list(zip(paths, [1, 0])), shuffle=True), show_progress=False)
    shuffled = collect(ds)
    key = {tuple(e): i for i, e in enumerate(plain["event_id"])}
    idx = np.array([key[tuple(e)] for e in shuffled["event_id"]])
    assert not (idx == np.arange(len(idx))).all()
    for k in ("jets", "jets_mask", "leptons", "leptons_mask", "event"):
        np.testing.assert_array_equal(shuffled[k], plain[k][idx], err_msg=k)


def test_select_drops_events_before_batching(data_dir):
    paths = [str(data_dir / n) for n, _ in FILES]
    ds = Dataset.from_config(group_config(list(zip(paths, [1, 0])), shuffle=True), show_progress=False)
    sizes, ids = [], []
    for b in ds.batches(batch_size=500, select=lambda ch: ch.event_id[:, 1] % 5 != 0):
        sizes.append(len(b))
        ids.append(b.event_id)
        assert b.inputs["jets"].shape[0] == len(b)
    all_ids = np.concatenate(ids)
    assert (all_ids[:, 1] % 5 != 0).all()
    assert len(all_ids) == sum(NEVTS - NEVTS // 5 for _ in FILES)
    assert all(s == 500 for s in sizes[:-1])
    with pytest.raises(ValueError, match="select must return one bool per event"):
        next(iter(ds.batches(select=lambda ch: ch.y)))


def test_without_groups_batches_have_empty_inputs(data_dir):
    cfg = group_config([(str(data_dir / "ttH_0.root"), 1)], branches=["MET_pt"])
    del cfg["inputs"], cfg["new_variables"]
    ds = Dataset.from_config(cfg, show_progress=False)
    b = next(iter(ds.batches(batch_size=10)))
    assert b.inputs == {} and b.masks == {} and ds.input_shapes() == {}
    assert ds.feature_names == ["MET_pt"]


def test_layout_round_trips_through_the_preprocessor_json(data_dir):
    paths = [str(data_dir / n) for n, _ in FILES]
    ds = Dataset.from_config(group_config(list(zip(paths, [1, 0]))), show_progress=False)
    d = ds.preprocessor.to_dict()
    assert [g["name"] for g in d["groups"]["groups"]] == ["jets", "leptons", "event"]
    pre = Preprocessor.from_dict(d)
    assert pre.groups is not None
    assert pre.groups.names == ["jets", "leptons", "event"]
    assert pre.groups.features("leptons") == ["pt", "eta", "charge"]
    assert pre.groups.is_object("jets") and not pre.groups.is_object("event")
    b = next(iter(ds.batches(batch_size=300)))
    inputs, masks = pre.groups.apply(np.asarray(b.x), np.asarray(b.mask))
    for k in b.inputs:
        np.testing.assert_array_equal(inputs[k], b.inputs[k])
    assert masks.keys() == {"jets", "leptons"}
    with pytest.raises(ConfigError, match="invalid input groups description"):
        GroupLayout.from_json({"width": 3, "groups": [{"name": "a", "features": ["x"], "index": [5]}]})
    with pytest.raises(KeyError, match="did you mean 'jets'"):
        pre.groups.features("jet")


# ---------------------------------------------------------------------------- errors
def _yaml_error(tmp_path, inputs: str, **extra: str) -> str:
    body = textwrap.dedent(
        """\
        files: [{path: x.root, label: 1}]
        new_variables: {Jet_logpt: "log(Jet_pt)"}
        inputs:
        """
    ) + textwrap.indent(textwrap.dedent(inputs), "  ")
    p = tmp_path / "d.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as err:
        DatasetConfig.from_yaml(p)
    return str(err.value)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            "jets: {branches: [Jet_pt], lenght: 4}\n",
            "d.yaml, line 4: unknown key 'lenght' in input group 'jets' (did you mean 'length'?)",
        ),
        (
            "jets:\n  branches: [Jet_pt]\n  length: 0\n",
            "d.yaml, line 6: input group 'jets': length must be an integer >= 1 (objects per event), got 0",
        ),
        (
            "jets:\n  branches: [Jet_pt, Jet_eta]\n  length: 4\n  sort_by: Jet_pz\n",
            "d.yaml, line 7: input group 'jets': sort_by 'Jet_pz' is not one of its features "
            "(did you mean 'Jet_pt'?)",
        ),
        (
            "event: {branches: [MET_pt], sort_by: MET_pt}\n",
            "input group 'event' has no length, so it is one vector per event and has nothing to sort",
        ),
        (
            "leptons:\n  branches: [Muon_pt, Muon_eta, Electron_pt]\n  length: 4\n",
            "d.yaml, line 5: input group 'leptons' merges Muon and Electron, so each needs the same features: "
            "collection 'Electron' has no 'Electron_eta' (as 'Muon_eta' of 'Muon')",
        ),
        (
            "jets_mask: {branches: [Jet_pt], length: 2}\n",
            "names ending in '_mask' are kept for the groups' masks",
        ),
        ("jets: {branches: [], length: 2}\n", "branches must be a non-empty list of branch names"),
        (
            "jets: {branches: [Jet_pt], length: 2, sort_by: Jet_pt, sort_order: up}\n",
            "sort_order must be descending or ascending, got 'up'",
        ),
    ],
)
def test_bad_groups_are_refused_at_load_with_file_and_line(tmp_path, inputs, message):
    assert message in _yaml_error(tmp_path, inputs)


def _schema_error(tmp_path, data_dir, inputs: str) -> str:
    p = tmp_path / "d.yaml"
    p.write_text(
        f"files: [{{path: {data_dir / 'ttH_0.root'}, label: 1}}]\nworkers: 0\ncache_dir: null\n"
        "normalize: none\ninputs:\n" + textwrap.indent(textwrap.dedent(inputs), "  ")
    )
    ds = Dataset.from_config(DatasetConfig.from_yaml(p), show_progress=False)
    with pytest.raises(ConfigError) as err:
        ds.input_shapes()
    return str(err.value)


def test_unknown_branch_in_a_group_names_file_line_and_a_guess(tmp_path, data_dir):
    msg = _schema_error(tmp_path, data_dir, "jets:\n  length: 4\n  branches: [Jet_pt, Jet_etaa]\n")
    assert msg.startswith(f"{tmp_path / 'd.yaml'}, line 8: input group 'jets': no branch 'Jet_etaa'")
    assert "did you mean 'Jet_eta'" in msg


def test_flat_branch_in_object_group_and_jagged_in_flat_group(tmp_path, data_dir):
    msg = _schema_error(tmp_path, data_dir, "jets: {branches: [Jet_pt, MET_pt], length: 4}\n")
    assert "line 6: input group 'jets' has a length, so its branches must be lists per event" in msg
    assert "'MET_pt' has one value per event" in msg
    msg = _schema_error(tmp_path, data_dir, "event: {branches: [MET_pt, Jet_pt]}\n")
    assert "input group 'event' has no length, so its branches must have one value per event" in msg
    assert "'Jet_pt' is a list per event" in msg


def test_sorting_and_grouping_do_not_key_the_caches():
    """Only the groups' branches and lengths change x; sort_by, sort_order and the grouping do not."""
    from mlaas4hep.io.dataset import CHUNK_FIELDS, SPECS_FIELDS

    def key(inputs: dict) -> tuple[str, str]:
        c = DatasetConfig.from_dict({"files": ["a.root"], "inputs": inputs})
        return c.digest(*SPECS_FIELDS), c.digest(*CHUNK_FIELDS)

    jets = {"branches": ["Jet_pt", "Jet_eta"], "length": 6}
    base = key({"jets": jets})
    assert key({"jets": dict(jets, sort_by="Jet_eta", sort_order="ascending")}) == base
    assert key({"a": dict(jets, branches=["Jet_pt"]), "b": dict(jets, branches=["Jet_eta"])}) == base
    assert key({"jets": dict(jets, length=7)}) != base
    assert key({"jets": dict(jets, branches=["Jet_pt", "Jet_phi"])}) != base
