"""The repository as a small transactional store (issue 24): canonical versions, smoke-tested
uploads, read-only and KServe-style directories, crash repair, and memory returned after a large
batch. Real onnxruntime sessions, real processes; the servers are in test_store_server.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from mlaas4hep.serve import errors
from mlaas4hep.serve.http import http_status
from mlaas4hep.serve.inventory import parse_version
from mlaas4hep.serve.repository import Repository

from .store_helpers import bundle_files, endless_loop, huge_constant_of_shape, small_bundle


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return bundle_files(small_bundle(tmp_path_factory.mktemp("b") / "m"))


def leftovers(root) -> list[str]:
    """What a clean repository must not hold: staging or tombstone entries, half-written files."""
    staging = root / ".staging"
    found = [f".staging/{p.name}" for p in staging.iterdir()] if staging.is_dir() else []
    return found + [str(p.relative_to(root)) for p in root.rglob("*.tmp")]


@pytest.mark.parametrize(
    "bad", [" 1", "1 ", "+1", "01", "\uff11", "1\n", "0", "-1", "1.0", "1e3", "٣", 2**63, True]
)
def test_a_version_has_one_spelling(bad):
    with pytest.raises(errors.InvalidRequest, match="invalid model version"):
        parse_version(bad)


def test_versions_that_are_fine():
    assert [parse_version(v) for v in ("1", "42", 7, str(2**63 - 1), None, "", "latest")] == [
        1,
        42,
        7,
        2**63 - 1,
        None,
        None,
        None,
    ]


def test_the_same_version_is_refused_in_every_spelling(tmp_path, files):
    repo = Repository(tmp_path / "repo")
    repo.install(files, "m", 1)
    for spelling in ("01", "+1", " 1", "\uff11"):
        with pytest.raises(errors.InvalidRequest):
            repo.resolve("m", spelling)
        with pytest.raises(errors.InvalidRequest):
            repo.install(files, "m", spelling)
        with pytest.raises(errors.InvalidRequest):
            repo.delete("m", spelling)
    assert repo.versions("m") == [1]


def test_an_upload_that_fails_at_run_time_is_refused_before_it_is_installed(tmp_path, files):
    repo = Repository(tmp_path / "repo")
    with pytest.raises(errors.BundleInvalid) as err:
        repo.install({**files, "model.onnx": huge_constant_of_shape()}, "big")
    msg = str(err.value)
    assert msg.startswith("invalid bundle: model.onnx of 'the upload' fails on 2 example rows: ")
    assert "running ConstantOfShape node" in msg and "bad_alloc" in msg  # 2**40 floats: no memory
    assert str(tmp_path) not in msg and ".staging" not in msg
    assert (
        repo.names() == [] and not (tmp_path / "repo" / "big").exists() and leftovers(tmp_path / "repo") == []
    )


def test_an_upload_that_runs_for_ever_is_cut_off(tmp_path, files):
    repo = Repository(tmp_path / "repo", smoke_seconds=1.0)
    t = time.monotonic()
    with pytest.raises(errors.BundleInvalid, match=r"did not finish a run on 2 example rows within 1 s"):
        repo.install({**files, "model.onnx": endless_loop()}, "loop")
    assert time.monotonic() - t < 10
    assert repo.names() == [] and leftovers(tmp_path / "repo") == []


def test_errors_name_the_model_not_the_servers_directories(tmp_path, files):
    repo = Repository(tmp_path / "repo")
    with pytest.raises(errors.BundleInvalid) as err:
        repo.install({**files, "model.onnx": b"not onnx"}, "m")
    assert "'the upload' does not load" in str(err.value) and str(tmp_path) not in str(err.value)
    repo.install(files, "m", 1)
    repo.install(files, "m", 2)
    (tmp_path / "repo" / "m" / "1" / "bundle.json").unlink()  # broken on disk
    (tmp_path / "repo" / "m" / "2" / "model.onnx").write_bytes(b"junk")
    repo = Repository(tmp_path / "repo")  # a start: nothing loaded yet
    assert repo.broken == [{"name": "m", "version": "1", "error": "no bundle.json"}]
    with pytest.raises(errors.ModelBroken) as err:
        repo.predictor("m", 2)
    assert "'m/2' does not load" in str(err.value) and str(tmp_path) not in str(err.value)


def test_a_version_deleted_after_it_was_resolved_is_not_found_not_broken(tmp_path, files):
    repo = Repository(tmp_path / "repo")
    repo.install(files, "m", 1)
    repo.install(files, "m", 2)
    key = repo.resolve("m", 1)
    other = Repository(tmp_path / "repo")  # another process (a worker, a replica)
    other.delete("m", 1)
    repo.rescan()
    with pytest.raises(errors.ModelNotFound, match="model 'm' has no version 1"):
        repo.spec(*key)
    with pytest.raises(errors.ModelNotFound, match="model 'm' has no version 1"):
        repo.predictor(*key)


def test_a_version_deleted_while_a_scan_reads_it_is_gone_not_broken(tmp_path, files, monkeypatch):
    # another process's delete lands between the scan's listing and its reading of the version
    # (readers take no lock): the scan must see the version gone, never list it as broken
    from mlaas4hep.serve import inventory

    repo = Repository(tmp_path / "repo")
    repo.install(files, "m", 1)
    repo.install(files, "m", 2)
    (tmp_path / "repo" / "m" / "3").write_text("not a bundle")  # a real broken entry stays reported
    real = inventory.listdir
    monkeypatch.setattr(inventory, "listdir", lambda p: [*real(p), "4"] if p.name == "m" else real(p))
    Repository(tmp_path / "repo").delete("m", 2)
    repo.rescan()
    assert repo.versions("m") == [1]
    assert repo.broken == [{"name": "m", "version": "3", "error": "not a directory"}]


def test_a_read_only_repository_serves_and_refuses_every_change(tmp_path, files):
    Repository(tmp_path / "repo").install(files, "m", 1)
    for extra in (".lock", ".generation", ".staging"):
        p = tmp_path / "repo" / extra
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = sorted(p.name for p in (tmp_path / "repo").iterdir())
    repo = Repository(tmp_path / "repo", read_only=True)
    assert repo.read_only and repo.resolve("m") == ("m", 1)
    assert repo.predictor("m", 1).predict(np.zeros((3, 4), np.float32)).shape == (3, 1)
    assert [e["state"] for e in repo.index()] == ["READY"]
    calls = {
        "install a model": lambda: repo.install(files, "n"),
        "delete model 'm'": lambda: repo.delete("m", 1),
        "load model 'm'": lambda: repo.load("m"),
        "unload model 'm'": lambda: repo.unload("m"),
        "change the settings of model 'm'": lambda: repo.set_serving("m", {"max_batch": 4}),
    }
    for what, call in calls.items():
        with pytest.raises(errors.ReadOnlyRepository) as err:
            call()
        assert str(err.value).startswith(f"the repository 'repo' is read-only: cannot {what}")
        assert http_status(err.value) == 403
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == before  # nothing written
    Repository(tmp_path / "publisher").install(files, "m", 2)  # a new release where it is published
    shutil.copytree(tmp_path / "publisher" / "m" / "2", tmp_path / "repo" / "m" / "2")
    t = time.monotonic()
    while repo.resolve("m") != ("m", 2):
        assert time.monotonic() - t < 2.5, "a read-only repository's new version is served within 2 s"
        time.sleep(0.05)


def test_a_read_only_mount_is_detected(tmp_path, files):
    src = tmp_path / "src"
    Repository(src).install(files, "m", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount (needs root): {r.stderr.decode().strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        repo = Repository(ro)
        assert repo.read_only and repo.names() == ["m"]
        with pytest.raises(errors.ReadOnlyRepository, match="the repository 'ro' is read-only"):
            repo.install(files, "n")
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_a_kserve_style_directory_is_one_model(tmp_path, files):
    models = tmp_path / "mnt" / "models"  # what KServe's storage initializer leaves
    small_bundle(models, name="higgs")
    repo = Repository(models)
    assert (
        repo.read_only and repo.single and repo.names() == ["higgs"] and repo.resolve("higgs") == ("higgs", 1)
    )
    x = np.ones((2, 4), np.float32)
    assert repo.predictor("higgs", 1).predict(x).shape == (2, 1)
    with pytest.raises(errors.ReadOnlyRepository):
        repo.install(files, "n")
    assert sorted(p.name for p in models.iterdir()) == [
        "bundle.json",
        "labels.txt",
        "model.onnx",
        "params.json",
    ]


def test_a_half_written_state_file_is_ignored_and_leftovers_are_repaired(tmp_path, files):
    root = tmp_path / "repo"
    Repository(root).install(files, "m", 1)
    (root / ".state.json").write_text('{"unloaded": ["m"')  # cut mid-write (by another tool)
    (root / ".state.json.123.tmp").write_text("{")
    (root / "m" / "serving.json.77.tmp").write_text("{")
    (root / ".staging" / "upload-dead").mkdir()
    (root / ".staging" / "delete-dead.lock").write_text("")
    (root / ".staging" / "delete-dead").mkdir()
    repo = Repository(root)
    assert repo.is_ready("m") and repo.versions("m") == [1]
    assert leftovers(root) == []


# ---------------------------------------------------------------- crashes
CRASH = r"""
import os, signal, sys
from mlaas4hep.serve import repository, store
from mlaas4hep.bundle_archive import pack_directory, read_archive

point, root, src = sys.argv[1], sys.argv[2], sys.argv[3]

def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)

def after(fn, when=lambda *a, **k: True):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        if when(*a, **k):
            die()
        return out
    return wrapped

repo = repository.Repository(root)
files = read_archive(pack_directory(src))
if point == "staged":  # the upload is written and loaded in .staging, not yet renamed
    repository.Predictor.smoke_test = die
elif point == "renamed":  # the new version is in place, .generation not rewritten yet
    store.Store.bump = die
elif point == "tombstoned":  # the deleted version is in the tombstone, not yet removed
    store.shutil.rmtree = die
elif point == "state":  # .state.json.PID.tmp written, not yet renamed over
    store.os.replace = die
elif point == "locked":  # holding the writers' lock
    store.fcntl.flock = after(store.fcntl.flock, lambda fd, mode: mode == store.fcntl.LOCK_EX)
op = sys.argv[4]
if op == "install":
    repo.install(files, "m", 2)
elif op == "delete":
    repo.delete("m", 1)
else:
    repo.unload("m")
print("finished without the crash")
"""


@pytest.mark.parametrize(
    "point, op, versions",
    [
        ("staged", "install", [1]),
        ("renamed", "install", [1, 2]),
        ("locked", "install", [1]),
        ("tombstoned", "delete", [2]),
        ("state", "unload", [1]),
        ("locked", "delete", [1, 2]),
    ],
)
def test_a_writer_killed_mid_change_leaves_a_repository_the_next_start_repairs(
    tmp_path, files, point, op, versions
):
    src = small_bundle(tmp_path / "b")
    root = tmp_path / "repo"
    first = Repository(root)
    first.install(files, "m", 1)
    if op == "delete":
        first.install(files, "m", 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", CRASH, point, str(root), str(src), op],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
    repo = Repository(root)  # the next start: repairs, and is not blocked by the dead writer's lock
    assert leftovers(root) == []
    assert repo.versions("m") == versions
    for v in versions:
        assert repo.predictor("m", v).predict(np.zeros((1, 4), np.float32)).shape == (1, 1)
    assert repo.is_ready("m")  # an unload that never finished never happened
    first.sync()  # the process that was running all along sees the repaired directory
    assert first.versions("m") == versions
    repo.install(files, "m", 9)  # and writes again
    assert repo.versions("m") == [*versions, 9]


# ---------------------------------------------------------------- memory
MEMORY = r"""
import json, sys
import numpy as np
from mlaas4hep import bundle

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

p = bundle.load(sys.argv[1], threads=1, spinning=False)
p.predict(np.zeros((10, 32), np.float32))
x = np.random.default_rng(1).standard_normal((int(sys.argv[2]), 32)).astype(np.float32)
before = rss_mb()
y = p.predict(x)
after = rss_mb()
print(json.dumps({"request_mb": x.nbytes / 2**20, "before": before, "after": after, "rows": len(y)}))
"""


def test_memory_is_returned_after_a_large_batch(tmp_path):
    """A 61 MB request (500,000 rows of 32 features) through a model with a 256-wide hidden layer:
    the session keeps nothing of it after the call (with onnxruntime's arena it kept ~0.5 GB)."""
    path = small_bundle(tmp_path / "wide", n_in=32, hidden=256)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", MEMORY, str(path), "500000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    print(f"\n61 MB request: RSS {m['before']:.0f} -> {m['after']:.0f} MB")
    assert m["rows"] == 500_000 and 60 < m["request_mb"] < 62
    assert m["after"] - m["before"] < 40, m
