"""The request bytes all the connections of one server process may hold at once.

Each front end bounds each connection: an HTTP request's body is at most
``--max-body-mb``, and an HTTP/2 connection of the gRPC wire front end holds at
most twice that in granted messages (:mod:`.h2limits`). Neither bounds their
sum: a thousand clients sending a request of the largest size at the same time
would make the server hold a thousand of them. :class:`Intake` bounds the sum
(``--max-pending-mb``), shared by both front ends of a process:

* an HTTP request reserves its body's declared length (``Content-Length``; a
  chunked body, whose length is unknown, reserves the largest) before the rest
  of its body is read. When the intake cannot hold it, that connection stops
  reading until requests in progress are answered and give their bytes back:
  TCP pushes back on the client, nothing is refused and nothing is dropped.
  A body already read whole when its request starts is counted without waiting;
* a gRPC call longer than its stream's first window is granted the rest of its
  message (``WINDOW_UPDATE``) only when both its connection's budget and the
  intake can hold it; until then the client waits for the window.

Reservations are served in the order they were asked (a large request is not
starved by small ones behind it) and given back when the request is answered;
a request whose body stops arriving is answered (cut off) after
``--body-timeout`` seconds (:mod:`.bodytimer`), so it cannot hold its bytes,
and those queued behind it, for ever.
One larger than the whole intake takes all of it, so a request of the largest
size is still served when nothing else is pending.

Outside the bound: what one socket read holds when its request is parsed, the
first window of each gRPC stream (64 KiB, ``Limits.max_streams`` per
connection), and the decompressed copy of a compressed gRPC message (bounded
by its connection's budget). A connection whose streams were given wider first
windows (:mod:`.h2limits`; only while the intake has room for all of them) has
the same bytes in fewer streams; what a message takes of its stream's window
beyond the first 64 KiB is counted here with the rest of its grant, or, when
the window holds the whole message, at once without waiting (the client may
already be sending it, and the call waits for nothing more).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Ticket:
    """A reservation waiting in the intake's queue: ``granted`` is called once its bytes are taken."""

    __slots__ = ("granted", "n", "state")

    def __init__(self, n: int, granted: Callable[[], None]) -> None:
        self.n, self.granted = n, granted
        self.state = "waiting"  # then "granted" (the owner gives the bytes back) or "cancelled"


class Intake:
    """At most ``limit`` bytes reserved at once, reservations served in order (see the module's text)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.used = 0
        self._queue: deque[Ticket] = deque()

    def need(self, n: int) -> int:
        """What a request of ``n`` bytes reserves: ``n``, or the whole intake when it is larger."""
        return min(max(0, int(n)), self.limit)

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes (from :meth:`need`) now, if they fit and nobody waits before them."""
        if self._queue or self.used + n > self.limit:
            return False
        self.used += n
        return True

    def force(self, n: int) -> None:
        """Count ``n`` bytes already held (a body read whole): later reservations wait for them."""
        self.used += n

    def room(self, n: int) -> bool:
        """Whether ``n`` more bytes fit now, with nobody waiting (a check: nothing is reserved)."""
        return not self._queue and self.used + n <= self.limit

    def queue(self, n: int, granted: Callable[[], None]) -> Ticket:
        """Wait in line for ``n`` bytes, after :meth:`take` said no: ``granted()`` is called once they
        are taken, by the :meth:`give` or :meth:`cancel` that makes room (never by this call)."""
        ticket = Ticket(n, granted)
        self._queue.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Leave the line (a granted ticket's bytes are given back by its owner, with :meth:`give`)."""
        if ticket.state == "waiting":
            ticket.state = "cancelled"
            self._serve()  # it may have held up those behind it

    def give(self, n: int) -> None:
        """Give back ``n`` reserved bytes; the tickets that now fit are granted."""
        self.used = max(0, self.used - n)
        self._serve()

    def _serve(self) -> None:
        queue = self._queue
        while queue:
            ticket = queue[0]
            if ticket.state != "waiting":
                queue.popleft()
                continue
            if self.used + ticket.n > self.limit:
                return
            queue.popleft()
            self.used += ticket.n
            ticket.state = "granted"
            ticket.granted()

    @property
    def waiting(self) -> int:
        """Reservations waiting in line."""
        return sum(1 for t in self._queue if t.state == "waiting")
