"""``mlaas4hep predict``: scores written as friend trees or Parquet, without a server.

Every score is compared with :func:`.conftest.reference_scores` (the bundle's
ONNX model on the preprocessing recomputed from ``bundle.json`` with numpy);
every friend tree with its input tree, read by uproot: the same number of
entries, and the same event ids entry by entry.
"""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

import mlaas4hep
from mlaas4hep.cli import main

from .conftest import reference_scores

IDS = ["run", "luminosityBlock", "event"]


def _check_friend(friend_path, input_path, bundle_dir, columns=("score",), tree="scores"):
    """The friend tree lines up with the input tree and holds the reference scores."""
    with uproot.open(friend_path) as f, uproot.open(input_path) as g:
        friend, events = f[tree], g["Events"]
        assert friend.num_entries == events.num_entries
        got = friend.arrays(library="np")
        ids = events.arrays([i for i in IDS if i in events], library="np")
        want = reference_scores(bundle_dir, events)
    assert list(got) == ["entry", *ids, *columns]
    np.testing.assert_array_equal(got["entry"], np.arange(events.num_entries))
    for k, v in ids.items():
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v)
    for i, c in enumerate(columns):
        assert got[c].dtype == np.float32
        np.testing.assert_allclose(got[c], want[:, i], rtol=0, atol=1e-6)
    return got


def test_friend_trees_of_a_trained_bundle(trained_bundle, data_dir, tmp_path, capsys):
    """Two files, 20,000 entries each, in chunks of 3,000 on two workers."""
    inputs = [data_dir / "ttH_0.root", data_dir / "ttbar_0.root"]
    meta = json.loads((trained_bundle / "bundle.json").read_text())
    assert meta["identifier"] == IDS  # written by training, from the dataset's identifier
    out = tmp_path / "scores"
    args = ["predict", str(trained_bundle), *map(str, inputs), "-o", str(out), "--chunk-size", "3000"]
    assert main([*args, "--workers", "2"]) == 0
    printed = capsys.readouterr()
    paths = [out / "ttH_0_scores.root", out / "ttbar_0_scores.root"]
    assert printed.out.split() == [str(p) for p in paths]
    assert "scored 40,000 entries of 2 files" in printed.err
    for p, i in zip(paths, inputs):
        got = _check_friend(p, i, trained_bundle)
        with uproot.open(p) as f:
            assert f["scores"]["score"].num_baskets == 7  # written chunk by chunk: ceil(20000 / 3000)
            prov = json.loads(str(f["mlaas4hep"]))
        assert (
            prov["model"] == meta["name"] and prov["input"] == str(i) and prov["labels"] == ["ttbar", "ttH"]
        )
        assert got["score"].min() > 0 and got["score"].max() < 1
    # the signal file scores higher than the background on average (a trained model, not noise)
    with uproot.open(paths[0]) as s, uproot.open(paths[1]) as b:
        assert s["scores/score"].array(library="np").mean() > b["scores/score"].array(library="np").mean()
    # the run directory works as the bundle too, and a rerun refuses to overwrite
    assert (
        main(["predict", str(trained_bundle.parent), str(inputs[0]), "-o", str(out), "--workers", "0"]) == 2
    )
    assert capsys.readouterr().err.strip() == (
        f"error: '{paths[0]}' exists; add --overwrite (overwrite=True) to replace it"
    )
    before = paths[0].stat().st_mtime_ns
    assert main(["predict", str(trained_bundle.parent), str(inputs[0]), "-o", str(out), "--overwrite"]) == 0
    assert paths[0].stat().st_mtime_ns != before
    _check_friend(paths[0], inputs[0], trained_bundle)
    assert not list(out.glob("*.part"))


def test_parquet_from_python(trained_bundle, data_dir, tmp_path):
    import pyarrow.parquet as pq

    src = data_dir / "ttbar_1.root"
    outs = mlaas4hep.predict(
        trained_bundle, [src], tmp_path / "one.parquet", format="parquet", workers=0, chunk_size=7_000
    )
    assert [(o.path, o.entries, o.ids, o.scores) for o in outs] == [
        (tmp_path / "one.parquet", 20_000, IDS, ["score"])
    ]
    pf = pq.ParquetFile(tmp_path / "one.parquet")
    assert pf.num_row_groups == 3  # one per chunk
    assert json.loads(pf.schema_arrow.metadata[b"mlaas4hep"])["input"] == str(src)
    table = pf.read().to_pydict()
    with uproot.open(src) as f:
        ids = f["Events"].arrays(IDS, library="np")
    for k in IDS:
        np.testing.assert_array_equal(table[k], ids[k])
    np.testing.assert_array_equal(table["entry"], np.arange(20_000))
    np.testing.assert_allclose(table["score"], reference_scores(trained_bundle, src)[:, 0], rtol=0, atol=1e-6)


def test_one_branch_per_class(multiclass_bundle, data_dir, tmp_path):
    """A 3-class model: score_<label> per class (the label made a plain name), the tree named as asked."""
    outs = mlaas4hep.predict(
        multiclass_bundle, str(data_dir / "ttH_1.root"), tmp_path, name="three", workers=0, chunk_size=8_000
    )
    assert outs[0].path == tmp_path / "ttH_1_three.root"
    assert outs[0].ids == IDS  # a bundle without 'identifier': NanoAOD's
    _check_friend(
        outs[0].path,
        data_dir / "ttH_1.root",
        multiclass_bundle,
        columns=("score_ttbar", "score_ttH", "score_tt_bb"),
        tree="three",
    )


def test_real_nanoaod(nano_bundle, data_dir, tmp_path):
    """CMSSW-written NanoAOD: 40 events each, and a file with none (an empty friend tree)."""
    names = ["nano_dy.root", "nano_dimuon.root", "nano_dy_empty.root"]
    # workers=0: each worker would open the 1,500-branch trees again (seconds each on a shared machine)
    outs = mlaas4hep.predict(
        nano_bundle, [str(data_dir / n) for n in names], tmp_path, chunk_size=16, workers=0
    )
    assert [o.entries for o in outs] == [40, 40, 0]
    for o, n in zip(outs, names):
        _check_friend(o.path, data_dir / n, nano_bundle)
    with uproot.open(outs[2].path) as f:
        assert f["scores"].keys() == ["entry", *IDS, "score"]


def test_missing_branch_names_file_and_branches(trained_bundle, data_dir, tmp_path, capsys):
    """Every file is checked before anything is written; the message names the file and the branches."""
    bad = tmp_path / "no_btag.root"
    with uproot.open(data_dir / "ttH_0.root") as f:
        arrays = f["Events"].arrays(
            ["run", "event", "MET_pt", "nJet", "Jet_pt"], entry_stop=100, library="np"
        )
    with uproot.recreate(bad) as f:
        f["Events"] = {"run": arrays["run"], "event": arrays["event"], "MET_pt": arrays["MET_pt"]}
    out = tmp_path / "out"
    rc = main(["predict", str(trained_bundle), str(data_dir / "ttH_0.root"), str(bad), "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: no branch matching 'nJet' in tree of file '{bad}'; model 'sklearn_sgd' reads it "
        "(and 'Jet_pt', 'Jet_eta', 'Jet_phi', 'Jet_mass', 'Jet_btagDeepFlavB') from tree 'Events', as in training"
    ), err
    assert not out.exists()  # nothing written, not even the good file's scores


def test_ids_asked_for_must_exist(trained_bundle, data_dir, tmp_path, capsys):
    src = str(data_dir / "ttH_0.root")
    assert main(["predict", str(trained_bundle), src, "-o", str(tmp_path), "--ids", "run,evnt"]) == 2
    assert "error: no branch matching 'evnt' in tree of file" in capsys.readouterr().err
    outs = mlaas4hep.predict(trained_bundle, src, tmp_path, ids=["event"], workers=0)
    with uproot.open(outs[0].path) as f:
        assert f["scores"].keys() == ["entry", "event", "score"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{data}/ttH_0.root", "{data}/ttbar_0.root", "-o", "{tmp}/o"],
            "is a file, not a bundle directory (runs/NAME/bundle)",
        ),
        (["{tmp}", "{data}/ttH_0.root", "-o", "{tmp}/o"], "has no bundle.json"),
        (["{bundle}", "{data}/nothing_*.root", "-o", "{tmp}/o"], "no file matches '{data}/nothing_*.root'"),
        (
            ["{bundle}", "{data}/ttH_0.rot", "-o", "{tmp}/o"],
            "no such file: '{data}/ttH_0.rot'; did you mean 'ttH_0.root'",
        ),
        (["{bundle}", "{data}/ttH_0.root", "--tree", "Evnts", "-o", "{tmp}/o"], "no tree 'Evnts' in file"),
        (
            ["{bundle}", "{data}/ttH_0.root", "{data}/ttH_1.root", "-o", "{tmp}/o.root"],
            "-o '{tmp}/o.root' names one file but 2 inputs are given: give a directory",
        ),
        (["{bundle}", "{data}/ttH_0.root", "-o", "{data}/ttH_0.root"], "is the input file itself"),
    ],
)
def test_usage_errors(args, message, trained_bundle, data_dir, tmp_path, capsys):
    fill = {"data": str(data_dir), "tmp": str(tmp_path), "bundle": str(trained_bundle)}
    assert main(["predict", *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(**fill) in err, err
    assert len(err.strip().splitlines()) <= 2


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for phrase in (
        "friend tree",
        "AddFriend",
        "--format {root,parquet}",
        "--chunk-size N, --step N",
        "--workers",
    ):
        assert phrase in text


def test_a_branch_of_another_type_names_the_file(trained_bundle, data_dir, tmp_path, capsys):
    """MET_pt jagged where the model was trained on a flat one: the error says which file and entries."""
    odd = tmp_path / "odd.root"
    with uproot.open(data_dir / "ttH_0.root") as f:
        arrays = f["Events"].arrays(entry_stop=50)
    jets = ak.zip({k[4:]: arrays[k] for k in arrays.fields if k.startswith("Jet_")})
    with uproot.recreate(odd) as f:  # Jet written back as nJet and Jet_*; MET_pt is jagged now
        f["Events"] = {
            "run": arrays["run"],
            "event": arrays["event"],
            "Jet": jets,
            "MET_pt": arrays["Jet_pt"],
        }
    assert main(["predict", str(trained_bundle), str(odd), "-o", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: cannot score entries 0-50 of '{odd}': "
        "input 'MET_pt' is jagged but the model expects one value per event"
    )
    assert not list((tmp_path / "o").glob("*"))  # the part file is gone


def test_a_short_run_ends_without_worker_tracebacks(trained_bundle, data_dir, tmp_path):
    """Scoring done before the worker processes are up must not leave them failing to start after the
    command ended (multiprocessing printed a FileNotFoundError traceback per worker)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [
        sys.executable,
        "-m",
        "mlaas4hep.cli",
        "predict",
        str(trained_bundle),
        str(data_dir / "ttH_0.root"),
    ]
    cmd += ["-o", str(tmp_path), "--workers", "2", "--chunk-size", "20000"]
    env = {**os.environ, "PYTHONPATH": os.path.join(root, "src")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(tmp_path / "ttH_0_scores.root")]
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr


def test_json_output(trained_bundle, data_dir, tmp_path, capsys):
    src = str(data_dir / "ttbar_0.root")
    assert main(["predict", str(trained_bundle), src, "-o", str(tmp_path), "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outputs"] == [
        {
            "input": src,
            "output": str(tmp_path / "ttbar_0_scores.root"),
            "entries": 20_000,
            "ids": IDS,
            "scores": ["score"],
        }
    ]
    assert out["entries"] == 20_000


def test_bundle_identifier_is_checked(trained_bundle, tmp_path):
    import shutil

    from mlaas4hep import bundle

    b = shutil.copytree(trained_bundle, tmp_path / "b")
    meta = json.loads((b / "bundle.json").read_text())
    meta["identifier"] = "run,event"
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(bundle.BundleError) as err:
        mlaas4hep.predict(b, [], tmp_path)
    assert str(err.value) == "bundle.json 'identifier' must be a list of at most 64 strings"
