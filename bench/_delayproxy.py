"""A TCP proxy on loopback that delays every byte by a fixed time each way: a network's round trip.

``python bench/_delayproxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS`` forwards
``127.0.0.1:LISTEN_PORT`` to ``127.0.0.1:TARGET_PORT``; what it reads from
either side is written to the other ``ONE_WAY_MS`` later, in order, with no
bandwidth limit. So a client through it sees a round trip of twice that, as
between two machines of a facility (0.1-0.5 ms) or two sites (10-30 ms). The
kernel's ``netem`` does this where it is available. Here it is not: the
machine's kernel has no ``sch_netem``.

The proxy prints ``ready`` once it listens, and runs until it is killed;
:func:`delayed` runs one for the time of a ``with`` block.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Pipe(asyncio.Protocol):
    """One direction's reader: what it reads goes to ``peer`` after the delay."""

    def __init__(self, delay: float):
        self.delay = delay
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # read before the other side was connected
        self.task: asyncio.Task[None] | None = None  # the connection to the server, under way

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        asyncio.get_running_loop().call_later(self.delay, self._forward, data)

    def _forward(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        elif not self.peer.is_closing():
            self.peer.write(data)

    def connect(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for data in self.early:
            peer.write(data)
        self.early.clear()

    def connection_lost(self, exc) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, lambda: self.peer is not None and self.peer.close())


async def main(listen: int, target: int, delay: float) -> None:
    loop = asyncio.get_running_loop()

    def accepted() -> _Pipe:
        down = _Pipe(delay)  # from the client

        async def connect() -> None:
            up_transport, up = await loop.create_connection(lambda: _Pipe(delay), "127.0.0.1", target)
            assert down.transport is not None
            up.connect(down.transport)  # the server's bytes go to the client
            down.connect(up_transport)  # and the client's to the server

        down.task = loop.create_task(connect())  # kept: the loop holds tasks weakly
        return down

    server = await loop.create_server(accepted, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


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
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1e3))
