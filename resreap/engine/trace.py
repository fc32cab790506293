"""`resreap trace`: the live stream of CLOSE_WAIT transitions with their
owners, a STAYED line with the kernel's evidence for each socket still in
CLOSE_WAIT after the grace (what watch would judge), and a per-process
summary at the end."""

from __future__ import annotations

import enum
import time
from typing import Callable, NamedTuple

from resreap.bounded import BoundedDict
from resreap.engine import evidence
from resreap.host import supervisor
from resreap.errors import AccessDenied, ProcessGone, ProcessUnreadable
from resreap.sources.events import EventSource
from resreap.engine.filters import Filters
from resreap.model import Evidence, Kind, Owner, SockId, Transition
from resreap.engine.owners import OwnerResolver, Probe, resolve_close_wait
from resreap.host.supervisor import Supervisor
from resreap.engine.tracker import CloseWaitTable


class TraceKind(enum.Enum):
    """A trace line: a transition (as the sources report them), or STAYED."""

    EXISTING = "existing"
    ENTER = "enter"
    EXIT = "exit"
    STAYED = "stayed"  # still in CLOSE_WAIT after the grace: its evidence

_EVENT = {Kind.EXISTING: TraceKind.EXISTING, Kind.ENTER: TraceKind.ENTER, Kind.EXIT: TraceKind.EXIT}


class Via(enum.Enum):
    """Where a line's owner came from: how sure it is."""

    FD = "fd"              # it held the socket: read from /proc/PID/fd
    CLOSE = "close"        # it closed the socket: the pid of CLOSE_WAIT -> LAST_ACK
    LISTENER = "listener"  # likely: it holds the listener on the socket's port
    NONE = "-"             # not found: gone before it could be read


class TraceRecord(NamedTuple):
    ts: float                   # unix seconds
    kind: TraceKind
    sock: SockId
    owners: tuple[Owner, ...]   # empty: closed before its owner could be read
    age: float | None           # on exit and stayed: seconds in CLOSE_WAIT
    netns: int | None
    evidence: Evidence | None = None  # on stayed (see evidence.py)
    where: Supervisor | None = None   # the first owner's unit / container
    via: Via = Via.FD


class ProcSummary(NamedTuple):
    owner: Owner
    entered: int
    still_open: int
    longest: float
    where: Supervisor | None = None


class _Stats:
    __slots__ = ("entered", "longest")

    def __init__(self) -> None:
        self.entered = 0
        self.longest = 0.0


class Tracer:
    def __init__(self, source: EventSource, resolver: OwnerResolver, filters: Filters,
                 rules: evidence.Rules = evidence.Rules(), min_age: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: CLOCK_MONOTONIC seconds, the events' clock (a fake
        source brings its own).  ``min_age``: show only sockets that stayed that long (their
        STAYED line, at that age, and their EXIT): real traffic makes
        millions of short CLOSE_WAITs."""
        self.source = source
        self.resolver = resolver
        self.filters = filters
        self._selects = filters.selects_processes  # asked per line: once
        self.rules = rules._replace(grace=min_age) if min_age else rules
        self.min_age = min_age
        self.table = CloseWaitTable()
        self.stats: dict[Owner, _Stats] = {}
        # Per process, by (pid, start): read once, bounded.
        self._cmdlines: BoundedDict[tuple[int, int], str] = BoundedDict(4096)
        self._wheres: BoundedDict[tuple[int, int], Supervisor] = BoundedDict(4096)
        # How each tracked socket's owner was found, when not from its fd.
        self._via: dict[tuple, Via] = {}
        # Due sockets the kernel's table did not show: how often, so far.
        # Kernel timestamps are CLOCK_MONOTONIC; show wall-clock time.
        self.clock = clock
        self.wall_offset = time.time() - clock()

    def start(self) -> list[TraceRecord]:
        self.resolver.learn_listeners()
        return self._handle(self.source.start())

    def step(self, timeout: float) -> list[TraceRecord]:
        deadline = self.table.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - self.clock()))
        out = self._handle(self.source.read(timeout))
        return out + self._stayed(self.clock())

    def _stayed(self, now: float) -> list[TraceRecord]:
        """Sockets in CLOSE_WAIT for the grace: what the kernel says of them."""
        out = []
        for entry, hit, taken in self._ask(self.table.due(now)):
            if hit is None:
                if not taken and self.table.look_again(entry, now):
                    continue  # gone (its exit is on the way) or missed: looked for again
                self.table.remove(entry.key)  # gone for good, or another entry's socket
                continue
            entry.unseen = 0
            owners = hit.owners or entry.owners or ()
            if not self.wanted(owners):
                continue
            age = now - entry.entered
            judged = evidence.judge(hit.diag, age, self.rules)
            out.append(TraceRecord(now + self.wall_offset, TraceKind.STAYED, entry.sock, owners,
                                   age, hit.netns, judged.evidence, self._where(owners),
                                   Via.FD if hit.owners else self._via.get(entry.key, Via.FD)))
        return out

    def _cmdline(self, owner: Owner) -> str:
        cmd = self._cmdlines.get(owner.ident)
        if cmd is None:
            try:
                cmd = self.resolver.proc.read_bounded(owner.pid).cmdline
            except (ProcessGone, ProcessUnreadable, AccessDenied):
                cmd = ""
            self._cmdlines[owner.ident] = cmd
        return cmd

    def _where(self, owners: tuple[Owner, ...]) -> Supervisor | None:
        """The first owner's unit and container, read once per process."""
        if not owners:
            return None
        owner = owners[0]
        where = self._wheres.peek(owner.ident)
        if where is None:
            where = self._wheres[owner.ident] = supervisor.of(owner.pid, self.resolver.proc)
        return where

    def credit(self, owner: Owner, n: int) -> None:
        """``n`` sockets ``owner`` closed before they were seen one by one
        (the kernel counted them, engine/summary): in its summary."""
        self.stats.setdefault(owner, _Stats()).entered += n

    def wanted(self, owners: tuple[Owner, ...]) -> bool:
        """Do -f, -p, --unit... select any of these processes?"""
        if not self._selects:
            return True
        return any(self.filters.wants(o.pid, self._cmdline(o), self._where((o,))
                                      if self.filters.selects_places else None)
                   for o in owners)

    def _handle(self, batch: list[Transition]) -> list[TraceRecord]:
        fresh, order = self._apply(batch)
        # The owner of a socket that came and went too fast to be read from
        # /proc: the process whose close() took it out of CLOSE_WAIT.
        pids: dict[int, Owner | None] = {}
        closers = {entry.key: owner for t, entry in order
                   if entry is not None and (owner := self.resolver.closer(t, pids)) is not None}
        self._resolve(fresh, closers)
        out = []
        for t, entry in order:
            record = self._record(t, entry, closers, pids)
            if record is not None:
                out.append(record)
        return out

    def _apply(self, batch: list[Transition]) -> tuple[list, list[tuple[Transition, object]]]:
        """The batch into the table: (new entries, (transition, entry) in
        order, for the lines)."""
        fresh = []
        order: list[tuple[Transition, object]] = []
        asked: list = []  # twins of an exit that found no entry of its own
        for t in batch:
            if self.filters.ignore and self.filters.ignores(t.sock):
                continue
            if t.kind is Kind.EXIT:
                entry, again = self.table.exit_of(t)
                if entry is not None and entry.inode:
                    self.resolver.index.forget(entry.inode)
                asked += again
                if entry is None and len(again) == 1 and again[0].by_cookie:
                    # A socket seeded at start, most likely: its line is
                    # named after it (the entry goes once the kernel says).
                    entry = again[0]
                order.append((t, entry))
                continue
            entry, new = self.table.apply(t)
            if new:
                fresh.append(entry)
                order.append((t, entry))
                self.table.schedule(entry, entry.entered + self.rules.grace)
        if asked:
            self._ask_again(asked)
        return fresh, order

    def _ask(self, entries: list) -> list[tuple]:
        """What the kernel says of these entries now, in one batch: (entry,
        its socket or None, taken: another entry's) for each still in the
        table (CloseWaitTable.bind, as the watch binds)."""
        if not entries:
            return []
        probes = {e.key: Probe(e.sock, e.netns, e.kid) for e in entries}
        resolved = resolve_close_wait(self.resolver, list(set(probes.values())), full_scan=False)
        return [(e, *self.table.bind(e, resolved.get(probes[e.key], [])))
                for e in entries if self.table.get(e.key) is e]

    def _ask_again(self, twins: list) -> None:
        """Which of an exit's 4-tuple's entries left: those the kernel no
        longer shows in CLOSE_WAIT go, now (no look again: an exit event
        for the 4-tuple says one of them left)."""
        for entry, hit, _taken in self._ask(twins):
            if hit is None:
                self.table.remove(entry.key)

    def _resolve(self, fresh: list, closers: dict) -> None:
        """Owners of the batch's new sockets, all at once; a socket that
        entered and left inside one batch is gone already and is attributed
        to its closer, else (likely) to its listener's holders."""
        # Those that left within the batch are gone from the kernel too: no
        # lookup can find them (under churn, nearly every one: a netlink
        # round trip each was most of trace's cost).
        probes = {e.key: Probe(e.sock, e.netns, e.kid) for e in fresh
                  if self.table.get(e.key) is e}
        resolved = resolve_close_wait(self.resolver, list(set(probes.values()))) \
            if probes else {}
        listeners: dict[tuple, tuple[Owner, ...]] = {}  # one lookup per port and batch
        for entry in fresh:
            probe = probes.get(entry.key)
            hits = resolved.get(probe, []) if probe is not None else []
            if len(hits) > 1:
                # The same 4-tuple in several namespaces: every holder (bound
                # at its stayed look, when one of them is still there).
                entry.owners = tuple(sorted({o for h in hits for o in h.owners}))
            elif hits:
                hit, _taken = self.table.bind(entry, hits)
                entry.owners = hit.owners if hit else ()
                if hit is not None:
                    entry.inode = hit.diag.inode
            else:
                entry.owners = ()
            if not entry.owners:
                self._attribute(entry, closers.get(entry.key), listeners)
            for owner in entry.owners:
                self.stats.setdefault(owner, _Stats()).entered += 1
            self._where(entry.owners)  # while it runs: read again for the summary

    def _record(self, t: Transition, entry, closers: dict,
                pids: dict[int, Owner | None]) -> TraceRecord | None:
        """One transition's line (None: filtered out, or below --min-age)."""
        owners = (entry.owners or ()) if entry is not None else ()
        via = self._via.get(entry.key, Via.FD) if entry is not None else Via.NONE
        if t.kind is Kind.EXIT:
            if entry is not None:
                self._via.pop(entry.key, None)
            closer = closers.get(entry.key) if entry is not None \
                else self.resolver.closer(t, pids)
            if closer is not None and (not owners or via is Via.LISTENER):
                owners, via = (closer,), Via.CLOSE
        if not owners:
            via = Via.NONE
        if not self.wanted(owners):
            return None
        age = None
        if t.kind is Kind.EXIT and entry is not None:
            age = max(0.0, t.ts - entry.entered)
            for owner in owners:
                stats = self.stats.get(owner)
                if stats:
                    stats.longest = max(stats.longest, age)
        if self.min_age and (t.kind is Kind.ENTER or (t.kind is Kind.EXIT and (
                age is None or age < self.min_age))):
            return None  # counted in the summary, not shown
        return TraceRecord(t.ts + self.wall_offset, _EVENT[t.kind], t.sock, owners, age,
                           entry.netns if entry is not None else None,
                           where=self._where(owners), via=via)

    def _attribute(self, entry, closer: Owner | None, listeners: dict) -> None:
        """An entry whose fd was gone before it could be read: its closer,
        else (likely) the holders of the listener on its local port, the
        process that accepted it (a prefork server's workers share it)."""
        if closer is not None:
            entry.owners, self._via[entry.key] = (closer,), Via.CLOSE
            return
        sock = entry.sock
        where = (sock.family, sock.laddr, sock.lport)
        if where not in listeners:
            listeners[where] = tuple(self.resolver.owners(self.resolver.listening_on(sock)))
        if listeners[where]:
            entry.owners = listeners[where]
            self._via[entry.key] = Via.LISTENER

    def summary(self) -> list[ProcSummary]:
        now = self.clock()
        open_count: dict[Owner, int] = {}
        longest: dict[Owner, float] = {o: s.longest for o, s in self.stats.items()}
        for entry in self.table:
            for owner in entry.owners or ():
                open_count[owner] = open_count.get(owner, 0) + 1
                longest[owner] = max(longest.get(owner, 0.0), now - entry.entered)
        rows = [ProcSummary(o, s.entered, open_count.get(o, 0), longest.get(o, 0.0),
                            self._where((o,)))
                for o, s in self.stats.items() if self.wanted((o,))]
        rows.sort(key=lambda r: (-r.still_open, -r.entered, r.owner.pid))
        return rows
