"""`trace`'s STAYED line on the fake host: the kernel's table may skip a
socket in one read (/proc/net/tcp is read in pieces while other sockets
come and go); the line must not be lost for that."""

from __future__ import annotations

import pytest

from fakehost import InlineScanner
from resreap.engine import tracker
from resreap.engine.evidence import Rules
from resreap.engine.filters import Filters
from resreap.engine.owners import FdIndex, OwnerResolver
from resreap.host.procinfo import Proc
from resreap.engine.trace import TraceKind as Event, Tracer


def tracer(world, monkeypatch, misses: int):
    """A tracer on the fake host whose kernel, after a socket's first
    lookup (its entry), skips it in the next ``misses`` reads; it looks
    again at once (no real waiting)."""
    monkeypatch.setattr(tracker, "LOOK_AGAIN_AFTER", 0.0)
    lookup_in, reads = world.kernel.lookup_in, {}

    def skipping(ino, sock):
        reads[sock] = reads.get(sock, 0) + 1
        return None if 1 < reads[sock] <= 1 + misses else lookup_in(ino, sock)

    monkeypatch.setattr(world.kernel, "lookup_in", skipping)
    index = FdIndex(Proc(str(world.proc)), world.clock)
    index.scanner = InlineScanner(index)
    resolver = OwnerResolver(world.kernel, index, clock=world.clock)
    t = Tracer(world.source, resolver, Filters(), Rules(grace=0.5), clock=world.clock)
    t.start()
    return t


def stayed(t: Tracer, steps: int = 10) -> list:
    return [r for _ in range(steps) for r in t.step(1.0) if r.kind is Event.STAYED]


def test_a_socket_a_read_skipped_still_gets_its_stayed_line(world, monkeypatch):
    srv = world.process(1000)
    world.close_wait(srv, 8080, n=1)
    t = tracer(world, monkeypatch, misses=tracker.LOOK_AGAIN)
    lines = stayed(t)
    assert len(lines) == 1 and lines[0].owners[0].pid == 1000


def test_a_socket_never_found_again_is_given_up(world, monkeypatch):
    """Gone with its exit lost: looked for a bounded number of times, then
    dropped, as the watch drops it (it stayed in trace's table, counted
    as open in the summary, until trace ended)."""
    srv = world.process(1000)
    world.close_wait(srv, 8080, n=1)
    t = tracer(world, monkeypatch, misses=10**6)
    assert stayed(t, steps=20) == []
    # No timer left, no entry left.
    assert t.table.next_deadline() is None and len(t.table) == 0
