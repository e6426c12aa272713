"""Soak and fuzz the inference server with valid and hostile traffic, with faults injected (issue 10).

    .venv/bin/python bench/soak.py [--seconds 60] [--clients 32] [--fuzz-examples 40] [--out FILE]

1. builds a bundle with preprocessing (flat and jagged branches, a new variable) and starts
   ``python -m mlaas4hep.serve`` on 127.0.0.1 (``--data-dir`` with a FIFO in it,
   ``--allow-remote 127.0.0.1``, ``--root-timeout 10``);
2. runs ``--clients`` concurrent clients for ``--seconds``: a mix of valid requests (OIP
   infer with features and with raw branches, TFaaS ``/json``, metadata, ``/models``) and
   hostile ones (malformed tensors and JSON, a gzip bomb, versions above 2**63, predict_root
   to other hosts, to a FIFO, to ``/etc``, bad uploads). A valid request must get 200 and a
   hostile one a 4xx;
3. meanwhile injects faults, each checked to be survived (the server keeps answering, the
   good model keeps serving, ``/models`` answers 200): a version directory above 2**63 and a
   ``bundle.json`` with a 10**9 jagged length written into the repository, a corrupt
   ``serving.json``, predict_root requests to a storage server that never answers;
4. after the soak, ``kill -9`` during an upload and a restart on the same repository
   (the model is still served, no half version, no staging leftovers);
5. fuzzes every operation of ``/openapi.json`` with schemathesis (``--fuzz-examples`` each);
6. prints a Markdown table (requests served, 5xx count, faults injected and survived,
   server RSS at start and end of the soak) and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import soak_ops  # noqa: E402  (after the path set-up)

from mlaas4hep.localservers import free_port  # noqa: E402

TOKEN = "soak-token-0123456789"


def make_bundle(work: Path) -> Path:
    from mlaas4hep import bundle
    from mlaas4hep.io.preprocess import Preprocessor
    from tests.serve.conftest import mlp_onnx

    pre = Preprocessor(
        flat=["MET_pt", "HT"],
        jagged=[("Jet_pt", 6), ("Jet_eta", 6)],
        normalize="minmax",
        offset={"MET_pt": 0.0, "HT": 0.0, "Jet_pt": 0.0, "Jet_eta": -5.0},
        scale={"MET_pt": 0.01, "HT": 0.002, "Jet_pt": 0.01, "Jet_eta": 0.1},
        new_variables={"HT": "sum(Jet_pt)"},
    )
    return bundle.write(work / "m", mlp_onnx(pre.n_features), pre, ["b", "s"], name="m", framework="onnx")


class Server:
    def __init__(self, repo: Path, data: Path, log: Path):
        self.repo, self.data, self.log = repo, data, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.repo.parent / "token.txt").write_text(TOKEN)
        cmd = [sys.executable, "-m", "mlaas4hep.serve", "--repo", str(self.repo), "--port", str(self.port)]
        cmd += ["--token-file", str(self.repo.parent / "token.txt"), "--data-dir", str(self.data)]
        cmd += ["--allow-remote", "127.0.0.1", "--root-timeout", "10", "--max-upload-mb", "8"]
        self.grpc_port = free_port()
        cmd += ["--grpc-port", str(self.grpc_port), "--infer-timeout", "2"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start: " + self.log.read_text()[-2000:])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Tarpit:
    """Accepts TCP connections and never answers: a hung storage server."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return


def requests_mix(
    data: Path, bundle_dir: Path, bundle_tgz: bytes, bad_tgz: bytes
) -> list[tuple[str, str, str, dict, bool]]:
    """``(label, method, path, httpx kwargs, valid)``; valid ones must get 200, the others a 4xx."""
    x = {"name": "x", "datatype": "FP32", "shape": [1, 14], "data": [0.5] * 14}
    raw = {
        "inputs": [
            {"name": "MET_pt", "datatype": "FP32", "shape": [2], "data": [50.0, 20.0]},
            {"name": "Jet_pt", "datatype": "FP32", "shape": [2], "data": [[60.0, 40.0], [35.0]]},
            {"name": "Jet_eta", "datatype": "FP32", "shape": [2], "data": [[0.1, 1.0], [-2.0]]},
        ]
    }
    feats = json.loads((bundle_dir / "bundle.json").read_text())["inputs"]["features"]
    admin = {"Authorization": f"Bearer {TOKEN}"}
    bomb = gzip.compress(b"\0" * (80 * 2**20))
    return [
        ("infer features", "POST", "/v2/models/m/infer", {"json": {"inputs": [x]}}, True),
        ("infer raw", "POST", "/v2/models/m/infer", {"json": raw}, True),
        ("tfaas json", "POST", "/json", {"json": {"model": "m", "keys": feats, "values": [0.5] * 14}}, True),
        ("metadata", "GET", "/v2/models/m", {}, True),
        ("models", "GET", "/models", {}, True),
        ("ready", "GET", "/v2/health/ready", {}, True),
        ("datatype {}", "POST", "/v2/models/m/infer", {"json": {"inputs": [{**x, "datatype": {}}]}}, False),
        ("malformed JSON", "POST", "/v2/models/m/infer", {"content": b'{"inputs": ['}, False),
        (
            "huge shape",
            "POST",
            "/v2/models/m/infer",
            {"json": {"inputs": [{**x, "shape": [2**39, 14]}]}},
            False,
        ),
        (
            "gzip bomb",
            "POST",
            "/v2/models/m/infer",
            {"content": bomb, "headers": {"Content-Encoding": "gzip"}},
            False,
        ),
        ("version 2**86", "GET", "/v2/models/m/versions/99999999999999999999999999", {}, False),
        (
            "remote host",
            "POST",
            "/v2/models/m/predict_root",
            {"json": {"url": "root://10.1.2.3//f.root"}},
            False,
        ),
        ("/etc/passwd", "POST", "/v2/models/m/predict_root", {"json": {"url": "/etc/passwd"}}, False),
        ("FIFO", "POST", "/v2/models/m/predict_root", {"json": {"url": str(data / "pipe.root")}}, False),
        ("garbage upload", "POST", "/upload?name=g", {"content": b"not a tar", "headers": admin}, False),
        ("bad bundle.json", "POST", "/upload?name=bad", {"content": bad_tgz, "headers": admin}, False),
        (
            "huge version upload",
            "POST",
            f"/upload?name=m&version={10**30}",
            {"content": bundle_tgz, "headers": admin},
            False,
        ),
    ]


async def soak(srv: Server, mix: list, clients: int, seconds: float, stats: dict) -> None:
    deadline = time.monotonic() + seconds
    weights = [8 if valid else 1 for *_, valid in mix]

    async def client(i: int) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            while time.monotonic() < deadline:
                label, method, path, kw, valid = rng.choices(mix, weights)[0]
                try:
                    r = await c.request(method, path, **kw)
                except httpx.TransportError:
                    stats["transport errors"] += 1
                    continue
                stats["requests"] += 1
                stats["5xx"] += r.status_code >= 500
                ok = r.status_code == 200 if valid else 400 <= r.status_code < 500
                if not ok:
                    stats["unexpected"] += 1
                    stats.setdefault("unexpected_examples", Counter())[f"{label} -> {r.status_code}"] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))


def inject_faults(
    srv: Server, good_bundle: Path, tarpit: Tarpit, stop: threading.Event, faults: list
) -> None:
    """Faults during the soak; each is ``(name, survived)``."""

    def healthy() -> bool:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            x = {"name": "x", "datatype": "FP32", "shape": [1, 14], "data": [0.5] * 14}
            return (
                c.get("/v2/health/live").status_code == 200
                and c.get("/models").status_code == 200
                and c.post("/v2/models/m/infer", json={"inputs": [x]}).status_code == 200
            )

    def step(name: str, act) -> None:
        if stop.is_set():
            return
        try:
            act()
            survived = healthy()
        except Exception as err:
            survived = False
            name += f" ({type(err).__name__}: {err})"
        faults.append((name, survived))
        stop.wait(3)

    def huge_version():
        shutil.copytree(good_bundle, srv.repo / "m" / str(10**26))
        httpx.post(srv.url + "/v2/repository/index", timeout=30)

    def jagged_1e9():
        d = srv.repo / "wide" / "1"
        shutil.copytree(good_bundle, d)
        meta = json.loads((d / "bundle.json").read_text())
        meta["inputs"]["preprocessing"]["jagged"][0][1] = 10**9
        (d / "bundle.json").write_text(json.dumps(meta))
        httpx.post(srv.url + "/v2/repository/index", timeout=30)
        r = httpx.post(srv.url + "/v2/models/wide/infer", json={"inputs": []}, timeout=30)
        assert r.status_code == 404, r.text

    def bad_serving():
        (srv.repo / "m" / "serving.json").write_text('{"max_delay_ms": 1e300, "max_batch": -3}')
        httpx.post(srv.url + "/v2/repository/index", timeout=30)

    def hung_storage():
        url = f"http://127.0.0.1:{tarpit.port}/f.root"
        codes = Counter()

        def one():
            r = httpx.post(srv.url + "/v2/models/m/predict_root", json={"url": url}, timeout=60)
            codes[r.status_code] += 1

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        time.sleep(2)
        assert healthy()
        for t in threads:
            t.join()
        assert set(codes) <= {400, 429}, codes

    for name, act in (
        ("version directory above 2**63 on disk", huge_version),
        ("bundle.json with a 10**9 jagged length on disk", jagged_1e9),
        ("corrupt serving.json", bad_serving),
        ("predict_root x10 to a storage server that never answers", hung_storage),
    ):
        step(name, act)


def kill_mid_upload(srv: Server, big_tgz: bytes) -> tuple[str, bool]:
    """kill -9 while an upload streams, restart: the old model is served, nothing half-installed."""

    def slowly():
        for i in range(0, len(big_tgz), 4096):
            time.sleep(0.005)
            yield big_tgz[i : i + 4096]

    def upload():
        try:
            httpx.post(
                srv.url + "/upload?name=half",
                content=slowly(),
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
        except httpx.TransportError:
            pass

    t = threading.Thread(target=upload)
    t.start()
    time.sleep(0.5)
    srv.proc.kill()
    srv.proc.wait()
    t.join()
    srv.start()
    models = httpx.get(srv.url + "/models", timeout=30).json()
    served = {m["name"] for m in models if not m.get("broken")}
    leftovers = list((srv.repo / ".staging").iterdir())
    ok = "m" in served and "half" not in served and not leftovers
    return "kill -9 mid-upload, restart", ok


def markdown(r: dict) -> str:
    rows = [
        ("soak", f"{r['seconds']:.0f} s, {r['clients']} clients"),
        ("requests served (soak)", f"{r['soak']['requests']:,}"),
        ("  of which hostile", f"~{r['hostile_share']:.0%} by weight"),
        ("5xx (soak)", str(r["soak"]["5xx"])),
        ("wrong status (valid not 200, hostile not 4xx)", str(r["soak"]["unexpected"])),
        ("transport errors (soak)", str(r["soak"]["transport errors"])),
        ("faults injected / survived", f"{len(r['faults'])} / {sum(ok for _, ok in r['faults'])}"),
        (
            "server RSS at start / peak / end of soak",
            f"{r['rss_start']:.0f} / {r['rss_peak']:.0f} / {r['rss_end']:.0f} MB",
        ),
        *((f"  {k}", f"{v:,}") for k, v in sorted(r["ops"].items())),
        (
            "fuzzing (schemathesis)",
            f"{r['fuzz']['requests']:,} requests, {r['fuzz']['examples']} examples/operation",
        ),
        ("5xx (fuzzing)", str(r["fuzz"]["5xx"])),
    ]
    out = ["| figure | value |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows]
    out += ["", "Faults:", ""] + [
        f"- {name}: {'survived' if ok else '**NOT survived**'}" for name, ok in r["faults"]
    ]
    if r["soak"].get("unexpected_examples"):
        out += [
            "",
            "Unexpected statuses: "
            + ", ".join(f"{k} ×{v}" for k, v in r["soak"]["unexpected_examples"].items()),
        ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fuzz-examples", type=int, default=40)
    ap.add_argument("--out", help="write the Markdown table here")
    a = ap.parse_args()
    from mlaas4hep import bundle
    from mlaas4hep.bundle_archive import pack_directory
    from mlaas4hep.io.preprocess import Preprocessor
    from tests.serve.fuzzing import fuzz
    from tests.serve.test_bounded_work import looping_onnx

    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-soak-"))
    try:
        good = make_bundle(work)
        bad = work / "bad"
        shutil.copytree(good, bad)
        meta = json.loads((bad / "bundle.json").read_text())
        meta["inputs"]["preprocessing"]["jagged"][0][1] = 10**9
        (bad / "bundle.json").write_text(json.dumps(meta))
        data = work / "data"
        data.mkdir()
        os.mkfifo(data / "pipe.root")
        repo = work / "repo"
        (repo / "m").mkdir(parents=True)
        shutil.copytree(good, repo / "m" / "1")
        # a model that loops forever, put on disk (an upload would be smoke-tested and refused)
        loop_pre = Preprocessor(flat=[f"f{i}" for i in range(4)], jagged=[], normalize="none")
        bundle.write(repo / "loop" / "1", looping_onnx(), loop_pre, ["b", "s"], name="loop", framework="onnx")
        srv = Server(repo, data, work / "server.log").start()
        tarpit = Tarpit()
        mix = requests_mix(data, good, pack_directory(good), pack_directory(bad))
        stats: dict = Counter()
        for _ in range(50):  # warm up: sessions loaded, allocator settled
            httpx.post(srv.url + "/v2/models/m/infer", json=mix[1][3]["json"], timeout=30)
        rss_start = srv.rss_mb()
        faults: list = []
        stop = threading.Event()
        injector = threading.Thread(target=inject_faults, args=(srv, good, tarpit, stop, faults))
        injector.start()
        # issue 24: gRPC clients, an operator churning a model, the looping model and huge heads
        ops: Counter = Counter()
        deadline = time.monotonic() + a.seconds
        grpc_url = f"127.0.0.1:{srv.grpc_port}"
        rss = soak_ops.RssWatch(srv.proc.pid, TOKEN)
        extra = soak_ops.grpc_clients(grpc_url, 4, deadline, ops)
        extra.append(
            threading.Thread(
                target=soak_ops.churn, args=(srv.url, grpc_url, TOKEN, pack_directory(good), deadline, ops)
            )
        )
        extra.append(
            threading.Thread(target=soak_ops.hostile_faults, args=(srv.url, srv.port, deadline, ops, rss))
        )
        for t in extra[-2:]:
            t.start()
        asyncio.run(soak(srv, mix, a.clients, a.seconds, stats))
        stop.set()
        injector.join()
        for t in extra:
            t.join()
        rss_end = srv.rss_mb()
        faults.append(kill_mid_upload(srv, pack_directory(good) * 200))
        fz = fuzz(srv.url, TOKEN, "m", examples=a.fuzz_examples, seed=None)
        srv.stop()
        hostile = sum(1 for *_, v in mix if not v)
        result = {
            "seconds": a.seconds,
            "clients": a.clients,
            "hostile_share": hostile / (hostile + 8 * (len(mix) - hostile)),
            "soak": {"requests": 0, "5xx": 0, "unexpected": 0, "transport errors": 0, **stats},
            "faults": faults,
            "rss_start": rss_start,
            "rss_peak": max(rss.peak, rss_end),
            "rss_end": rss_end,
            "ops": dict(ops),
            "fuzz": {
                "requests": fz.requests,
                "5xx": fz.five_xx,
                "examples": a.fuzz_examples,
                "errors": fz.server_errors[:5],
            },
        }
        table = markdown(result)
        print(table)
        if fz.server_errors:
            print("fuzzing 5xx:", *fz.server_errors[:5], sep="\n  ")
        if a.out:
            Path(a.out).write_text(table + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
