"""The HTTP port of ``--workers N``: each worker listens on it with a socket of its own.

uvicorn's workers share one listening socket, bound by their supervisor. Under a
burst of new connections (a load balancer opening its pool, perf_analyzer's 64
clients) the worker whose event loop wakes first accepts nearly all of them,
since libuv accepts until the queue is empty. With ``--workers 2`` and 64 HTTP
clients the two workers held 8 and 56, 13 and 51, 12 and 52 connections: one
core served four fifths of the requests (bench/RESULTS-serve.md, "Stop 23").

Here every worker binds the port itself with ``SO_REUSEPORT``, as the gRPC
listeners of the workers already do, and the kernel spreads new connections
over the workers by a hash of their addresses. A worker listens as soon as it
starts, before it loads its app: the kernel spreads connections only over the
sockets listening when they arrive, and those that arrive while the worker
loads wait in its queue. So by the time any worker answers ``/v2/health/ready``
they all listen. The supervisor holds a socket bound to the port that never
listens, so it receives no connection: a port in use is an error before any
worker starts, port 0 picks one port for all of them, and the port stays held
while a worker restarts.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator


def supported() -> bool:
    """Whether the kernel spreads connections over sockets sharing a port (Linux's ``SO_REUSEPORT``)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def address_family(host: str) -> int:
    """``AF_INET6`` for an IPv6 address (``::1``, ``[::1]``), ``AF_INET`` for anything else."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(host: str, port: int) -> None:
    """Raise :class:`OSError` when ``host:port`` cannot be listened on (in use, or not an
    address here); :class:`socket.gaierror` when ``host`` does not resolve.

    A probe socket binds the port and listens, then closes. It sets ``SO_REUSEADDR``, as the
    servers do, so a port in ``TIME_WAIT`` is no conflict.
    """
    host = host.strip("[]")
    with socket.socket(address_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        probe.listen(1)


def port_socket(family: int, host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other such sockets of this user may share."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(family: int, host: str, port: int, backlog: int) -> socket.socket:
    """A worker's own socket on the port (:func:`port_socket`), listening."""
    sock = port_socket(family, host, port)
    sock.listen(backlog)
    return sock


class WorkerSocket:
    """Stands for the listening socket in what uvicorn's supervisor hands each worker.

    Workers are started with ``spawn``, so each receives it pickled; unpickling it
    makes that worker's own listening socket (:func:`listening_socket`), before the
    worker loads its app.
    """

    def __init__(self, family: int, host: str, port: int, backlog: int) -> None:
        self.family, self.host, self.port, self.backlog = family, host, port, backlog

    def __reduce__(self) -> tuple[object, tuple[int, str, int, int]]:
        return listening_socket, (self.family, self.host, self.port, self.backlog)


@contextlib.contextmanager
def held_port(host: str, port: int, backlog: int) -> Iterator[WorkerSocket]:
    """Hold ``host:port`` for the workers while the block runs; yields what to hand them.

    Raises :class:`OSError` when the port cannot be bound (in use, or not an address here).
    """
    family = address_family(host)
    with port_socket(family, host, port) as guard:
        yield WorkerSocket(family, host, guard.getsockname()[1], backlog)
