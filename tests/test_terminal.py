"""Every command that shows progress, run on a real pseudo-terminal as a person would.

Progress bars draw (with their rate) only on a terminal; the same commands in a
pipe write no control characters at all.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlaas4hep import MODELS_DIR
from mlaas4hep.localservers import free_port

from .terminal import bar_lines, cli, in_background, on_pty, terminal_env

#: The small sample's train.yaml (tests/conftest.py) without the plots and the report: what this
#: module reads is the terminal (tests/train/test_report.py covers the figures).
SMALL_TRAINING = {"plots": False}


def test_generate_shows_a_bar_with_its_rate(tmp_path):
    rc, text = on_pty(cli("generate", "--out", str(tmp_path / "d"), "--events", "20000"))
    assert rc == 0, text
    assert bar_lines(text, "generate"), text
    assert "wrote 2 files, 40,000 events" in text


def test_specs_on_a_terminal(small):
    rc, text = on_pty(cli("specs", "dataset.yaml", "-o", "specs.json"), cwd=small)
    assert rc == 0, text
    assert bar_lines(text, "specs"), text
    assert (small / "specs.json").exists()


def test_stream_on_a_terminal(small):
    rc, text = on_pty(cli("stream", "dataset.yaml", "--epochs", "2", "--no-cache"), cwd=small)
    assert rc == 0, text
    assert bar_lines(text, "epoch 0") and bar_lines(text, "epoch 1"), text
    assert "epoch 1: 6,000 events" in text


@pytest.fixture(scope="module")
def train_on_a_pty(small, tmp_path_factory):
    """``mlaas4hep train`` for two epochs on a pty, run once for the two tests that read its screen:
    ``(exit status, text, output directory)``."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("pty-train") / "run"
    rc, text = on_pty(cli("train", "train.yaml", "-o", str(out), "--epochs", "2"), cwd=small)
    return rc, text, out


def test_train_on_a_terminal(train_on_a_pty):
    rc, text, out = train_on_a_pty
    assert rc == 0, text
    assert bar_lines(text, "epoch 0"), text
    assert "val AUC" in text and (out / "bundle").is_dir()


def test_train_bars_end_complete_and_each_epoch_prints_its_line(train_on_a_pty):
    """The bar's total is an estimate (events less those held out): it ends complete (N/N, green),
    and each epoch's validation loss and AUC are printed without -v."""
    rc, text, _ = train_on_a_pty
    assert rc == 0, text
    for epoch in (0, 1):
        done, total = re.search(r"(\d[\d,]*)/(\d[\d,]*)", bar_lines(text, f"epoch {epoch}")[-1]).groups()
        assert done == total, text
        line = [ln for ln in text.splitlines() if ln.startswith(f"epoch {epoch}: ")]
        assert len(line) == 1 and re.match(
            rf"epoch {epoch}: train loss [\d.]+, val loss [\d.]+, val AUC [\d.]+, val accuracy [\d.]+, "
            rf"[\d,]+ events/s \((stream|cache)\)$",
            line[0],
        ), text


def test_stream_says_when_an_epoch_comes_from_the_cache(small):
    rc, text = on_pty(cli("stream", "dataset.yaml", "--epochs", "2"), cwd=small)
    assert rc == 0, text
    rc, again = on_pty(cli("stream", "dataset.yaml"), cwd=small)
    assert rc == 0, again
    (line,) = [ln for ln in again.splitlines() if ln.startswith("epoch 0: ")]
    assert line.endswith(
        "(label-1 fraction 0.500), read from the decoded cache, not the files (--no-cache decodes them)"
    ), again
    rc, fresh = on_pty(cli("stream", "dataset.yaml", "--no-cache"), cwd=small)
    (line,) = [ln for ln in fresh.splitlines() if ln.startswith("epoch 0: ")]
    assert line.endswith("(label-1 fraction 0.500)"), fresh


def test_workflow_on_a_terminal(small, tmp_path):
    """MLaaS4HEP's command: files.txt, labels, params.json, a model file."""
    pytest.importorskip("torch")
    import json

    (tmp_path / "files.txt").write_text(f"{small}/data/ttH_0.root\n{small}/data/ttbar_0.root\n")
    params = {"nevts": -1, "chunk_size": 1000, "epochs": 1, "batch_size": 256, "branch": "Events"}
    params["selected_branches"] = ["MET_pt", "nJet", "Jet_pt"]
    (tmp_path / "params.json").write_text(json.dumps(params))
    argv = ["workflow", "--files", "files.txt", "--labels", "1,0", "--params", "params.json"]
    argv += ["--model", str(MODELS_DIR / "tth_mlp.py"), "--cache-dir", str(tmp_path / "cache"), "-o", "out"]
    rc, text = on_pty(cli(*argv), cwd=tmp_path)
    assert rc == 0, text
    assert bar_lines(text, "epoch 0"), text
    assert "val AUC" in text and (tmp_path / "out" / "bundle").is_dir()


def test_pipes_get_no_control_characters(tmp_path):
    r = subprocess.run(
        cli("generate", "--out", str(tmp_path / "d"), "--events", "2000"),
        capture_output=True,
        env=terminal_env(),
    )
    assert r.returncode == 0, r.stderr
    for stream in (r.stdout, r.stderr):
        assert b"\x1b" not in stream and "━".encode() not in stream
    assert r.stdout.decode().split() == [
        str(tmp_path / "d" / "ttH_0.root"),
        str(tmp_path / "d" / "ttbar_0.root"),
    ]


def test_ci_gets_no_bar_even_on_a_terminal(tmp_path):
    rc, text = on_pty(cli("generate", "--out", str(tmp_path / "d"), "--events", "2000"), CI="true")
    assert rc == 0 and "━" not in text and "wrote 2 files" in text


@pytest.fixture(scope="module", autouse=True)
def demo_on_a_terminal(request, tmp_path_factory):
    """The demo (about half a minute) starts with this module, when its test is selected, and
    runs on its own pty while the module's other tests run; its test waits for it."""
    if not any(item.name == "test_demo_on_a_terminal" for item in request.session.items):
        return None
    tmp_path = tmp_path_factory.mktemp("pty-demo")
    argv = cli("demo", "--out", str(tmp_path / "demo"), "--events", "3000", "--files", "1", "--epochs", "1")
    return in_background([*argv, "--workers", "0"], cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_demo_on_a_terminal(demo_on_a_terminal):
    rc, text = demo_on_a_terminal.result()
    assert rc == 0, text[-3000:]
    assert bar_lines(text, "generate") and bar_lines(text, "epoch 0"), text[-3000:]
    assert "served: 3/3 query types matched" in text


def _typos(tmp_path) -> list[tuple[list[str], int, str]]:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a directory\n")
    free = f"http://127.0.0.1:{free_port()}"
    return [
        (["specs", "nope.yaml"], 2, "error: configuration file 'nope.yaml' does not exist"),
        (["stream", "nope.yaml", "--epochs", "1"], 2, "error: configuration file 'nope.yaml' does not exist"),
        (["train", "nope.yaml"], 2, "error: configuration file 'nope.yaml' does not exist"),
        (["workflow", "--files", "f.txt", "--model", "m.py", "--params", "p.json"], 2, "error: "),
        (["inspect", "nofile.root"], 1, "error: cannot read file 'nofile.root': no such file"),
        (["generate", "--out", str(a_file / "d"), "--events", "10"], 1, "error: not a directory: "),
        (["serve", "--repo", str(a_file / "repo"), "--port", "1"], 1, "error: "),
        (["client", "--url", free, "status"], 1, f"error: cannot connect to {free}: "),
        (["client", "predict", "tth"], 2, "error: predict needs --values X,Y,... (one row) or --input FILE"),
        (
            ["demo", "--events", "abc"],
            2,
            "mlaas4hep demo: error: argument --events: invalid int value: 'abc'",
        ),
        (["stream", "--epoch", "2"], 2, "mlaas4hep stream: error: "),
        (
            ["trian", "x.yaml"],
            2,
            "mlaas4hep: error: argument COMMAND: invalid choice: 'trian' (did you mean 'train'?)",
        ),
        (
            ["client", "sumbit", "x.yaml"],
            2,
            "mlaas4hep client: error: argument COMMAND: invalid choice: 'sumbit' (did you mean 'submit'?)",
        ),
        (
            ["serve", "--repo", "m", "--max-bach", "4"],
            2,
            "mlaas4hep: error: unrecognized arguments: --max-bach 4; did you mean --max-batch? (see: ",
        ),
        (
            ["xyzzy"],
            2,
            "mlaas4hep: error: argument COMMAND: invalid choice: 'xyzzy' (choose from 'generate', ",
        ),
    ]


def test_every_command_fails_with_a_message_not_a_traceback(tmp_path):
    typos = _typos(tmp_path)
    with ThreadPoolExecutor(
        max_workers=2
    ) as pool:  # each is mostly a Python start-up: two cores, two at a time
        runs = list(
            pool.map(lambda args: on_pty(cli(*args), cwd=tmp_path, timeout=120), [t[0] for t in typos])
        )
    for (args, status, start), (rc, text) in zip(typos, runs):
        assert (rc, "Traceback" in text) == (status, False), (args, text)
        # a bar drawn before the failure is erased from the screen (it stays in the byte stream)
        message = [ln for ln in text.splitlines() if "━" not in ln]
        assert 1 <= len(message) <= 2 and message[0].startswith(start), (args, text)
