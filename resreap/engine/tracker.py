"""The sockets currently in CLOSE_WAIT, when each entered, and when each is
to be looked at next.

A socket is keyed by its 4-tuple *and* the kernel's id for it (the event's
``kid``): the same 4-tuple may live in two network namespaces at once, and
the exit of one must never erase the other's timer.  An entry is *bound*
once it is known which namespace's socket it is (``netns`` and ``kid``, the
sock_diag cookie): from then on every check asks the kernel about exactly
that socket.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator

from resreap.model import Evidence, Key, Kind, Owner, SockId, Transition


# A due socket not seen is looked for again this many times, this far
# apart (0.3 s outlasts the 0.25 s notice of a new namespace).
LOOK_AGAIN = 3
LOOK_AGAIN_AFTER = 0.1

class Entry:
    """One socket in CLOSE_WAIT."""

    __slots__ = ("key", "entered", "existing", "netns", "kid", "inode", "owners", "against",
                 "counted", "evidence", "due", "misses", "unseen", "waited")

    def __init__(self, key: Key, entered: float, existing: bool) -> None:
        self.key = key
        self.entered = entered          # monotonic seconds
        self.existing = existing        # found at start: true entry unknown
        self.netns: int | None = None   # bound: its namespace ...
        self.kid: int | None = None     # ... and sock_diag cookie (or inode)
        self.inode = 0                  # its file, once seen (0: none yet)
        # Two meanings, two fields: who holds it (everyone found, whatever
        # their rule or uid) and whom it counts against (those of them its
        # evidence, their rules and their uids condemn).  top, rules, the
        # holding metric and the orphans read the first; the counter the
        # second.
        self.owners: tuple[Owner, ...] | None = None  # its holders; None: not resolved yet
        self.against: tuple[Owner, ...] = ()  # whom it counts against (counting.py writes)
        self.counted = False            # counts now (against ``against``, maybe nobody yet)
        self.evidence: Evidence | None = None
        self.due = float("inf")         # next look, monotonic seconds
        self.misses = 0                 # looks that found it counting, held by no one
        self.unseen = 0                 # looks in a row that did not find it (procfs)
        self.waited = 0                 # prompt looks while a full scan was still reading

    @property
    def sock(self) -> SockId:
        return self.key[0]

    @property
    def bound(self) -> bool:
        return self.kid is not None

    @property
    def by_cookie(self) -> bool:
        """Keyed by its sock_diag cookie (seeded at start, or added by a
        reconcile), not by the address the events carry."""
        return self.kid is not None and self.kid == self.key[1]


class CloseWaitTable:
    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        self._by_sock: dict[SockId, list[Key]] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def get(self, key: Key) -> Entry | None:
        return self.entries.get(key)

    def same_tuple(self, sock: SockId) -> list[Entry]:
        """Every entry with this 4-tuple (usually one)."""
        return [self.entries[k] for k in self._by_sock.get(sock, ())]

    def apply(self, t: Transition) -> tuple[Entry | None, bool]:
        """Record a transition.  Returns (entry, new): on EXIT the removed
        entry (exit_of; None: not known); else the entry and whether it
        was not known before."""
        key = (t.sock, t.kid)
        if t.kind is Kind.EXIT:
            return self.exit_of(t)[0], False
        entry = self.entries.get(key)
        if entry is not None:
            # Reported twice (seeded, then polled): the earlier time is truer.
            if t.ts < entry.entered:
                entry.entered = t.ts
                entry.existing = t.kind is Kind.EXISTING
            return entry, False
        entry = Entry(key, t.ts, t.kind is Kind.EXISTING)
        if t.netns is not None:
            entry.netns, entry.kid = t.netns, t.kid
        self.entries[key] = entry
        self._by_sock.setdefault(t.sock, []).append(key)
        return entry, True

    def exit_of(self, t: Transition) -> tuple[Entry | None, list[Entry]]:
        """Which socket an exit took, the one strategy of watch and trace:
        (the entry its key names, removed; else None, and the bound entries
        of its 4-tuple, to ask the kernel about now).  A socket seeded at
        start or added by a reconcile is keyed by its cookie while its exit
        event carries the kernel's address: the exit finds no entry, and
        its 4-tuple's entries are looked at again, never dropped on the
        guess.  The same 4-tuple can leave CLOSE_WAIT in a namespace past
        the caps (unwatched, its entry never seen) or one whose entry was
        lost with a flood of events: taken by its 4-tuple, such an exit
        erased a leak's timer."""
        entry = self.remove((t.sock, t.kid))
        if entry is not None:
            return entry, []
        return None, [e for e in self.same_tuple(t.sock) if e.bound]

    def bind(self, entry: Entry, found: list) -> tuple[object | None, bool]:
        """Which of the kernel's sockets of its 4-tuple an entry is, the one
        binding of watch and trace (``found``: each with ``netns`` and its
        sock_diag answer ``diag``).  A bound entry is the one with its
        cookie; else the first that no other entry of the 4-tuple is bound
        to, and the entry is bound to it (the same 4-tuple in two
        namespaces: which entry took which socket is a guess, undone when
        one leaves).  Returns (that one, or None; ``taken``: every socket
        found is another entry's, this one is a duplicate to drop: seeded
        at start and reported by the kernel too)."""
        if entry.bound:
            return next((f for f in found if f.diag.kid == entry.kid), None), False
        claimed = {(e.netns, e.kid) for e in self.same_tuple(entry.sock)
                   if e.bound and e is not entry}
        free = [f for f in found if (f.netns, f.diag.kid) not in claimed]
        if not free:
            return None, bool(found)
        hit = free[0]
        entry.netns, entry.kid = hit.netns, hit.diag.kid
        return hit, False

    def remove(self, key: Key) -> Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            keys = self._by_sock.get(key[0])
            if keys is not None:
                keys.remove(key)
                if not keys:
                    del self._by_sock[key[0]]
        return entry

    def schedule(self, entry: Entry, when: float) -> None:
        entry.due = when
        heapq.heappush(self._heap, (when, next(self._seq), entry.key))

    def look_again(self, entry: Entry, now: float) -> bool:
        """A due socket the kernel's table did not show may still be there:
        /proc/net/tcp is read in pieces while sockets come and go (a read
        under churn skips a line now and then), and one never yet found may
        be in a network namespace made since the last look (new ones are
        noticed at most every 0.25 s).  It is looked for again, LOOK_AGAIN
        times LOOK_AGAIN_AFTER apart, before watch drops it or trace gives
        up its line; its exit, if real, removes it first.  True: scheduled
        for another look.  (The one strategy of watch and trace.)"""
        if entry.unseen >= LOOK_AGAIN:
            return False
        entry.unseen += 1
        self.schedule(entry, now + LOOK_AGAIN_AFTER)
        return True

    def reschedule_all(self, when_of) -> None:
        """A new timer for every entry: ``when_of(entry)``."""
        self._heap = []
        for entry in self.entries.values():
            entry.due = when_of(entry)
            self._heap.append((entry.due, next(self._seq), entry.key))
        heapq.heapify(self._heap)

    def _live(self, when: float, key: Key) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None or entry.due != when:
            return None  # a stale timer: the socket left or was re-armed
        return entry

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _seq, key = heap[0]
            if self._live(when, key) is None:
                heapq.heappop(heap)
                continue
            return when
        return None

    def due(self, now: float, most: int | None = None) -> list[Entry]:
        """Entries whose next look is at or before ``now`` (unscheduled),
        the earliest first, at most ``most`` of them (the rest stay due)."""
        out: list[Entry] = []
        heap = self._heap
        while heap and heap[0][0] <= now and (most is None or len(out) < most):
            when, _seq, key = heapq.heappop(heap)
            entry = self._live(when, key)
            if entry is not None:
                entry.due = float("inf")
                out.append(entry)
        return out


class KeyedSocks:
    """The sockets of some of the table's keys (a holder's counting ones),
    looked up lazily: their number is the keys' (a holder of 20,000 costs
    no lookup where one rule judges everyone), the sockets come from the
    table only when a rule is picked per socket."""

    __slots__ = ("_keys", "_table")

    def __init__(self, keys, table: "CloseWaitTable") -> None:
        self._keys, self._table = keys, table

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        for key in self._keys:
            entry = self._table.get(key)
            if entry is not None:
                yield entry.sock

    def __contains__(self, sock) -> bool:
        return any(s == sock for s in self)
