"""The cost of handing single-row requests to another process and back: ``python bench/ipc_floor.py``.

A design issue 25 suggests for HTTP at Triton's speed: several front-end processes
(parsing, decoding, encoding) feeding one batcher process per model, so that
dynamic batching still sees every request. This measures the price of the hand-over
alone, before anyone builds it. One process plays the front ends: N requests in
flight, each a request id and one row of the MLP's 111 float32 (452 bytes), written
to a Unix socket. The other plays the batcher: it reads whatever has arrived, and
answers every request of that read with one write (id and one float32 score). Both
run uvloop, as the server does. Printed per number in flight: hand-overs per second,
and the CPU per hand-over of each side (the front end's includes its simulated
clients' futures).

Options: ``--inflight 1,8,64`` and ``--seconds 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import struct
import time

import uvloop

ROW = 111 * 4
REQUEST = 8 + ROW  # id, then the row
REPLY = 8 + 4  # id, then the score


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def batcher(sock: socket.socket) -> None:
    """Answer every whole request of each read with one write, until the other side closes."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    pending = b""
    while data := await reader.read(1 << 20):
        pending += data
        n = len(pending) // REQUEST
        if n:
            ids = [pending[i * REQUEST : i * REQUEST + 8] for i in range(n)]
            pending = pending[n * REQUEST :]
            writer.write(b"".join(i + b"\0\0\0\0" for i in ids))


async def front(sock: socket.socket, inflight: int, seconds: float) -> tuple[int, float, float]:
    """``inflight`` clients sending one request at a time: (hand-overs, wall seconds, CPU seconds)."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    loop = asyncio.get_running_loop()
    waiting: dict[bytes, asyncio.Future[None]] = {}
    row = bytes(ROW)

    async def replies() -> None:
        pending = b""
        while data := await reader.read(1 << 20):
            pending += data
            n = len(pending) // REPLY
            for i in range(n):
                waiting.pop(pending[i * REPLY : i * REPLY + 8]).set_result(None)
            pending = pending[n * REPLY :]

    async def client(k: int) -> int:
        sent = 0
        while time.monotonic() < end:
            rid = struct.pack("<II", k, sent)
            waiting[rid] = done = loop.create_future()
            writer.write(rid + row)
            await done
            sent += 1
        return sent

    listener = asyncio.create_task(replies())
    end = time.monotonic() + seconds
    c0, t0 = cpu_seconds(), time.monotonic()
    counts = await asyncio.gather(*(client(k) for k in range(inflight)))
    c1, t1 = cpu_seconds(), time.monotonic()
    listener.cancel()
    return sum(counts), t1 - t0, c1 - c0


def measure(inflight: int, seconds: float) -> tuple[float, float, float]:
    """(hand-overs per second, front end's CPU µs each, batcher's CPU µs each)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the batcher: reports its CPU through the pipe
        a.close()
        c0 = cpu_seconds()
        uvloop.run(batcher(b))
        os.write(w, str(cpu_seconds() - c0).encode())
        os._exit(0)
    b.close()
    os.close(w)
    n, wall, front_cpu = uvloop.run(front(a, inflight, seconds))
    a.close()
    batcher_cpu = float(os.read(r, 64))
    os.waitpid(pid, 0)
    os.close(r)
    return n / wall, front_cpu / n * 1e6, batcher_cpu / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inflight", default="1,8,64", help="numbers of requests in flight (comma-separated)")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores\n")
    print("| in flight | hand-overs/s | front end CPU µs each | batcher CPU µs each |")
    print("|---:|---:|---:|---:|")
    for inflight in (int(x) for x in args.inflight.split(",")):
        rate, front_us, batcher_us = measure(inflight, args.seconds)
        print(f"| {inflight} | {rate:,.0f} | {front_us:.1f} | {batcher_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
