"""A TCP proxy on loopback that delays every byte by a fixed time each way: a network's round trip.

``python bench/_delayproxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS`` forwards
``127.0.0.1:LISTEN_PORT`` to ``127.0.0.1:TARGET_PORT``; what it reads from
either side is written to the other ``ONE_WAY_MS`` after it arrived, in order,
with no bandwidth limit. So a client through it sees a round trip of twice
that, as between two machines of a facility (0.1-0.5 ms) or two sites (10-30
ms). The kernel's ``netem`` does this where it is available. Here it is not:
the machine's kernel has no ``sch_netem``.

Each direction of a connection is a reader thread, which stamps what it reads
with its deadline, and a writer thread, which sleeps until then. That is
precise to about 0.1 ms. An event loop's timers are not: uvloop's run on a
millisecond clock cached per turn, so a delay came out up to 1 ms off, by a
different amount from one run to the next.

The proxy prints ``ready`` once it listens, and runs until it is killed;
:func:`delayed` runs one for the time of a ``with`` block.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Forward ``src`` to ``dst``, each read ``delay`` seconds after it arrived; closes ``dst`` at the end."""
    line: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def write() -> None:
        while True:
            due, data = line.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=write, daemon=True).start()
    while True:
        try:
            data = src.recv(1 << 20)
        except OSError:
            data = b""
        line.put((time.monotonic() + delay, data))
        if not data:
            return


def serve(listen: int, target: int, delay: float) -> None:
    server = socket.create_server(("127.0.0.1", listen), backlog=128)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pipe, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, delay), daemon=True).start()


@contextmanager
def delayed(address: str, rtt_ms: float) -> Iterator[str]:
    """``address`` (``host:port``) itself, or (``rtt_ms`` > 0) the address of a proxy in front of it
    with that round trip."""
    if rtt_ms <= 0:
        yield address
        return
    from mlaas4hep.localservers import free_port

    port = free_port()
    target = address.rsplit(":", 1)[1]
    cmd = [sys.executable, str(Path(__file__).resolve()), str(port), target, str(rtt_ms / 2)]
    proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        yield f"127.0.0.1:{port}"
    finally:
        proxy.kill()
        proxy.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1e3)
