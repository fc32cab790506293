"""The metrics endpoint's one thread must outlive any client (#21 item 5).

At MAX_CONNECTIONS open, a new connection drops the oldest; when the
oldest was ready in the same select() batch, its key was still handled
after the drop: recv on a closed socket, a second drop, and
sel.unregister raised, killing the thread.  Nothing answered /healthz
again, so a liveness probe restarted resreap every two minutes."""

from __future__ import annotations

import socket
import time

import pytest

from resreap.ops import metrics
from resreap.ops.metrics import Endpoint


def get(address, path: str = "/healthz", timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def endpoint(monkeypatch):
    # Long request timeouts: the half-sent requests below stay open.
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 30.0)
    return Endpoint("127.0.0.1", 0, {"/healthz": lambda: ("200 OK", "text/plain", b"ok\n")})


def test_dropping_the_oldest_ready_connection_never_kills_the_thread(endpoint):
    """Fill every slot with half-sent requests, then, many times over, make
    the oldest readable and open a new connection in the same instant."""
    address = endpoint.address
    conns = []
    try:
        for _ in range(metrics.MAX_CONNECTIONS):
            c = socket.create_connection(address)
            c.sendall(b"GET /hea")
            conns.append(c)
        time.sleep(0.2)  # the server has read them all
        for _ in range(200):
            oldest = conns.pop(0)
            fresh = socket.socket()
            fresh.setblocking(False)
            fresh.connect_ex(address)       # a new connection arrives ...
            oldest.sendall(b"lt")           # ... as the oldest becomes readable
            time.sleep(0.002)
            fresh.settimeout(5.0)  # a dead server fails the test, never hangs it
            fresh.sendall(b"GET /hea")
            conns.append(fresh)
            oldest.close()
        assert b"200 OK" in get(address)
    finally:
        for c in conns:
            c.close()


def test_out_of_fds_backs_off_instead_of_spinning(endpoint, monkeypatch):
    """accept() failing with EMFILE leaves the connection in the queue:
    select() reports it again at once.  The server pauses accepting and
    still answers once fds are back."""
    import errno

    real_accept = socket.socket.accept
    failures = {"n": 0}

    def accept(self):
        if self is endpoint._listener and failures["n"] < 3:
            failures["n"] += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    assert b"200 OK" in get(endpoint.address)
    assert failures["n"] == 3
    assert endpoint.accept_pauses == 3
