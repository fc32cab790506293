"""The polling event source, for hosts without BPF: diffs of sock_diag
dumps of the CLOSE_WAIT sockets.  Detection is at most one interval late;
an entry is dated at the poll that first saw it, so a timer never starts
early."""

from __future__ import annotations

import time

from resreap.sources.events import EventSource
from resreap.model import Kind, SockId, Transition
from resreap.host.sockets import SocketTable


# (network namespace, 4-tuple, cookie or inode): one socket, even where two
# namespaces hold the same 4-tuple.
_Ident = tuple[int, SockId, int]


class PollSource(EventSource):
    name = "proc"

    def __init__(self, table: SocketTable, *, interval: float = 0.5) -> None:
        self.table = table
        self.interval = max(0.01, interval)
        self.latency = self.interval
        self._known: set[_Ident] = set()
        self._next = 0.0

    def _snapshot(self) -> set[_Ident]:
        return {(ns.netns, ns.diag.sock, ns.diag.kid) for ns in self.table.close_wait(info=False)}

    @staticmethod
    def _transition(kind: Kind, ident: _Ident, now: float) -> Transition:
        netns, sock, kid = ident
        return Transition(kind, sock, now, kid=kid, netns=netns)

    def start(self) -> list[Transition]:
        now = time.monotonic()
        self._known = self._snapshot()
        self._next = now + self.interval
        return [self._transition(Kind.EXISTING, i, now) for i in self._known]

    def read(self, timeout: float) -> list[Transition]:
        wait = self._next - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return []
        if wait > 0:
            time.sleep(wait)
        now = time.monotonic()
        self._next = now + self.interval
        current = self._snapshot()
        out = [self._transition(Kind.EXIT, i, now) for i in self._known - current]
        out += [self._transition(Kind.ENTER, i, now) for i in current - self._known]
        self._known = current
        return out
