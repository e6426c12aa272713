"""``--workers N`` spreads the HTTP connections over the workers (serve/listeners.py).

Each worker listens on the port with a socket of its own (``SO_REUSEPORT``), so a burst of new
connections, as a load balancer or perf_analyzer opens them, is shared out by the kernel. With
one socket shared by the workers, the first worker to wake accepted nearly all of them (8 and 56
of 64 connections in one measurement).
"""

from __future__ import annotations

import http.client
import json
import pickle
import socket
from collections import Counter

import pytest

from mlaas4hep.serve import listeners

from .conftest import ServerProcess, install_copy

CONNECTIONS = 48


@pytest.mark.skipif(not listeners.supported(), reason="SO_REUSEPORT spreads connections on Linux only")
def test_a_burst_of_connections_is_shared_by_the_workers(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, "--workers", "2").start(timeout=60)
    try:
        conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10) for _ in range(CONNECTIONS)]
        for c in conns:  # all of them opened before any request: one burst in the accept queues
            c.connect()
        pids = []
        for c in conns:  # each connection is answered by the worker that accepted it
            c.request("GET", "/status")
            r = c.getresponse()
            assert r.status == 200
            pids.append(json.loads(r.read())["pid"])
        for c in conns:
            c.close()
    finally:
        srv.stop()
    per_worker = sorted(Counter(pids).values())
    # a fair coin gives fewer than 12 of 48 once in 10^4; the shared socket gave most to one worker
    assert len(per_worker) == 2 and per_worker[0] >= 12, per_worker


def test_the_port_is_held_for_the_workers_and_given_back():
    with listeners.held_port("127.0.0.1", 0, 16) as held:
        port = held.port
        with socket.socket() as other, pytest.raises(OSError):  # not shared with a plain socket
            other.bind(("127.0.0.1", port))
        # what each worker receives: unpickled, its own socket, listening before its app loads
        a, b = pickle.loads(pickle.dumps(held)), pickle.loads(pickle.dumps(held))
        with a, b:
            assert a.getsockname() == b.getsockname() == ("127.0.0.1", port)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # queued in one of them, accepted once that worker runs
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # given back


def test_an_ipv6_address_gets_an_ipv6_socket():
    """``--host ::1`` (or ``[::1]``) binds an IPv6 socket; names and IPv4 addresses an IPv4 one."""
    assert listeners.address_family("::1") == socket.AF_INET6
    assert listeners.address_family("[::1]") == socket.AF_INET6
    assert listeners.address_family("127.0.0.1") == socket.AF_INET
    assert listeners.address_family("localhost") == socket.AF_INET
    if socket.has_ipv6:
        try:
            with listeners.held_port("::1", 0, 8) as held:
                assert held.family == socket.AF_INET6 and held.port > 0
        except OSError as err:  # no IPv6 loopback on this machine
            pytest.skip(f"no IPv6 loopback: {err}")
