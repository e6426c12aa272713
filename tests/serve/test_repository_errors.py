"""The repository says what went wrong with domain errors; each front end picks its own codes."""

from __future__ import annotations

import grpc
import pytest

from mlaas4hep.bundle_archive import pack_directory, read_archive
from mlaas4hep.serve import errors
from mlaas4hep.serve.grpc_server import error_code
from mlaas4hep.serve.http import http_status
from mlaas4hep.serve.repository import Repository

from .conftest import install_copy


@pytest.fixture
def repo(tmp_path, tth_bundle):
    install_copy(tmp_path / "repo", tth_bundle.path, "tth")
    return Repository(tmp_path / "repo")


def test_repository_raises_domain_errors(repo, tth_bundle):
    files = read_archive(pack_directory(tth_bundle.path))
    cases = [
        (lambda: repo.resolve("ghost"), errors.ModelNotFound, 404, grpc.StatusCode.NOT_FOUND),
        (lambda: repo.resolve("tth", 7), errors.ModelNotFound, 404, grpc.StatusCode.NOT_FOUND),
        (lambda: repo.resolve("tth", "x"), errors.InvalidRequest, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: repo.install(files, "tth", 1), errors.VersionConflict, 409, grpc.StatusCode.ALREADY_EXISTS),
        (
            lambda: repo.install({**files, "bundle.json": b"[]"}, "x"),
            errors.BundleInvalid,
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: repo.set_serving("tth", {"nope": 1}),
            errors.InvalidRequest,
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, cls, status, code in cases:
        with pytest.raises(cls) as err:
            call()
        assert http_status(err.value) == status and error_code(err.value) == code, cls
    repo.unload("tth")
    with pytest.raises(errors.ModelUnloaded) as err:
        repo.predictor("tth", 1)
    assert http_status(err.value) == 400 and error_code(err.value) == grpc.StatusCode.UNAVAILABLE


def test_a_broken_version_on_disk_is_unavailable(repo, tmp_path):
    (tmp_path / "repo" / "tth" / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(errors.ModelBroken) as err:
        repo.predictor("tth", 1)
    assert http_status(err.value) == 503 and error_code(err.value) == grpc.StatusCode.UNAVAILABLE
    assert "does not load" in str(err.value)


def test_a_version_deleted_while_its_sessions_load_is_not_found(repo, tmp_path, monkeypatch):
    """A served model loads two onnxruntime sessions (the second for small calls); a delete
    between the two reads of ``model.onnx`` makes the version not found (404), never a 500
    (it was ``FileNotFoundError`` once, under upload/delete churn with ``--workers 2``)."""
    import shutil

    from mlaas4hep import bundle

    loaded = bundle.session

    def load_then_delete(path, *args):
        s = loaded(path, *args)
        shutil.rmtree(tmp_path / "repo" / "tth" / "1", ignore_errors=True)  # as a delete would
        return s

    monkeypatch.setattr(bundle, "session", load_then_delete)
    with pytest.raises(errors.ModelNotFound, match="model 'tth' has no version 1"):
        repo.predictor("tth", 1)
