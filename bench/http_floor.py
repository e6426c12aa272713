"""The floor of a Python HTTP server under perf_analyzer: ``python bench/http_floor.py``.

``python bench/http_floor.py [--seconds 3] [--rounds 2] [--clients 1,64]``

How fast can *any* server on one Python event loop answer Triton's
perf_analyzer? A canned server (an ``asyncio.Protocol`` on uvloop with
``TCP_NODELAY``, as uvicorn's) reads each HTTP/1.1 request, and answers an
inference with the bytes our real server answered to the same request line
and body size, computed once: no parsing of the tensors, no model, no
framework, one ``transport.write``. Everything else (metadata, config, the
statistics perf_analyzer reads around each window, with its inference counts
kept up to date) is our server's own answer. The real server (``bench/serve.py``'s
MLP, ``--max-batch 1024 --max-delay-ms 2``) is measured beside it,
alternating. The gap between the two is what our per-request work costs; the
canned server's figure is the most a one-process Python front end could reach
on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).parent))


class Canned(asyncio.Protocol):
    """One client connection of the canned server."""

    replies: ClassVar[dict[tuple[str, int], bytes]] = {}
    served = 0
    upstream = ("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (i := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:i].decode("latin-1").split("\r\n")
            m = re.search(r"(?im)^content-length:\s*(\d+)", "\n".join(head[1:]))
            n = int(m.group(1)) if m else 0
            if len(self.buf) < i + 4 + n:
                return
            body, self.buf = self.buf[i + 4 : i + 4 + n], self.buf[i + 4 + n :]
            method, path = head[0].split()[:2]
            key = (head[0], len(body))
            if path == "/served":  # for the benchmark: inferences answered so far
                body = str(Canned.served).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))  # type: ignore[attr-defined]
                continue
            reply = Canned.replies.get(key) if method == "POST" else None
            if reply is None:
                reply = self._ask(method, path, head[1:], body)
                if method == "POST":
                    Canned.replies[key] = reply
            if method == "POST":
                Canned.served += 1
            self.transport.write(reply)  # type: ignore[attr-defined]

    def _ask(self, method: str, path: str, lines: list[str], body: bytes) -> bytes:
        """Our real server's answer (with this server's inference counts in the statistics)."""
        c = http.client.HTTPConnection(*Canned.upstream)
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        headers.pop("Host", None)
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        if path.endswith("/stats"):
            data = re.sub(
                rb'"(inference_count|execution_count|count)":\d+', b'"\\1":%d' % Canned.served, data
            )
        keep = [(k, v) for k, v in r.getheaders() if k.lower() not in ("date", "server", "content-length")]
        head = f"HTTP/1.1 {r.status} {r.reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep)
        return (head + f"content-length: {len(data)}\r\n\r\n").encode("latin-1") + data


def _canned_served(where: str) -> float:
    import httpx

    return float(httpx.get(f"http://{where}/served").text)


def canned_main(port: int, upstream: str) -> None:
    import uvloop

    host, up = upstream.rsplit(":", 1)
    Canned.upstream = (host, int(up))

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", default="1,64", help="concurrencies (default %(default)s)")
    p.add_argument("--canned", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.canned:
        return canned_main(int(a.canned[0]), a.canned[1])

    from grpc_ab import _cpu, _served
    from serve import Server, make_bundle, perf_analyzer, run_pa

    from mlaas4hep.localservers import free_port

    pa = perf_analyzer()
    if pa is None:
        raise SystemExit("perf_analyzer not found (.ci/perf-analyzer.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="http-floor-"))
    make_bundle(work)
    srv = Server(work / "repo", "--max-batch", "1024", "--max-delay-ms", "2")
    ours = srv.url.removeprefix("http://")
    port = free_port()
    canned = subprocess.Popen([sys.executable, __file__, "--canned", str(port), ours])
    print(
        "| round | server | clients | req/s | p50 ms | p99 ms | server CPU µs/request | load avg |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    try:
        time.sleep(1.0)
        run_pa(pa, "http", ours, 8, 1.0)  # warm-up
        for rnd in range(1, a.rounds + 1):
            for conns in (int(c) for c in a.clients.split(",")):
                for name, where, pid in (
                    ("mlaas4hep", ours, srv.proc.pid),
                    ("canned", f"127.0.0.1:{port}", canned.pid),
                ):
                    count = _served if name == "mlaas4hep" else _canned_served
                    c0, n0 = _cpu(pid), count(srv if name == "mlaas4hep" else where)
                    r = run_pa(pa, "http", where, conns, a.seconds)
                    c1, n1 = _cpu(pid), count(srv if name == "mlaas4hep" else where)
                    n = n1 - n0
                    us = (c1 - c0) / max(n, 1) * 1e6
                    p50, p99 = (("–" if v is None else f"{v:.2f}") for v in (r["p50_ms"], r["p99_ms"]))
                    print(
                        f"| {rnd} | {name} | {conns} | {r['req_per_s']:,.0f} | {p50} | {p99} | {us:,.0f} "
                        f"| {os.getloadavg()[0]:.1f} |",
                        flush=True,
                    )
    finally:
        canned.kill()
        srv.stop()


if __name__ == "__main__":
    main()
