"""The repository never loses a version: an upload, then a delete of the version before it,
while clients ask for the repository index (issue 24, point 1), on a real server."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from mlaas4hep.bundle_archive import pack_directory

from .conftest import ServerProcess
from .store_helpers import small_bundle

CYCLE_SECONDS = 5.0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_upload_then_delete_previous_under_index_requests_keeps_the_new_version(tmp_path, workers):
    data = pack_directory(small_bundle(tmp_path / "b"))
    srv = ServerProcess(tmp_path / "repo", "--workers", workers).start(timeout=90)
    stop = threading.Event()
    index_errors: list[str] = []

    def ask_index() -> None:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                r = c.post(srv.url + "/v2/repository/index")
                if r.status_code != 200:
                    index_errors.append(f"{r.status_code} {r.text[:200]}")

    clients = [threading.Thread(target=ask_index) for _ in range(4)]
    lost: list[str] = []
    cycles = 0
    try:
        with httpx.Client(timeout=30, headers=srv.admin) as c:
            assert c.post(srv.url + "/upload?name=m&version=1", content=data).status_code == 200
            for t in clients:
                t.start()
            deadline = time.monotonic() + CYCLE_SECONDS
            k = 1
            while time.monotonic() < deadline:
                k += 1
                r = c.post(srv.url + f"/upload?name=m&version={k}", content=data)
                assert r.status_code == 200, r.text
                r = c.delete(srv.url + f"/delete/m?version={k - 1}")
                assert r.status_code == 200, r.text
                cycles += 1
                ready = c.get(srv.url + f"/v2/models/m/versions/{k}/ready")
                if ready.status_code != 200 or not (srv.repo / "m" / str(k) / "bundle.json").is_file():
                    lost.append(f"cycle {cycles}: version {k}: {ready.status_code} {ready.text[:200]}")
                    c.post(srv.url + f"/upload?name=m&version={k}", content=data)  # go on from a sane state
    finally:
        stop.set()
        for t in clients:
            if t.is_alive():
                t.join(30)
        srv.stop()
    print(f"workers={workers}: {cycles} cycles, {len(lost)} lost versions, {len(index_errors)} index errors")
    assert cycles >= 10
    assert lost == [], f"{len(lost)} of {cycles} cycles lost the new version: {lost[:3]}"
    assert index_errors == []
