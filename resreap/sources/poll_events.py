"""The polling event source, for hosts without BPF: diffs of sock_diag
dumps of the CLOSE_WAIT sockets.  Detection is at most one interval late;
an entry is dated at the poll that first saw it, so a timer never starts
early.

Every dump walks the kernel's whole established hash, shared by all
network namespaces, so a host with connections in one namespace paid for
them once per namespace per poll.  A namespace whose TCP counters have not
moved is not dumped again: a socket enters CLOSE_WAIT only on a FIN that
the namespace's counters count as it arrives.  The counters are read
before each dump; a namespace is skipped only once they stood still over a
whole interval after a dump (the FIN of a socket whose holder had it locked
is applied when the lock is released, after it was counted), and each one
is dumped at least every RECHECK_QUIET seconds whatever its counters say.
A socket shown longer than it was there never makes a kill: every count
is checked against the kernel right before one.

Anyone may make network namespaces (`unshare -Urn`) and keep traffic in
them, and each one's dump costs the host's whole hash (75 ms at 100k
connections): 64 of them would make every poll seconds long.  Root's
namespaces are dumped at every poll; those made in other user namespaces
share USERS_SHARE of the interval, oldest dump first, at least one a poll,
and the rest keep their last answer until their turn."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from resreap.sources.events import EventSource
from resreap.model import TCP_CLOSE_WAIT, Kind, SockId, Transition
from resreap.host.sockets import SocketTable


# (network namespace, 4-tuple, cookie or inode): one socket, even where two
# namespaces hold the same 4-tuple.
_Ident = tuple[int, SockId, int]

# A quiet namespace is dumped at least this often: the bound on how late an
# entry whose FIN was applied more than an interval after it was counted
# (its holder held the socket's lock that long), or an exit that sent
# nothing (a FIN queued behind a closed window, a connection given up after
# its last retransmission), is seen.
RECHECK_QUIET = 10.0


# The share of a poll interval that dumps of namespaces made in other user
# namespaces may take; past it they wait for the next poll.
USERS_SHARE = 0.5


@dataclass
class _Namespace:
    """What the poller last knew of one namespace."""

    counters: str | None   # its TCP counters, read before the last dump
    dumped: float          # when it was last dumped
    sockets: frozenset[_Ident]
    settled: bool          # the counters stood still over the interval before that dump


class PollSource(EventSource):
    name = "proc"

    def __init__(self, table: SocketTable, *, interval: float = 0.5,
                 clock=time.monotonic) -> None:
        self.table = table
        self._clock = clock
        self.interval = max(0.01, interval)
        self.latency = self.interval
        self._known: set[_Ident] = set()
        self._next = 0.0
        self._namespaces: dict[int, _Namespace] = {}
        # Namespace dumps made, skipped (quiet) and deferred (users' past
        # their share): the benchmark's account of a poll.
        self.dumps = 0
        self.skips = 0
        self.deferred = 0

    def _quiet(self, ino: int, counters: str | None, now: float) -> _Namespace | None:
        """The namespace's last dump, where it still holds (no socket can
        have entered or left CLOSE_WAIT unseen since)."""
        last = self._namespaces.get(ino)
        if (last is None or counters is None or not last.settled or counters != last.counters
                or now - last.dumped >= RECHECK_QUIET):
            return None
        return last

    def _dump(self, ino: int, counters: str | None, now: float) -> _Namespace | None:
        """Dump the namespace now (None: it did not answer)."""
        found = self.table.dump_in(ino, (TCP_CLOSE_WAIT,))
        self.dumps += 1
        if found is None:
            return None  # its sockets count as gone, as before
        before = self._namespaces.get(ino)
        settled = before is not None and counters is not None and counters == before.counters
        return _Namespace(counters, now,
                          frozenset((ns.netns, ns.diag.sock, ns.diag.kid) for ns in found),
                          settled)

    def _snapshot(self, now: float) -> set[_Ident]:
        seen: dict[int, _Namespace] = {}
        users: list[tuple[int, str | None]] = []  # users' namespaces due a dump
        for ino in self.table.watched():
            counters = self.table.activity(ino)
            last = self._quiet(ino, counters, now)
            if last is not None:
                self.skips += 1
            elif self.table.made_by_a_user(ino):
                users.append((ino, counters))
                continue
            else:
                last = self._dump(ino, counters, now)
            if last is not None:
                seen[ino] = last
        # Oldest dump first: each is reached within a few polls, whatever
        # the others' traffic.
        users.sort(key=lambda due: self._namespaces[due[0]].dumped
                   if due[0] in self._namespaces else float("-inf"))
        budget = self._clock() + self.interval * USERS_SHARE
        for turn, (ino, counters) in enumerate(users):
            if turn and self._clock() >= budget:
                last = self._namespaces.get(ino)
                if last is not None:  # its last answer stands; due first next poll
                    seen[ino] = replace(last, settled=False)
                self.deferred += 1
                continue
            last = self._dump(ino, counters, now)
            if last is not None:
                seen[ino] = last
        self._namespaces = seen
        current: set[_Ident] = set()
        for last in seen.values():
            current |= last.sockets
        return current

    @staticmethod
    def _transition(kind: Kind, ident: _Ident, now: float) -> Transition:
        netns, sock, kid = ident
        return Transition(kind, sock, now, kid=kid, netns=netns)

    def start(self) -> list[Transition]:
        now = self._clock()
        self._known = self._snapshot(now)
        self._next = now + self.interval
        return [self._transition(Kind.EXISTING, i, now) for i in self._known]

    def read(self, timeout: float) -> list[Transition]:
        wait = self._next - self._clock()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            return []
        if wait > 0:
            time.sleep(wait)
        now = self._clock()
        self._next = now + self.interval
        current = self._snapshot(now)
        out = [self._transition(Kind.EXIT, i, now) for i in self._known - current]
        out += [self._transition(Kind.ENTER, i, now) for i in current - self._known]
        self._known = current
        return out
