"""The polling event source, for hosts without BPF: diffs of sock_diag
dumps of the CLOSE_WAIT sockets.  Detection is at most one interval late;
an entry is dated at the poll that first saw it, so a timer never starts
early."""

from __future__ import annotations

import time

from resreap.events import EventSource
from resreap.model import Kind, SockId, Transition
from resreap.sockets import SocketTable


class PollSource(EventSource):
    name = "proc"

    def __init__(self, table: SocketTable, *, interval: float = 0.5) -> None:
        self.table = table
        self.interval = max(0.01, interval)
        self.latency = self.interval
        self._known: set[SockId] = set()
        self._next = 0.0

    def _snapshot(self) -> set[SockId]:
        return {ns.diag.sock for ns in self.table.close_wait()}

    def start(self) -> list[Transition]:
        now = time.monotonic()
        self._known = self._snapshot()
        self._next = now + self.interval
        return [Transition(Kind.EXISTING, sock, now) for sock in self._known]

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
        out = [Transition(Kind.EXIT, s, now) for s in self._known - current]
        out += [Transition(Kind.ENTER, s, now) for s in current - self._known]
        self._known = current
        return out
