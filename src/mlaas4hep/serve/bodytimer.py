"""How long a request body may stop arriving (``--body-timeout``): the clock both front ends share.

A request's bytes are held from its first byte to its answer: an HTTP request
reserves its ``Content-Length`` in the server's :mod:`.intake`, a gRPC call is
granted its message's window out of it. A client that announces a large body
and then stops sending would hold those bytes for ever, and every large
request queued behind it in the intake would wait for ever too (slowloris).
So, as nginx's ``client_body_timeout`` (60 s) and Envoy's
``stream_idle_timeout``, a body that has had no byte for ``body_timeout``
seconds is cut off: HTTP answers ``408`` and closes the connection
(:mod:`.httpproto`, :mod:`.httpfront`), the gRPC wire front end ends the
stream with ``DEADLINE_EXCEEDED`` and ``RST_STREAM`` (:mod:`.grpcwire`),
and the request's bytes go back to the intake.

Only the client's silence counts: not the time its connection is not read
because the server holds it back (a request waiting for room in the intake,
a gRPC stream waiting for its grant, a pipelined request waiting its turn)
nor the time a client waits for its ``100 Continue``. (A gRPC connection that
is not read because its client does not read its answers, :mod:`.h2limits`,
is the client's doing: that time counts.)

The clock makes no timer per request. An HTTP request that arrives whole in
one read (most do) never touches it. A body still incomplete after a read, or
a gRPC call opened before its message, arms its connection's one
:class:`Ticker` unless it is armed already; it checks every
``body_timeout / TICKS`` seconds whether each pending body progressed since
the last check, and stops once none is pending. A read only clears a counter
(HTTP); a gRPC check compares the bytes each stream received. A stalled body
is therefore cut off between ``body_timeout`` and
``body_timeout * (1 + 1/TICKS)`` seconds after its last byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: checks per ``body_timeout``: a body is cut off at most ``body_timeout / TICKS`` late
TICKS = 4


def stalled_message(timeout: float) -> str:
    """What a client whose body was cut off is told."""
    return f"the request body stopped arriving: nothing came in {timeout:g} s (the server's --body-timeout)"


class Ticker:
    """Calls ``tick()`` every ``timeout / TICKS`` seconds while it returns True.

    :meth:`start` arms it unless it is armed already, so a connection has one
    timer at most, whatever the number of its requests or streams.
    """

    __slots__ = ("_handle", "_loop", "_tick", "period")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, tick: Callable[[], bool]) -> None:
        self._loop, self._tick, self.period = loop, tick, timeout / TICKS
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self.period, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = None
        if self._tick():
            self.start()
