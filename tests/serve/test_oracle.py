"""The serving tests' oracle (:mod:`.oracle`) is itself right, and it can tell a wrong preprocessing.

By hand: a few events whose tensors are worked out here from the bundle's
constants (jets cut to the jagged length before they are sorted, padding after
normalisation, masks). Against a real server: the oracle of the served bundle
agrees within :data:`~.oracle.ATOL`, and the oracle of a copy of it with one
altered constant in ``bundle.json`` does not, by far; so a serving test whose
expected values come from the oracle fails when the server's preprocessing is
wrong.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mlaas4hep import bundle

from .conftest import HTTP
from .oracle import ATOL, Oracle, OracleError
from .test_multi_input import grouped_onnx
from .test_multi_input_raw import preprocessor, raw_events


@pytest.fixture(scope="module")
def rawgrouped(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle-grouped") / "bundle"
    bundle.write(path, grouped_onnx(), preprocessor(), ["bkg", "sig"], name="rawgrouped", framework="onnx")
    return path


def _altered(src, tmp_path, change) -> Oracle:
    """The oracle of a copy of bundle ``src`` whose preprocessing ``change`` altered."""
    dst = tmp_path / "altered"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    change(meta["inputs"]["preprocessing"])
    (dst / "bundle.json").write_text(json.dumps(meta))
    return Oracle(dst)


def test_flat_vector_by_hand(tth_bundle):
    """Flat branches normalised; Jet lists cut or padded to 6, pad_value after normalisation."""
    o = tth_bundle.oracle
    pre = o.preprocessing
    assert pre["jagged"] == [
        [b, 6] for b in ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB")
    ]
    assert pre["normalize"] == "minmax" and pre["pad_value"] == 0.0
    pts = [300.0, 250.0, 120.0, 90.0, 60.0, 45.0, 40.0, 35.0]  # 8 jets: the last two do not fit
    raw = {b: [[0.5 + i for i in range(8)], []] for b, _ in o.jagged}
    raw.update(MET_pt=[80.0, 20.0], nJet=[8, 0], Jet_pt=[pts, []])
    x, mask = o.flat_vector(raw)
    col = {f: i for i, f in enumerate(o.features)}

    def norm(b, v):
        return (v - pre["offset"][b]) * pre["scale"][b]

    assert x.dtype == np.float32 and x.shape == (2, 32)
    assert x[0, col["MET_pt"]] == pytest.approx(norm("MET_pt", 80.0), rel=1e-6)
    assert x[1, col["nJet"]] == pytest.approx(norm("nJet", 0), rel=1e-6, abs=1e-7)
    for i in range(6):
        assert x[0, col[f"Jet_pt[{i}]"]] == pytest.approx(norm("Jet_pt", pts[i]), rel=1e-6)
        assert x[0, col[f"Jet_eta[{i}]"]] == pytest.approx(norm("Jet_eta", 0.5 + i), rel=1e-6)
    assert not mask[0].any()
    jet_cols = [col[f"{b}[{i}]"] for b, _ in o.jagged for i in range(6)]
    assert (x[1, jet_cols] == 0.0).all() and mask[1, jet_cols].all()
    assert not mask[1, [col["MET_pt"], col["nJet"]]].any()


def test_grouped_tensors_by_hand(rawgrouped):
    """Jets: the first 6 of each event (its jagged length), sorted by pt, the leading 4 kept; then padding."""
    o = Oracle(rawgrouped)
    raw = {
        "MET_pt": [50.0, 40.0],
        "HT": [300.0, 200.0],
        # 8 jets: 100 and 95 GeV lie beyond the 6 slots of x, so they are not among the leading four
        "Jet_pt": [[10.0, 90.0, 50.0, 20.0, 30.0, 40.0, 100.0, 95.0], [60.0]],
        "Jet_eta": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [-1.0]],
        "Jet_phi": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [3.0]],
    }
    t = o.tensors(raw)
    assert list(t) == ["jets", "jets_mask", "event"]
    # Jet_pt: (pt - 50) * 0.02; eta and phi have no constants
    want_jets = np.array(
        [
            [[0.8, 0.2, 2.0], [0.0, 0.3, 3.0], [-0.2, 0.6, 6.0], [-0.4, 0.5, 5.0]],
            [[0.2, -1.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        np.float32,
    )
    np.testing.assert_allclose(t["jets"], want_jets, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(t["jets_mask"], [[False] * 4, [False, True, True, True]])
    np.testing.assert_allclose(t["event"], [[0.2, 0.5], [0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p["scale"].update(MET_pt=p["scale"]["MET_pt"] * 1.5), id="scale-MET_pt"),
        pytest.param(lambda p: p["offset"].update(Jet_pt=p["offset"]["Jet_pt"] + 20.0), id="offset-Jet_pt"),
        pytest.param(lambda p: p.update(pad_value=0.5), id="pad_value"),
    ],
)
def test_a_wrong_preprocessing_disagrees_with_the_server(server, tth_bundle, tmp_path, change):
    r = HTTP.post(server.url + "/v2/models/tth/infer", json={"inputs": tth_bundle.raw_inputs()})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 1)
    np.testing.assert_allclose(got, tth_bundle.oracle.score_raw(tth_bundle.raw), rtol=0, atol=ATOL)
    wrong = _altered(tth_bundle.path, tmp_path, change).score_raw(tth_bundle.raw)
    assert np.abs(wrong - got).max() > 100 * ATOL


def test_what_the_oracle_cannot_recompute_is_refused(tth_bundle, tmp_path):
    with pytest.raises(OracleError, match="does not evaluate new_variables"):
        _altered(tth_bundle.path, tmp_path, lambda p: p.update(new_variables={"ht": "sum(Jet_pt)"}))
    # columns in another order than inputs.features: refused, not guessed
    reorder = lambda p: p.update(jagged=p["jagged"][::-1])  # noqa: E731
    with pytest.raises(OracleError, match=r"not inputs\.features"):
        _altered(tth_bundle.path, tmp_path / "b", reorder)
    with pytest.raises(OracleError, match=r"raw inputs lack \['nJet'\]"):
        tth_bundle.oracle.score_raw({k: v for k, v in tth_bundle.raw.items() if k != "nJet"})


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p["offset"].update(Jet_pt=p["offset"]["Jet_pt"] + 10.0), id="offset-Jet_pt"),
        pytest.param(lambda p: p["groups"]["groups"][0].update(sort_order="ascending"), id="sort_order"),
        pytest.param(lambda p: p["groups"]["groups"][0].update(sort_by=None), id="unsorted"),
        pytest.param(lambda p: p["scale"].update(HT=p["scale"]["HT"] * 2), id="scale-HT"),
    ],
)
def test_a_wrong_group_preprocessing_moves_the_grouped_scores(rawgrouped, tmp_path, change):
    """The grouped model sees the jets' values, their order and the mask, so test_multi_input_raw
    (the server against this oracle) fails when any of them is wrong."""
    raw = raw_events(40)
    right = Oracle(rawgrouped).score_raw(raw)
    wrong = _altered(rawgrouped, tmp_path, change).score_raw(raw)
    assert np.abs(wrong - right).max() > 100 * ATOL
