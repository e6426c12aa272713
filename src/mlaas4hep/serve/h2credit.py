"""What the client of one HTTP/2 connection may send the wire gRPC front end (:mod:`.grpcwire`).

HTTP/2 flow control is credit: a client sends DATA only within the windows the
server opened, and the server opens more (``WINDOW_UPDATE``) as it sees fit.
:class:`Credit` keeps one connection's account, within the bounds of
:mod:`.h2limits`:

* the **connection's window**: every stream's first window plus the budget
  below, given back (in one ``WINDOW_UPDATE`` per ``refund_at`` bytes) only as
  calls finish, so a connection never holds more request bytes than that;
* the **budget**: a call whose gRPC message is longer than its stream's first
  window (64 KiB) is granted the rest out of it, twice the message limit per
  connection; a compressed call takes its decompressed size from it while it
  runs (:meth:`Stream.hold`);
* the **first window** and the **streams** a connection may open: the first
  such message *widens* the connection (:meth:`Credit.widen`, within
  :meth:`.h2limits.Limits.widened`): wider first windows, fewer streams, the
  same bytes in all, so the next messages of its size need no grant;
* the server's **intake** (:mod:`.intake`): a grant is also taken from the bound
  on all connections together.

Grants go in the order the streams asked. A stream whose grant does not fit
waits: for calls of its own connection to finish (the budget), or in the
intake's line, which calls back once another connection gives bytes back.
A finished, cancelled or reset stream gives its window, budget and intake
bytes back (:meth:`Credit.release`). :meth:`Credit.stalled` finds the streams
whose message stopped arriving (:mod:`.bodytimer`).
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable

from .bodytimer import TICKS
from .grpcframes import HEAD, SETTINGS, WINDOW_UPDATE, frame
from .h2limits import STREAM_WINDOW, Limits
from .intake import Intake, Ticket


class Stream:
    """One call: its headers, the request bytes so far, and what flow control let it send."""

    __slots__ = (
        "body",
        "credit",
        "extra",
        "headers",
        "idle",
        "need",
        "received",
        "seen",
        "size",
        "taken",
        "task",
        "window",
    )

    def __init__(self, credit: Credit, headers: list[tuple[str, str]], window: int):
        self.credit, self.headers, self.window = (
            credit,
            headers,
            window,
        )  # window: what we may still send on it
        # pieces: views of the reads they came in, or small ones gathered in a bytearray
        self.body: list[bytes | bytearray | memoryview] = []
        self.size = 0  # body bytes (padding stripped)
        self.received = 0  # DATA bytes as flow control counts them (padding included)
        self.need = credit.first  # what it may send: the first window, or its message once granted
        self.extra = 0  # the part of ``need`` taken from the connection's budget
        self.taken = 0  # what its grant took from the server's intake
        self.task: asyncio.Task[None] | None = None
        self.seen = -1  # ``received + size`` at the last check for a stalled message (-1: progress since)
        self.idle = 0  # checks since its last DATA

    def hold(self, n: int) -> bool:
        """Take ``n`` bytes (a decompressed message) from the connection's budget until the call ends."""
        credit = self.credit
        if n > credit.budget:
            return False
        credit.budget -= n
        self.extra += n
        return True


class Credit:
    """One connection's account (see the module's text).

    ``streams`` is the connection's open streams (the same dict), ``put`` writes
    a frame at once, ``send`` with the replies of this turn of the loop, and
    ``closing`` says whether the connection is ending (no more grants then).
    """

    def __init__(
        self,
        limits: Limits,
        max_message: int,
        intake: Intake,
        streams: dict[int, Stream],
        put: Callable[[bytes], None],
        send: Callable[[bytes], None],
        closing: Callable[[], bool],
    ):
        self.intake, self.streams, self.limits = intake, streams, limits
        self._put, self._send, self._closing = put, send, closing
        self.window, self.refund_at = limits.connection_window(max_message)  # the connection's
        self.refund = 0  # bytes of finished calls not yet returned to the client
        self.budget = limits.budget(max_message)  # grants beyond the streams' first windows
        # stream -> (the grant it waits for, what that takes from the intake: the grant, and the
        # part of the message its first window holds beyond the default one)
        self.waiting: dict[int, tuple[int, int]] = {}
        self.ticket: Ticket | None = None  # in the intake's line for the first waiting stream's grant
        self.ticket_sid = 0
        self.first = STREAM_WINDOW  # a new stream's first window, once the client applies our SETTINGS
        self.max_streams = limits.max_streams  # the streams it may have open at once
        self.peak = 0  # the most streams it has had open at once
        self.unacked = 1  # our SETTINGS the client has not acknowledged (the first goes as it connects)
        self.grace = 0  # refusals not held against the client: it may not have read our new limit yet

    def widen(self, size: int) -> None:
        """A message takes ``size`` bytes of DATA: give the connection's streams first windows that
        hold it, and fewer streams at once (one ``SETTINGS``, once per connection).

        Only while the connection never had more streams open than the new limit: then their
        first windows together stay within the connection's window, so every granted stream can
        still send its message, and a connection that runs many calls at once keeps them. And
        only while the intake has room for all the wider windows (what a message takes of them is
        counted there, :meth:`reserve`). Open streams may send the difference at once (the client
        applies it to them too); a stream the client opens past the new limit before it reads it
        is refused, and not held against it (:attr:`grace`).
        """
        if self.first != STREAM_WINDOW or size <= self.first or self._closing():
            return
        wide = self.limits.widened(size)
        if wide is None or max(self.peak, len(self.streams)) > wide[1]:
            return
        if not self.intake.room(wide[1] * (wide[0] - STREAM_WINDOW)):
            return  # (nobody waits in the intake's line then: no ticket of ours either)
        delta = wide[0] - self.first
        self.first, self.max_streams = wide
        self.grace = self.limits.max_streams - self.max_streams
        self.unacked += 1
        self._put(frame(SETTINGS, 0, 0, struct.pack(">HIHI", 0x3, self.max_streams, 0x4, self.first)))
        for s in self.streams.values():
            s.need += delta
        for sid, (extra, want) in list(self.waiting.items()):  # they wait for less
            if extra > delta:
                self.waiting[sid] = (extra - delta, want)
            else:  # the window holds the rest: counted now, as reserve() counts it
                del self.waiting[sid]
                self._force(self.streams[sid], want)
        self.grant_waiting()

    def acked(self) -> None:
        """The client acknowledged one of our ``SETTINGS``: once all, it applies our limit."""
        self.unacked -= 1
        if self.unacked <= 0:
            self.grace = 0

    def reserve(self, sid: int, s: Stream, size: int, extra: int) -> None:
        """Stream ``sid``'s message takes ``size`` bytes of DATA, ``extra`` of them beyond its window.

        What it takes beyond the default first window is counted in the intake: with its grant,
        in one reservation, when it needs one (it waits for both or neither: a stream never holds
        intake bytes while it waits for more); at once, without waiting, when its window holds it
        (the client may already be sending it, and the call ends without waiting for anything).
        """
        covered = max(0, min(size, self.first) - STREAM_WINDOW)
        if extra > 0:
            self.waiting[sid] = (extra, extra + covered)
            self.grant_waiting()
        elif covered:
            self._force(s, covered)

    def _force(self, s: Stream, n: int) -> None:
        self.intake.force(n)
        s.taken += n
        s.seen = -1  # the client may send the rest at once: its clock starts now

    def grant_waiting(self) -> None:
        """Grant the waiting streams, in the order they asked, what both the budget and the
        intake hold; when the intake does not, wait in its line."""
        if self.ticket is not None or self._closing():
            return
        intake = self.intake
        for sid, (extra, want) in list(self.waiting.items()):
            if extra > self.budget:
                return
            n = intake.need(want)
            if not intake.take(n):
                self.ticket = intake.queue(n, functools.partial(self._intake_granted, sid, n))
                self.ticket_sid = sid
                return
            del self.waiting[sid]
            self._grant(sid, self.streams[sid], extra, n)

    def _intake_granted(self, sid: int, n: int) -> None:
        """The intake took ``n`` bytes for stream ``sid`` (called as another call gives bytes back)."""
        self.ticket = None
        s, asked = self.streams.get(sid), self.waiting.pop(sid, None)
        if s is None or asked is None or self._closing() or asked[0] > self.budget:
            self.intake.give(n)  # gone meanwhile: the intake's next in line get them
            if asked is not None and s is not None and not self._closing():
                self.waiting[sid] = asked  # the budget shrank meanwhile: ask again (back in order)
        else:
            self._grant(sid, s, asked[0], n)
        self.grant_waiting()

    def _grant(self, sid: int, s: Stream, extra: int, taken: int) -> None:
        self.budget -= extra
        s.extra += extra
        s.need += extra
        s.taken += taken
        s.seen = -1  # the client may send again: its clock starts now
        self._put(frame(WINDOW_UPDATE, 0, sid, HEAD.pack(extra)))

    def received(self, n: int) -> bool:
        """Count ``n`` bytes of DATA against the connection's window; False: beyond it."""
        if n > self.window:
            return False
        self.window -= n
        return True

    def give_window(self, n: int) -> None:
        """Return ``n`` bytes to the connection's window (in one ``WINDOW_UPDATE`` per ``refund_at``)."""
        self.refund += n
        if self.refund >= self.refund_at and not self._closing():
            self.window += self.refund
            self._send(frame(WINDOW_UPDATE, 0, 0, HEAD.pack(self.refund)))
            self.refund = 0

    def forget(self, sid: int) -> None:
        """Stream ``sid`` needs no grant any more (its message is complete)."""
        self.waiting.pop(sid, None)

    def release(self, sid: int, s: Stream) -> None:
        """Stream ``sid`` (already out of ``streams``) ended: its window, budget and intake bytes go back."""
        self.waiting.pop(sid, None)
        if self.ticket is not None and self.ticket_sid == sid:  # its place in the intake's line
            self.intake.cancel(self.ticket)
            self.ticket = None
            self.grant_waiting()
        if s.received:
            self.give_window(s.received)
            s.received = 0
        if s.taken:
            self.intake.give(s.taken)  # may grant a stream of another connection
            s.taken = 0
        if s.extra:
            self.budget += s.extra
            s.extra = 0
            self.grant_waiting()

    def stalled(self) -> list[int]:
        """The streams whose message has had no DATA for ``TICKS`` checks: one check of
        :mod:`.bodytimer` (a stream waiting for its grant is not stalled)."""
        out = []
        for sid, s in self.streams.items():
            if s.task is not None:  # its message is complete
                continue
            progress = s.received + s.size  # frames begun, and their bytes as they arrive
            if progress != s.seen or sid in self.waiting:
                s.seen, s.idle = progress, 0
            else:
                s.idle += 1
                if s.idle >= TICKS:
                    out.append(sid)
        return out

    def close(self) -> None:
        """The connection is gone: whatever its streams took from the intake goes back."""
        if self.ticket is not None:
            self.intake.cancel(self.ticket)
            self.ticket = None
        for s in self.streams.values():
            if s.taken:
                self.intake.give(s.taken)
                s.taken = 0
        self.waiting.clear()
