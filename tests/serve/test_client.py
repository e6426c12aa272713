"""The Python client and the ``client``/``serve`` command lines against a real server."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from mlaas4hep.client import Client, ClientError
from mlaas4hep.serve.cli import add_serve_commands

from .conftest import HTTP, ServerProcess


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlaas4hep")
    add_serve_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_python_client_roundtrip(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        with Client(srv.url, token=srv.token) as c:
            assert c.upload(tth_bundle.path, name="m1") == {"name": "m1", "version": 1, "status": "installed"}
            assert c.upload(tth_bundle.path, name="m1")["version"] == 2
            assert [m["name"] for m in c.models()] == ["m1"]
            x = tth_bundle.x[:1000]
            np.testing.assert_allclose(c.predict("m1", x), tth_bundle.predictor.predict(x), rtol=0, atol=1e-6)
            np.testing.assert_allclose(c.predict("m1", x[0]), tth_bundle.predictor.predict(x[:1]), atol=1e-6)
            np.testing.assert_allclose(
                c.predict("m1", x[:5], version=1), tth_bundle.predictor.predict(x[:5]), atol=1e-6
            )
            raw = {k: v[:50] for k, v in tth_bundle.raw.items()}
            np.testing.assert_allclose(
                c.predict("m1", raw=raw), tth_bundle.predictor.predict_raw(raw), atol=1e-6
            )
            assert c.metadata("m1")["versions"] == ["1", "2"]
            c.load("m1", {"max_batch": 8, "max_delay_ms": 0.5})
            assert json.loads((tmp_path / "repo" / "m1" / "serving.json").read_text()) == {
                "max_batch": 8,
                "max_delay_ms": 0.5,
            }
            cfg = HTTP.get(srv.url + "/v2/models/m1/config").json()["dynamic_batching"]
            assert cfg == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 500}
            np.testing.assert_allclose(c.predict("m1", x[:3]), tth_bundle.predictor.predict(x[:3]), atol=1e-6)
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
        assert "401" in capsys.readouterr().err
        assert (
            _cli(base + ["--token-file", str(token_file), "upload", str(tth_bundle.path), "--name", "cli"])
            == 0
        )
        assert json.loads(capsys.readouterr().out)["name"] == "cli"
        assert _cli(base + ["models"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["name"] == "cli"
        x = tth_bundle.x[3]
        assert _cli(base + ["predict", "cli", "--values", ",".join(repr(float(v)) for v in x)]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got[0][0] == pytest.approx(float(tth_bundle.predictor.predict(x[None])[0, 0]), abs=1e-6)
        rows = tmp_path / "rows.json"
        rows.write_text(json.dumps(tth_bundle.x[:4].tolist()))
        assert _cli(base + ["predict", "cli", "--input", str(rows)]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 4
        assert _cli(base + ["predict", "cli", "--values", "1,2,3"]) == 1
        assert "expects [n, 32]" in capsys.readouterr().err
        monkeypatch.setenv("MLAAS4HEP_TOKEN", srv.token)
        assert _cli(base + ["delete", "cli"]) == 0
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
