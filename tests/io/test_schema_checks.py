"""Every file is checked against the dataset's schema, whatever its position.

Three files, one odd (a string branch, a fixed-size ``float[3]`` array, or a
branch jagged in it but flat elsewhere, or the reverse), first, middle or
last: ``raise`` names the odd file, the branch and both types; ``skip`` reads
exactly the good files' events.
"""

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.io import (
    Dataset,
    SchemaMismatchError,
    UnsupportedBranchError,
)

#: Events per file: distinct, so the counts say which files were read.
EVENTS = {"good_a": 300, "good_b": 500, "odd": 700}

#: What the odd file holds instead of the good files' types, and the error it gets.
ODD = {
    "string": ("x", "string", UnsupportedBranchError, r"has type 'char\*'; expected a number.*'float'"),
    "fixed": ("x", np.dtype((np.float32, (3,))), UnsupportedBranchError, r"has type 'float\[3\]'.*'float'"),
    "jagged": (
        "x",
        "var * float32",
        SchemaMismatchError,
        r"has type 'float\[\]' \(jagged\), but 'float' \(flat\)",
    ),
    "flat": (
        "Jet_pt",
        np.float32,
        SchemaMismatchError,
        r"has type 'float' \(flat\), but 'float\[\]' \(jagged\)",
    ),
}


def values(kind, n: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "string":
        return ak.Array([f"s{i}" for i in range(n)])
    if kind == "var * float32":
        return ak.Array([rng.random(i % 4).astype(np.float32) for i in range(n)])
    if isinstance(kind, np.dtype):
        return rng.random((n, *kind.shape)).astype(np.float32)
    return rng.random(n).astype(kind)


def write(path, n: int, seed: int, odd: tuple | None = None) -> None:
    """A TTree ``Events`` with a flat ``x``, a jagged ``Jet_pt`` and ``event``; ``odd`` replaces one branch."""
    types = {"event": np.int64, "x": np.float32, "Jet_pt": "var * float32"}
    if odd:
        types[odd[0]] = odd[1]
    with uproot.recreate(path) as f:
        t = f.mktree("Events", types)
        t.extend(
            {name: values(kind, n, seed) if name != "event" else np.arange(n) for name, kind in types.items()}
        )


def files_with_odd(tmp_path, odd_kind: str, position: int) -> list:
    names = ["good_a", "good_b"]
    names.insert(position, "odd")
    paths = []
    for i, name in enumerate(names):
        p = tmp_path / f"{i}_{name}.root"
        write(p, EVENTS[name], seed=i, odd=ODD[odd_kind] if name == "odd" else None)
        paths.append(p)
    return paths


def config(paths, on_error: str) -> dict:
    return {
        "tree": "Events",
        "files": [{"path": str(p), "label": i} for i, p in enumerate(paths)],
        "branches": ["x", "Jet_pt"],
        "jagged": {"Jet": 3},
        "normalize": "none",
        "shuffle": False,
        "workers": 0,
        "cache_dir": None,
        "chunk_size": 250,
        "on_error": on_error,
    }


@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("odd_kind", list(ODD))
def test_odd_file_raises_naming_file_branch_and_both_types(tmp_path, odd_kind, position):
    paths = files_with_odd(tmp_path, odd_kind, position)
    branch, _, error, types = ODD[odd_kind]
    odd = paths[position].name
    with pytest.raises(error, match=rf"branch '{branch}' in file '[^']*{odd}' {types}") as info:
        Dataset.from_config(config(paths, "raise")).to_numpy()
    assert info.value.file == str(paths[position]) and info.value.branch == branch
    assert "2 of 3 files" in str(info.value)


@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("odd_kind", list(ODD))
def test_skip_reads_exactly_the_good_files(tmp_path, odd_kind, position):
    paths = files_with_odd(tmp_path, odd_kind, position)
    ds = Dataset.from_config(config(paths, "skip"))
    ch = ds.to_chunk()
    good = [i for i in range(3) if i != position]
    assert len(ch) == EVENTS["good_a"] + EVENTS["good_b"]
    assert sorted(set(ch.event_id[:, 0].tolist())) == good
    for i in good:  # every event of each good file, once
        n = EVENTS["good_a" if paths[i].name.endswith("good_a.root") else "good_b"]
        assert sorted(ch.event_id[ch.event_id[:, 0] == i, 1].tolist()) == list(range(n))
    assert [r["file"] for r in ds.report] == [str(paths[position])]
    assert ds.report[0]["type"] == ODD[odd_kind][2].__name__
    assert ds.reference_files == [str(paths[i]) for i in good]
    # the values are the good files' own, as uproot reads them
    x = np.concatenate([uproot.open(paths[i])["Events"]["x"].array(library="np") for i in good])
    np.testing.assert_array_equal(ch.x[:, ds.feature_names.index("x")], x)


def test_a_string_branch_never_sets_the_schema_even_first_of_two(tmp_path):
    odd, good = tmp_path / "0_odd.root", tmp_path / "1_good.root"
    write(odd, 700, seed=0, odd=ODD["string"])
    write(good, 300, seed=1)
    ds = Dataset.from_config(config([odd, good], "skip"))
    x, _ = ds.to_numpy()
    assert len(x) == 300 and [r["file"] for r in ds.report] == [str(odd)]
    with pytest.raises(UnsupportedBranchError, match=r"'x' in file '[^']*0_odd\.root' has type 'char\*'"):
        Dataset.from_config(config([odd, good], "raise")).to_numpy()


def test_a_string_branch_in_every_file_is_a_configuration_error(tmp_path):
    paths = [tmp_path / f"{i}.root" for i in range(2)]
    for i, p in enumerate(paths):
        write(p, 100, seed=i, odd=ODD["string"])
    with pytest.raises(
        UnsupportedBranchError, match=r"'x' in file '[^']*0\.root' has type 'char\*'.*exclude"
    ):
        Dataset.from_config(config(paths, "skip")).to_numpy()
