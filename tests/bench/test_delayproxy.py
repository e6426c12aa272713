"""``bench/_delayproxy.py``: the round trip that ``--rtt-ms`` of the serving benchmarks adds."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _delayproxy import delayed


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=run, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_bytes_come_back_whole_in_order_one_round_trip_later():
    srv, port = _echo_server()
    payload = bytes(range(256)) * 4096  # 1 MiB
    with (
        delayed(f"127.0.0.1:{port}", 20.0) as url,
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as c,
    ):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        trips = []
        for _ in range(5):
            t0 = time.monotonic()
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
            trips.append(time.monotonic() - t0)
        threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
        got = bytearray()
        c.settimeout(10)
        while len(got) < len(payload):
            got += c.recv(1 << 20)
    srv.close()
    assert bytes(got) == payload
    assert 0.020 <= min(trips) < 0.020 + 0.015  # at least the round trip asked, and not much more
