"""The compiled request path (serve/native.py): used only when it matches, the same answers either way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mlaas4hep.serve import native

from .conftest import HTTP, ServerProcess, repo_of


def _opted_out() -> bool:
    return os.environ.get(native.ENV, "").strip().lower() in ("0", "no", "false", "off")


@pytest.mark.skipif(_opted_out(), reason=f"{native.ENV}=0: the suite runs on the interpreted modules")
def test_the_suite_runs_on_the_compiled_request_path():
    """`make test` compiles first, so the tests exercise what `mlaas4hep serve` runs."""
    state = native.state()
    assert state.active, f"{state.reason} (run `make compile`, or set {native.ENV}=0 to test the .py files)"
    from mlaas4hep.serve import batching, grpcwire, httpfront

    for mod in (batching, grpcwire, httpfront):
        assert mod.__file__ is not None and mod.__file__.endswith(".so"), mod.__file__
        assert mod.__file__.startswith(str(native.COMPILED)), mod.__file__


@pytest.fixture
def built(tmp_path):
    """A copy of the compiled folder whose manifest a test may spoil."""
    if not native.check().active:
        pytest.skip("nothing compiled to copy")
    folder = tmp_path / "_compiled"
    shutil.copytree(native.COMPILED, folder)
    return folder


def _spoil(folder, **changes):
    path = folder / native.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
    return manifest


def test_an_edited_source_gives_the_interpreted_modules(built):
    manifest = json.loads((built / native.MANIFEST).read_text())
    _spoil(built, modules={**manifest["modules"], "batching": "0" * 64})
    state = native.check(built)
    assert not state.active
    assert state.reason == "batching.py changed since it was compiled: run `mlaas4hep compile`"


def test_another_python_a_missing_file_or_no_manifest_give_the_interpreted_modules(built, monkeypatch):
    assert native.check(built).active
    build = built / json.loads((built / native.MANIFEST).read_text())["build"]
    for f in build.glob("httpfront.*"):
        f.write_bytes(f.read_bytes()[:100])  # a half-copied file
    assert native.check(built).reason.startswith(f"{build} lacks httpfront.")
    for f in build.glob("httpfront.*"):
        f.unlink()
    assert native.check(built).reason.startswith(f"{build} lacks httpfront.")
    _spoil(built, abi="cpython-312/.cpython-312-x86_64-linux-gnu.so")
    assert native.check(built).reason.startswith("compiled for cpython-312/")
    (built / native.MANIFEST).unlink()
    assert native.check(built).reason == "not compiled (run `mlaas4hep compile`)"
    monkeypatch.setenv(native.ENV, "0")
    assert native.check(native.COMPILED).reason == f"turned off by {native.ENV}=0"
    assert native.check(native.COMPILED, ignore_env=True).active


def test_a_changed_module_they_use_gives_the_interpreted_modules(built):
    """Compiled code checks the types of the modules it imports (the repository's, the errors')."""
    _spoil(built, dependencies="0" * 64)
    state = native.check(built)
    assert not state.active
    assert state.reason == "a module they use changed since they were compiled: run `mlaas4hep compile`"


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mlaas4hep.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_compile_check_says_what_servers_will_use():
    off = _cli("compile", "--check", env={native.ENV: "off"})
    assert off.returncode == 1
    assert off.stdout.strip() == f"not in use: turned off by {native.ENV}=off"
    if not native.check().active:
        pytest.skip("nothing compiled")
    on = _cli("compile", "--check", "--json")
    assert on.returncode == 0, on.stderr
    out = json.loads(on.stdout)
    assert out == {"compiled": True, "reason": native.check().reason, "folder": str(native.COMPILED)}


def test_compiled_and_interpreted_servers_answer_alike(tth_bundle, tmp_path_factory):
    """The same bytes for the same requests (JSON, and binary tensors as tritonclient sends them),
    and the banner says which path runs."""
    if not native.check().active:
        pytest.skip("nothing compiled")
    x = tth_bundle.x[:3]
    as_json = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary = {"content": head + x.tobytes(), "headers": {"Inference-Header-Content-Length": str(len(head))}}
    repo = repo_of(tmp_path_factory, "native", tth=tth_bundle.path)
    answers, banners = [], []
    for env in ({}, {native.ENV: "0"}):
        srv = ServerProcess(repo, env=env).start()
        try:
            url = f"{srv.url}/v2/models/tth/infer"
            r1, r2 = HTTP.post(url, json=as_json), HTTP.post(url, **binary)
            assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
            answers.append((r1.content, r2.content))
        finally:
            srv.stop()
        banners.append(srv.log.read_text())
    assert answers[0] == answers[1]
    scores = np.frombuffer(answers[0][1][-4 * len(x) :], np.float32)
    np.testing.assert_allclose(scores, tth_bundle.oracle.score(x).ravel(), rtol=1e-5)
    assert "  request path: compiled: compiled by mypyc" in banners[0]
    assert f"  request path: interpreted: turned off by {native.ENV}=0" in banners[1]


def test_the_groups_hold_every_compiled_module_once():
    """Each module is built into exactly one group's shared library, and the manifest lists them."""
    grouped = [m for g in native.GROUPS.values() for m in g]
    assert sorted(grouped) == sorted(native.MODULES) and len(set(grouped)) == len(grouped)
    state = native.check(ignore_env=True)
    if state.active:  # the suite's build (make test compiles first)
        assert [r.split("__mypyc")[0] for r in state.built["runtimes"]] == list(native.GROUPS)
