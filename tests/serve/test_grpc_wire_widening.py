"""Widened connections (``Credit.widen``) and the server's intake: every polite call completes.

A client that honours every window (HTTP/2's flow control, as grpc's clients do)
against the wire front end in process, with a servicer that answers at once,
so only flow control decides whether calls complete. Messages longer than the
widest first window need a grant as well: a stream must never hold intake bytes
while it waits in the intake's line for more (a stop-21 review found exactly
that deadlock), and the intake must end empty.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

hpack = pytest.importorskip("hpack")
from mlaas4hep.serve._proto import grpc_service_pb2 as pb  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from mlaas4hep.serve.grpcwire import WireServer  # noqa: E402
from mlaas4hep.serve.h2limits import Limits  # noqa: E402
from mlaas4hep.serve.intake import Intake  # noqa: E402

MiB = 2**20
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 7, 8
HEAD = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", "x"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class _Answers(pb_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context=None):
        return pb.ModelInferResponse()


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + struct.pack(">I", sid) + payload


async def _polite_client(port: int, phases: list[list[int]], length: int) -> dict[int, str]:
    """Open the calls of each phase at once and send each a message of ``length`` bytes within
    every window; the grpc-status (or ``RST n``/``GOAWAY``) of each call, once all are answered."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    enc, dec = hpack.Encoder(), hpack.Decoder()
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
    msg = b"\x00" + struct.pack(">I", length) + bytes(length)
    first, conn = 65535, 65535
    sids = [s for phase in phases for s in phase]
    granted, sent, ends = dict.fromkeys(sids, 0), dict.fromkeys(sids, 0), {}
    opened: list[int] = []
    news = asyncio.Event()

    async def read() -> None:
        nonlocal first, conn
        buf = b""
        while data := await r.read(1 << 16):
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                sid, payload, buf = struct.unpack(">I", buf[5:9])[0], buf[9 : 9 + n], buf[9 + n :]
                if kind == SETTINGS and not flags & 1:
                    for i in range(0, n, 6):
                        key, value = struct.unpack(">HI", payload[i : i + 6])
                        if key == 4:
                            for s in opened:  # RFC 9113 §6.9.2: open streams' windows move too
                                granted[s] += value - first
                            first = value
                    w.write(_frame(SETTINGS, 1, 0))
                elif kind == WINDOW_UPDATE:
                    inc = struct.unpack(">I", payload)[0]
                    conn += inc if sid == 0 else 0
                    granted[sid] = granted.get(sid, 0) + (inc if sid else 0)
                elif kind == HEADERS and flags & 1:
                    ends[sid] = dict(dec.decode(payload)).get("grpc-status", "?")
                elif kind == RST_STREAM:
                    ends[sid] = f"RST {struct.unpack('>I', payload)[0]}"
                elif kind == GOAWAY:
                    ends.update(dict.fromkeys(sids, "GOAWAY"))
                news.set()

    reader = asyncio.create_task(read())
    try:
        for phase in phases:
            w.write(b"".join(_frame(HEADERS, 4, s, enc.encode(HEAD)) for s in phase))
            opened += phase
            while not all(s in ends for s in phase):
                news.clear()
                for s in phase:
                    room = min(first + granted[s] - sent[s], len(msg) - sent[s], conn)
                    while s not in ends and room > 0:
                        k = min(room, 16384)
                        end = 1 if sent[s] + k == len(msg) else 0
                        w.write(_frame(DATA, end, s, msg[sent[s] : sent[s] + k]))
                        sent[s], conn, room = sent[s] + k, conn - k, room - k
                await w.drain()
                await asyncio.wait_for(news.wait(), 5)  # nothing for 5 s: a deadlock
    finally:
        reader.cancel()
        w.close()
    return ends


@pytest.mark.parametrize(
    ("pending", "max_body", "clients", "calls", "length"),
    [
        # one call longer than the whole intake: it takes all of it (with its wider window)
        (8 * MiB, 64 * MiB, 1, 1, 10 * MiB),
        # three connections, each widened by a call alone, then 8 calls at once that each need a grant
        (16 * MiB, 4 * MiB, 3, 8, 3 * MiB),
    ],
)
def test_every_polite_call_completes_and_the_intake_ends_empty(pending, max_body, clients, calls, length):
    async def main() -> tuple[list[dict[int, str]], int, list[int]]:
        intake = Intake(pending)
        srv = WireServer(_Answers(), max_body, Limits(body_timeout=2.0), intake)
        port = await srv.start("127.0.0.1", 0)
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(intake.used)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        phases = [[1], [3 + 2 * i for i in range(calls)]] if calls > 1 else [[1]]
        try:
            ends = await asyncio.gather(*(_polite_client(port, phases, length) for _ in range(clients)))
        finally:
            watcher.cancel()
            await asyncio.sleep(0.05)
            await srv.stop(0)
        return ends, intake.used, seen

    ends, used, seen = asyncio.run(main())
    for e in ends:  # each call answered by the servicer (an empty message: INVALID_ARGUMENT, 3)
        assert set(e.values()) == {"3"}, e
    assert used == 0
    assert max(seen) <= pending
