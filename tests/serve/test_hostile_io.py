"""predict_root against the network and the file system, uploads, staging (issue 10, problems 7-8).

What an operator relies on: by default no client can make the server connect
anywhere; requests to a storage server that never answers cannot hold the
threads that health, inference and repository calls need, nor the shutdown;
a FIFO in a data directory is refused; an upload beyond the limit is cut while
it streams; a crash's staging leftovers are removed whatever the process ids.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx

from mlaas4hep.bundle_archive import pack_directory

from .conftest import HTTP, ServerProcess, install_copy


class Tarpit:
    """A TCP server on loopback that accepts connections and never answers (a hung storage server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


#: ``--root-timeout`` of the hung-storage test: the hung requests end after it, with a 400.
ROOT_TIMEOUT = 12


def _predict_root(url: str, body: dict, timeout: float = 120) -> httpx.Response:
    with httpx.Client(timeout=timeout) as c:
        return c.post(url + "/v2/models/tth/predict_root", json=body)


# ----------------------------------------------------------------- problem 7
def test_remote_urls_are_off_by_default(tmp_path, tth_bundle):
    """Without --allow-remote, every remote URL gets the same 403 whatever the host or port
    (so the answers tell nothing about the network), and nothing is connected to."""
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    pit = Tarpit()
    srv = ServerProcess(repo).start()
    try:
        answers = set()
        for url in (
            f"root://127.0.0.1:{pit.port}//f.root",
            f"http://127.0.0.1:{pit.port}/f.root",
            "https://127.0.0.1:1/f.root",
            "root://10.255.255.1//store/f.root",
        ):
            r = HTTP.post(srv.url + "/v2/models/tth/predict_root", json={"url": url})
            assert r.status_code == 403, r.text
            answers.add(r.json()["error"])
        assert len(answers) == 1 and "--allow-remote" in answers.pop()
        assert pit.conns == []
    finally:
        srv.stop()
        pit.close()


def test_hung_storage_cannot_starve_the_server(tmp_path, tth_bundle):
    """predict_root to a host that never answers: a bounded number run (the rest get 429 at once),
    each ends with a 4xx at --root-timeout, and meanwhile health, inference, metadata and the
    repository (which shares nothing with predict_root) answer. Shutdown does not wait for them."""
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    pit = Tarpit()
    srv = ServerProcess(repo, "--allow-remote", "127.0.0.1", "--root-timeout", str(ROOT_TIMEOUT)).start()
    url = f"http://127.0.0.1:{pit.port}/f.root"
    pool = ThreadPoolExecutor(12)
    try:
        hung = [pool.submit(_predict_root, srv.url, {"url": url}) for _ in range(12)]
        done, running = _refusals(hung)
        refused = [f.result() for f in done]
        assert refused and {r.status_code for r in refused} == {429}, [r.text for r in refused]
        assert all(r.headers.get("retry-after") for r in refused)
        assert running  # the others are held by the hung storage server
        # the hung requests wait ROOT_TIMEOUT s; these must not (half of it each, at most)
        quick = httpx.Client(timeout=ROOT_TIMEOUT / 2)
        assert quick.get(srv.url + "/v2/health/live").status_code == 200
        assert quick.post(srv.url + "/v2/repository/index").status_code == 200
        assert quick.get(srv.url + "/models").status_code == 200
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}]}
        assert quick.post(srv.url + "/v2/models/tth/infer", json=body).status_code == 200
        r = quick.post(
            srv.url + "/upload?name=other", content=pack_directory(tth_bundle.path), headers=srv.admin
        )
        assert r.status_code == 200, r.text
        assert not any(f.done() for f in running)  # all of the above answered while they hang
        for f in running:
            r = f.result()
            assert r.status_code == 400 and f"within {ROOT_TIMEOUT} s" in r.json()["error"], r.text
        # a new batch, then shutdown while they hang: the server exits anyway
        hung = [pool.submit(_predict_root, srv.url, {"url": url}) for _ in range(2)]
        _wait(hung[0], 1)
        srv.proc.send_signal(2)
        srv.proc.wait(15)  # raises TimeoutExpired if the shutdown waits for the hung reads
    finally:
        srv.stop()
        pit.close()
        pool.shutdown(wait=False, cancel_futures=True)


def _refusals(hung: list, first: float = 8, quiet: float = 2) -> tuple[set, set]:
    """``(done, not done)`` once the refusals are in: the first answer (within ``first`` s), then
    ``quiet`` s without another (the 429s come at once; the others wait for the storage server)."""
    done, running = wait(hung, timeout=first, return_when=FIRST_COMPLETED)
    while running:
        more, running = wait(running, timeout=quiet, return_when=FIRST_COMPLETED)
        if not more:
            break
        done |= more
    return done, running


def _wait(f, seconds) -> bool:
    try:
        f.result(timeout=seconds)
    except Exception:
        pass
    return f.done()


def test_fifo_in_data_dir_is_refused(tmp_path, tth_bundle):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "pipe.root")
    (data / "link.root").symlink_to(data / "pipe.root")
    srv = ServerProcess(repo, "--data-dir", str(data)).start()
    try:
        for name in ("pipe.root", "link.root"):
            r = _predict_root(srv.url, {"url": str(data / name)}, timeout=20)
            assert r.status_code == 400 and "is not a regular file" in r.json()["error"], r.text
        r = _predict_root(srv.url, {"url": "/dev/zero"}, timeout=20)
        assert r.status_code == 403
        srv.proc.send_signal(2)
        srv.proc.wait(15)
    finally:
        srv.stop()


# ----------------------------------------------------------------- problem 8
def _content_length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_chunked_multipart_upload_is_cut_at_the_limit(tmp_path):
    """A multipart upload without Content-Length, far beyond --max-upload-mb: the 413 comes while
    the body streams, long before all of it is sent (nothing past the limit is spooled)."""
    srv = ServerProcess(tmp_path / "repo", "--max-upload-mb", "1").start()
    try:
        boundary = "xyzzy"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="b.tar.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n"
        ).encode()
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall(
            (
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                f"Authorization: Bearer {srv.token}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
            ).encode()
        )
        chunk = b"\0" * 65536
        sent, total = 0, 256 * 2**20  # would be 256 MB
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < total:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    break
        except OSError:  # the server closed the connection after answering
            pass
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
            piece = s.recv(65536)  # headers and body may arrive in separate segments
            if not piece:
                break
            data += piece
        answer = data.decode(errors="replace")
        s.close()
        assert answer.startswith("HTTP/1.1 413"), answer[:300]
        assert "exceeds the limit" in answer
        assert sent < 32 * 2**20, sent
        assert not [p for p in (srv.repo / ".staging").iterdir() if not p.name.endswith(".lock")]
        assert HTTP.get(srv.url + "/v2/health/live").status_code == 200
    finally:
        srv.stop()


def test_staging_leftovers_are_cleaned_by_lock_not_pid(tmp_path):
    """Leftovers whose name carries a live PID (PID 1 is alive in every container) are removed;
    a staging folder whose lock is held by a live process (here: this test) is kept."""
    staging = tmp_path / "repo" / ".staging"
    staging.mkdir(parents=True)
    for name in ("upload-1-abc", f"upload-{os.getpid()}-def", "delete-1-x"):
        (staging / name).mkdir()
        (staging / name / "model.onnx").write_bytes(b"half")
    (staging / "upload-dead").mkdir()
    (staging / "upload-dead.lock").write_text("")  # lock file of a crashed process: nobody holds it
    (staging / "upload-live").mkdir()
    fd = os.open(staging / "upload-live.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        assert sorted(p.name for p in staging.iterdir()) == ["upload-live", "upload-live.lock"]
    finally:
        srv.stop()
        os.close(fd)


def test_upload_and_delete_leave_no_staging(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        r = HTTP.post(srv.url + "/upload", content=pack_directory(tth_bundle.path), headers=srv.admin)
        assert r.status_code == 200, r.text
        r = HTTP.delete(srv.url + "/delete/tth", headers=srv.admin)
        assert r.status_code == 200, r.text
        assert list((srv.repo / ".staging").iterdir()) == []
    finally:
        srv.stop()
