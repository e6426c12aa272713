"""The Python client and the ``client``/``serve`` command lines against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mlaas4hep.cli import main
from mlaas4hep.client import Client, ClientError
from mlaas4hep.localservers import free_port

from ..terminal import cli, on_pty, terminal_env
from .conftest import HTTP, ServerProcess
from .oracle import ATOL


def _cli(argv: list[str]) -> int:
    """The ``mlaas4hep`` command line in this process: exit status, messages on stderr."""
    return main(argv)


def test_python_client_roundtrip(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        with Client(srv.url, token=srv.token) as c:
            assert c.upload(tth_bundle.path, name="m1") == {"name": "m1", "version": 1, "status": "installed"}
            assert c.upload(tth_bundle.path, name="m1")["version"] == 2
            assert [m["name"] for m in c.models()] == ["m1"]
            x = tth_bundle.x[:1000]
            np.testing.assert_allclose(c.predict("m1", x), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
            np.testing.assert_allclose(c.predict("m1", x[0]), tth_bundle.oracle.score(x[:1]), atol=ATOL)
            np.testing.assert_allclose(
                c.predict("m1", x[:5], version=1), tth_bundle.oracle.score(x[:5]), atol=ATOL
            )
            raw = {k: v[:50] for k, v in tth_bundle.raw.items()}
            np.testing.assert_allclose(c.predict("m1", raw=raw), tth_bundle.oracle.score_raw(raw), atol=ATOL)
            assert c.metadata("m1")["versions"] == ["1", "2"]
            c.load("m1", {"max_batch": 8, "max_delay_ms": 0.5})
            assert json.loads((tmp_path / "repo" / "m1" / "serving.json").read_text()) == {
                "max_batch": 8,
                "max_delay_ms": 0.5,
            }
            cfg = HTTP.get(srv.url + "/v2/models/m1/config").json()["dynamic_batching"]
            assert cfg == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 500}
            np.testing.assert_allclose(c.predict("m1", x[:3]), tth_bundle.oracle.score(x[:3]), atol=ATOL)
            assert c.delete("m1", version=1)["deleted_versions"] == [1]
            with pytest.raises(ClientError) as err:
                c.predict("m1", x[:, :3])
            assert err.value.status == 400 and "expects [n, 32]" in err.value.message
            with pytest.raises(ValueError):
                c.predict("m1")
        with Client(srv.url) as anonymous, pytest.raises(ClientError) as err:
            anonymous.delete("m1")
        assert err.value.status == 401
    finally:
        srv.stop()


def test_cli_client_commands(tmp_path, tth_bundle, capsys, monkeypatch):
    srv = ServerProcess(tmp_path / "repo").start()
    token_file = tmp_path / "tok"
    token_file.write_text(srv.token)
    base = ["client", "--url", srv.url]
    try:
        assert _cli(base + ["upload", str(tth_bundle.path), "--name", "cli"]) == 1  # no token
        err = capsys.readouterr().err
        assert err.startswith("error: the server answered 401: ") and "--token-file" in err
        assert len(err.splitlines()) == 1
        tok = ["--token-file", str(token_file)]
        assert _cli(base + [*tok, "--json", "upload", str(tth_bundle.path), "--name", "cli"]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == "cli"
        assert _cli(base + [*tok, "upload", str(tth_bundle.path), "--name", "cli"]) == 0
        assert capsys.readouterr().out == "installed cli version 2\n"
        assert _cli(base + ["models", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["name"] == "cli"
        x = tth_bundle.x[3]
        p = float(tth_bundle.oracle.score(x[None])[0, 0])
        values = ",".join(repr(float(v)) for v in x)
        assert _cli(base + ["--json", "predict", "cli", "--values", values]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got[0][0] == pytest.approx(p, abs=ATOL)
        # for people: each class with its label, the likeliest first
        assert _cli(base + ["predict", "cli", "--values", values]) == 0
        out = capsys.readouterr().out
        first, second = sorted([("ttH", p), ("ttbar", 1 - p)], key=lambda t: -t[1])
        assert out == f"{first[0]} {first[1]:.4g}  {second[0]} {second[1]:.4g}\n"
        rows = tmp_path / "rows.json"
        rows.write_text(json.dumps(tth_bundle.x[:4].tolist()))
        assert _cli(base + ["predict", "cli", "--input", str(rows), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 4
        assert _cli(base + ["predict", "cli", "--input", str(rows)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4 and all(
            re.fullmatch(r"\d: tt\w+ [\d.e-]+  tt\w+ [\d.e-]+", ln) for ln in lines
        )
        assert _cli(base + ["predict", "clj", "--values", values]) == 1
        assert (
            capsys.readouterr().err
            == "error: the server answered 404: unknown model 'clj'; did you mean 'cli'?\n"
        )
        assert _cli(base + ["predict", "cli", "--values", "1,2,3"]) == 1
        err = capsys.readouterr().err
        assert "expects [n, 32]" in err and len(err.splitlines()) == 1
        monkeypatch.setenv("MLAAS4HEP_TOKEN", srv.token)
        assert _cli(base + ["delete", "cli", "--version", "2"]) == 0
        assert capsys.readouterr().out == "deleted cli version 2\n"
        assert _cli(base + ["--json", "delete", "cli"]) == 0
        assert json.loads(capsys.readouterr().out)["deleted_versions"] == [1]
    finally:
        srv.stop()


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        _cli(["serve", "--help"])
    out = capsys.readouterr().out
    assert "Open Inference Protocol" in out and "--max-delay-ms" in out and "MLAAS4HEP_TOKEN" in out
    with pytest.raises(SystemExit):
        _cli(["client", "--help"])
    assert "predict-root" in capsys.readouterr().out


def test_python_m_serve_help_says_serve_once():
    r = subprocess.run([sys.executable, "-m", "mlaas4hep.serve", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: python -m mlaas4hep.serve [-h]") and "serve serve" not in r.stdout
    assert "--repo DIR" in r.stdout and "exit status:" in r.stdout


def test_predict_root_from_the_command_line(server, tth_bundle, capsys):
    """The positional URL of the ROOT file no longer overwrites --url (the server's address)."""
    f = str(tth_bundle.data_dir / "ttH_0.root")
    base = ["client", "--url", server.url, "predict-root", "tth", f, "--stop", "5"]
    assert _cli(base) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = tth_bundle.oracle.score_raw({k: v[:5] for k, v in tth_bundle.raw.items()})[:, -1]
    assert len(lines) == 5
    for i, (line, p) in enumerate(zip(lines, expected)):
        assert line.startswith(f"entry {i}  ")
        got = dict(re.findall(r"(ttH|ttbar) ([\d.e-]+)", line))
        assert float(got["ttH"]) == pytest.approx(float(p), abs=1e-3)
        assert float(got["ttbar"]) == pytest.approx(1 - float(p), abs=1e-3)
    assert _cli([*base, "--csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("entry,") and header.endswith(",ttbar,ttH")
    assert _cli([*base, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["scores"]) == 5
    # by name, as the help says ("under the server's --data-dir"); a file outside: no token hint
    assert _cli([*base[:5], "ttH_0.root", "--stop", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert _cli([*base[:5], "/etc/hostname"]) == 1
    err = capsys.readouterr().err
    assert "outside its data directories" in err and "token" not in err, err


def test_predict_raw_takes_an_awkward_record_array(server, tth_bundle):
    """``tree.arrays([...])`` as it comes: in process (extra fields ignored) and through the client."""
    import uproot

    from mlaas4hep import bundle

    pred = bundle.load(tth_bundle.path)
    with uproot.open(tth_bundle.data_dir / "ttH_0.root") as f:
        records = f["Events"].arrays([*pred.preprocessor.inputs, "event"], entry_stop=50)
    expected = tth_bundle.oracle.score_raw({k: v[:50] for k, v in tth_bundle.raw.items()})
    np.testing.assert_allclose(pred.predict_raw(records), expected, atol=ATOL)
    only = records[pred.preprocessor.inputs]
    np.testing.assert_allclose(Client(server.url).predict("tth", raw=only), expected, atol=ATOL)


def test_predict_root_orders_and_names_as_its_friend_tree(server, tth_bundle, capsys, tmp_path):
    """The rows list the classes in the --csv header's order; --json has the friend tree's branches."""
    import uproot

    f = str(tth_bundle.data_dir / "ttH_0.root")
    base = ["client", "--url", server.url, "predict-root", "tth", f, "--stop", "5"]
    assert _cli([*base, "--csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header == ["entry", "run", "luminosityBlock", "event", "ttbar", "ttH"]
    assert _cli(base) == 0
    for line in capsys.readouterr().out.splitlines():
        assert re.findall(r"\b(ttH|ttbar) [\d.e-]+", line) == header[-2:], line
    assert _cli([*base, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert _cli([*base, "--out", str(tmp_path / "friend.root")]) == 0
    capsys.readouterr()
    friend = uproot.open(tmp_path / "friend.root")["scores"]
    assert list(friend.keys()) == ["entry", "run", "luminosityBlock", "event", "score"]
    assert list(got) == [*friend.keys(), "scores"]  # "scores", the old name, stays for its readers
    np.testing.assert_allclose(got["score"], friend["score"].array(library="np"), rtol=1e-6)
    assert got["scores"] == [[s] for s in got["score"]]
    res = Client(server.url).predict_root("tth", f, entry_stop=5)
    np.testing.assert_array_equal(res["score"], res["scores"][:, 0])


def test_client_errors_are_one_line(tmp_path):
    """Server down, a typo in --values: one line each, exit 1 and 2, no traceback (unless --debug)."""
    url = f"http://127.0.0.1:{free_port()}"
    rc, text = on_pty(cli("client", "--url", url, "models"), timeout=60)
    assert rc == 1
    assert text == f"error: cannot connect to {url}: is `mlaas4hep serve` running? (--url or $MLAAS4HEP_URL)"
    rc, text = on_pty(cli("client", "--url", url, "predict", "tth", "--values", "0.3,abc"), timeout=60)
    assert rc == 2 and len(text.splitlines()) == 1, text
    assert "'abc' is not a number" in text and "Traceback" not in text
    r = subprocess.run(
        cli("--debug", "client", "--url", url, "status"), capture_output=True, text=True, env=terminal_env()
    )
    assert r.returncode == 1 and "Traceback" in r.stderr and "ConnectError" in r.stderr


def test_models_and_status_are_tables(server, capsys):
    assert _cli(["client", "--url", server.url, "models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"┃ model\s*┃ versions", out) and re.search(r"│ tth\s*│ 1\s*│ onnx", out), out
    assert _cli(["client", "--url", server.url, "status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"│ status\s*│ ok", out) and re.search(r"│ models\s*│ tth", out), out


def test_serve_says_where_it_is(tmp_path, tth_bundle, data_dir):
    from .conftest import install_copy

    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, "--data-dir", str(data_dir)).start()
    try:
        lines = srv.log.read_text().splitlines()
        # a second server on the same port: one line, exit 1 (uvicorn alone exits 3)
        again = [sys.executable, "-m", "mlaas4hep.serve", "--repo", str(repo), "--port", str(srv.port)]
        r = subprocess.run(again, capture_output=True, text=True, env=terminal_env(), timeout=60)
    finally:
        srv.stop()
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        f"error: cannot listen on 127.0.0.1:{srv.port}: address already in use; "
        "is another server running there? Choose another --port\n"
    )
    assert lines[0] == f"mlaas4hep serve: {srv.url}  (stop with Ctrl-C)"
    assert lines[1] == f"  repository:   {repo.resolve()}"
    assert lines[2] == "  models:       tth (v1)"
    assert lines[3].startswith("  auth:         token required to upload, delete, load and unload")
    assert lines[4].startswith(f"  predict_root: local files under {data_dir}; ")
    assert "remote URLs" in lines[4]  # which ones depends on the server's remote options
