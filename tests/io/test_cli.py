"""The command line: generate, specs and stream end to end, and helpful --help."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
import uproot
import yaml

from mlaas4hep.cli import main
from mlaas4hep.generate import generate_events


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("generate", "inspect", "specs", "stream", "root://"):
        assert word in out


def test_generate_specs_stream(tmp_path, capsys):
    out = tmp_path / "data"
    assert (
        main(
            [
                "generate",
                "--out",
                str(out),
                "--events",
                "3000",
                "--files",
                "1",
                "--seed",
                "5",
                "--compression",
                "lz4",
            ]
        )
        == 0
    )
    t = uproot.open(str(out / "ttH_0.root"))["Events"]
    assert t.num_entries == 3000 and "LZ4" in str(t.file.compression)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "files": [{"path": "data/ttH_*.root", "label": 1}, {"path": "data/ttbar_*.root", "label": 0}],
                "branches": ["MET_pt", "Jet_pt"],
                "jagged": {"Jet": 4},
                "chunk_size": 1000,
                "cache_dir": str(tmp_path / "cache"),
            }
        )
    )
    assert main(["specs", str(cfg), "-o", str(tmp_path / "s.json"), "--workers", "0"]) == 0
    assert main(["stream", str(cfg), "--epochs", "2", "--workers", "0", "--batch-size", "500"]) == 0
    text = capsys.readouterr().out
    assert "6,000 events" in text and "epoch 1:" in text and "label-1 fraction 0.500" in text


def test_errors_are_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"files": [{"path": str(tmp_path / "missing.root"), "label": 1}], "workers": 0})
    )
    assert main(["stream", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.root" in err


def test_generator_is_deterministic_and_physical():
    a = generate_events(20_000, True, np.random.default_rng(3))
    b = generate_events(20_000, True, np.random.default_rng(3))
    np.testing.assert_array_equal(a["MET_pt"], b["MET_pt"])
    bkg = generate_events(20_000, False, np.random.default_rng(4))
    import awkward as ak

    def nb(ev):
        return ak.to_numpy(ak.sum(ev["Jet"].btagDeepFlavB > 0.5, axis=1))

    def ht(ev):
        return ak.to_numpy(ak.sum(ev["Jet"].pt, axis=1))

    # signal: more b-tags and harder HT, but the distributions overlap
    assert nb(a).mean() > nb(bkg).mean() + 0.5
    assert ht(a).mean() > ht(bkg).mean()
    assert (nb(bkg) >= 3).mean() > 0.05 and (nb(a) <= 2).mean() > 0.1
    pt = a["Jet"].pt
    assert ak.all(pt[:, :-1] >= pt[:, 1:])  # jets ordered by pT, as in NanoAOD
    assert ak.min(ak.flatten(pt)) > 25 and ak.max(abs(ak.flatten(a["Jet"].eta))) < 2.5


def test_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "mlaas4hep.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "mlaas4hep" in r.stdout


def _stream_with(tmp_path, data_dir, capsys, **overrides) -> tuple[int, str]:
    from ..conftest import sample_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(sample_config(data_dir, None, nevts=500, **overrides)))
    rc = main(["stream", str(cfg)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "selection, advice",
    [
        ("nJet >= 4 && MET_pt > 20", "write 'and' instead of '&&'"),
        ("nJet >= 4 || MET_pt > 20", "write 'or' instead of '||'"),
        ("!(nJet >= 4)", "write 'not' instead of '!'"),
    ],
)
def test_expression_errors_teach_python_operators(tmp_path, data_dir, capsys, selection, advice):
    rc, err = _stream_with(tmp_path, data_dir, capsys, selection=selection)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: invalid expression {selection!r}: invalid syntax; {advice}")


def test_wrong_names_get_a_did_you_mean(tmp_path, data_dir, capsys):
    rc, err = _stream_with(tmp_path, data_dir, capsys, selection="nJets >= 4")
    assert rc == 2 and len(err.splitlines()) == 1
    assert "'nJets'" in err and "did you mean 'nJet'" in err
    rc, err = _stream_with(tmp_path, data_dir, capsys, new_variables={"HT": "summ(Jet_pt)"})
    assert (
        rc == 2
        and err == "error: in expression 'summ(Jet_pt)': unknown function 'summ'; did you mean 'sum'?\n"
    )


def test_inspect_of_an_unreachable_server_is_one_line(capsys):
    from mlaas4hep.localservers import free_port

    port = free_port()
    assert main(["inspect", f"root://127.0.0.1:{port}//x.root"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: cannot read file 'root://127.0.0.1:{port}//x.root': cannot connect to 127.0.0.1:{port} "
        "(Connection refused); is the server up, and the host and port right?\n"
    )


def test_help_documents_exit_statuses_and_debug(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "--debug" in out
    for line in ("  1    the command ran and failed", "  2    usage or configuration error"):
        assert line in out


def test_every_option_has_help():
    from mlaas4hep.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if action.help is None and not isinstance(action, argparse._SubParsersAction):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")

    assert list(walk(build_parser(), "mlaas4hep")) == []


def test_short_options_mean_one_thing():
    from mlaas4hep.cli import build_parser

    meanings: dict[str, set[str]] = {}

    def walk(parser):
        for action in parser._actions:
            for opt in action.option_strings:
                if len(opt) == 2 and opt != "-h":
                    longs = [o for o in action.option_strings if o.startswith("--")]
                    meanings.setdefault(opt, set()).add(longs[0] if longs else opt)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    assert meanings["-o"] == {"--out"}
    assert all(len(v) == 1 for v in meanings.values()), meanings


def test_usage_errors_are_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", "stream", "c.yaml", "--epochs", "two"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("mlaas4hep stream: error: argument --epochs: 'two' is not a whole number")


def test_output_into_a_closed_pipe_is_quiet():
    """``mlaas4hep inspect --json f.root | head -1``: no BrokenPipeError, exit 0."""
    from ..conftest import SHARED_DATA

    nano = SHARED_DATA / "nano_dy.root"
    if not nano.exists():
        pytest.skip("the real NanoAOD file is not here")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlaas4hep.cli", "inspect", "--json", str(nano)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"{\n"
    proc.stdout.close()  # as `head -1` does
    assert proc.wait(120) == 0
    assert proc.stderr.read() == b""


def test_inspect_of_a_missing_remote_file_is_one_line(xrootd, capsys):
    url = xrootd.url("missing.root")
    assert main(["inspect", url]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot read file {url!r}: no such file")


def test_inspect_filter_that_matches_nothing_suggests(data_dir, capsys):
    assert main(["inspect", str(data_dir / "ttH_0.root"), "--filter", "Jt_*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: no branch matches 'Jt_*' in {data_dir / 'ttH_0.root'}; did you mean 'Jet_*'"
    )


def test_counts_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path), "--events", "-5"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "mlaas4hep generate: error: argument --events: -5 is too small: give 1 or more "
        "(see: mlaas4hep generate --help)\n"
    )


@pytest.mark.parametrize("where", ["first", "last"])
def test_debug_anywhere_shows_the_traceback(tmp_path, capsys, where):
    argv = ["stream", str(tmp_path / "nope.yaml")]
    argv = ["--debug", *argv] if where == "first" else [*argv, "--debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1].startswith("error: configuration file")
