"""What one gRPC call costs grpcio itself: the floor under any Python gRPC server.

``python bench/grpc_floor.py [--seconds 5] [--clients 64]``

Starts a server whose only method echoes its request bytes (no protobuf, no
model, no batcher), in four builds: ``grpc.aio`` on asyncio, ``grpc.aio`` on
uvloop, and the thread-pool ``grpc.server`` with 1 and 4 threads. A separate
process calls it with ``--clients`` concurrent calls over 4 channels (as
perf_analyzer spreads its calls over several connections), 460-byte requests
(one row of 111 float32 plus a header, like the serving benchmark). The
column to read is the server's CPU time per call (user + system of all its
threads, from ``/proc/PID/stat``): unlike calls/s it hardly depends on how much
of a shared machine the server got.

Compare it with the CPU per call of our whole HTTP path in
``bench/RESULTS-serve-grpc.md`` (about 100-120 µs for a single-row v2 request,
model included): when grpcio's empty call costs more than that, a Python gRPC
front end cannot match the HTTP one call for call, whatever it does per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

METHOD = "/bench.Echo/Call"


def _echo(b: bytes) -> bytes:
    return b


def serve(mode: str, port: int) -> None:
    import grpc

    opts = [("grpc.so_reuseport", 0)]
    if mode.startswith("threads"):
        from concurrent import futures

        def call(req: bytes, ctx: object) -> bytes:
            return req

        server = grpc.server(futures.ThreadPoolExecutor(int(mode[len("threads") :])), options=opts)
        handler = grpc.unary_unary_rpc_method_handler(call, _echo, _echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return

    async def acall(req: bytes, ctx: object) -> bytes:
        return req

    async def main() -> None:
        aserver = grpc.aio.server(options=opts)
        handler = grpc.unary_unary_rpc_method_handler(acall, _echo, _echo)
        aserver.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler}),)
        )
        aserver.add_insecure_port(f"127.0.0.1:{port}")
        await aserver.start()
        print("ready", flush=True)
        await aserver.wait_for_termination()

    if mode == "aio-uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def load(port: int, seconds: float, clients: int) -> None:
    import grpc

    async def main() -> int:
        chans = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(4)
        ]
        calls = [c.unary_unary(METHOD) for c in chans]
        body, done, end = b"x" * 460, 0, time.monotonic() + seconds

        async def caller(i: int) -> None:
            nonlocal done
            while time.monotonic() < end:
                await calls[i % len(calls)](body)
                done += 1

        await asyncio.gather(*(caller(i) for i in range(clients)))
        return done

    print(asyncio.run(main()))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, seconds: float, clients: int) -> tuple[int, float]:
    from mlaas4hep.localservers import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cpu0 = _cpu_seconds(server.pid)
        out = subprocess.run(
            [sys.executable, __file__, "--load", "--port", str(port), "--seconds", str(seconds)]
            + ["--clients", str(clients)],
            capture_output=True,
            text=True,
            check=True,
        )
        calls = int(out.stdout.split()[-1])
        return calls, (_cpu_seconds(server.pid) - cpu0) / max(calls, 1)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="load per server build (default 5)")
    p.add_argument("--clients", type=int, default=64, help="concurrent calls (default 64)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        return serve(a.serve, a.port)
    if a.load:
        return load(a.port, a.seconds, a.clients)
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    print("| server build | calls/s | server CPU per call (µs) |\n|---|---:|---:|")
    for mode in ("aio", "aio-uvloop", "threads1", "threads4"):
        calls, cpu = measure(mode, a.seconds, a.clients)
        print(f"| {mode} | {calls / a.seconds:,.0f} | {cpu * 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
