"""The sockets currently in CLOSE_WAIT, when each entered, and the timers
that make a socket count once it has stayed for the grace period."""

from __future__ import annotations

import heapq
from typing import Iterator

from resreap.model import Kind, Owner, SockId, Transition


class Entry:
    """One socket in CLOSE_WAIT."""

    __slots__ = ("sock", "entered", "existing", "owners", "netns", "counted")

    def __init__(self, sock: SockId, entered: float, existing: bool) -> None:
        self.sock = sock
        self.entered = entered          # monotonic seconds
        self.existing = existing        # found at start: true entry unknown
        self.owners: tuple[Owner, ...] | None = None  # None: not resolved yet
        self.netns: int | None = None
        self.counted = False            # stayed past the grace period


class CloseWaitTable:
    def __init__(self, grace: float | None = None) -> None:
        self.grace = grace
        self.entries: dict[SockId, Entry] = {}
        self._heap: list[tuple[float, SockId]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def get(self, sock: SockId) -> Entry | None:
        return self.entries.get(sock)

    def apply(self, t: Transition) -> tuple[Entry | None, bool]:
        """Record a transition.  Returns (entry, new): on EXIT the removed
        entry (None if we never saw it enter); otherwise the entry and
        whether it was not known before."""
        if t.kind is Kind.EXIT:
            return self.entries.pop(t.sock, None), False
        entry = self.entries.get(t.sock)
        if entry is not None:
            # Seeded at start and then reported by the kernel (or the other
            # way round): the earlier time is the truer one.
            if t.ts < entry.entered:
                entry.entered = t.ts
                entry.existing = t.kind is Kind.EXISTING
                self._arm(entry)
            return entry, False
        entry = Entry(t.sock, t.ts, t.kind is Kind.EXISTING)
        self.entries[t.sock] = entry
        self._arm(entry)
        return entry, True

    def remove(self, sock: SockId) -> Entry | None:
        return self.entries.pop(sock, None)

    def _arm(self, entry: Entry) -> None:
        if self.grace is not None:
            heapq.heappush(self._heap, (entry.entered + self.grace, entry.sock))

    def set_grace(self, grace: float) -> None:
        """Re-arm every pending timer for a new grace period."""
        self.grace = grace
        self._heap = [(e.entered + grace, e.sock) for e in self.entries.values() if not e.counted]
        heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, sock = heap[0]
            entry = self.entries.get(sock)
            if entry is None or entry.counted or entry.entered + self.grace != deadline:
                heapq.heappop(heap)  # a stale timer: the socket left or re-armed
                continue
            return deadline
        return None

    def due(self, now: float) -> list[Entry]:
        """Entries whose grace ended at or before ``now``, marked counted."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, sock = heapq.heappop(heap)
            entry = self.entries.get(sock)
            if entry is None or entry.counted or entry.entered + self.grace != deadline:
                continue
            entry.counted = True
            out.append(entry)
        return out

    def counted(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.counted]
