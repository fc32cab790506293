"""When does each socket count, and against whom: the per-socket state
machine of `watch`.  Transitions come in (apply); each new socket is bound
to the kernel's socket and its holders found while it is young; at its
deadline the kernel is asked what the process did with it (evidence.py)
and it counts, or is looked at again later, or is dropped; the Counter
keeps each holder's counting sockets.  The Watcher decides about
processes; this module only about sockets."""

from __future__ import annotations

import logging
from typing import Callable

from resreap.engine import evidence
from resreap.engine.churn import Churn
from resreap.engine.config import Current
from resreap.engine.decisions import Event, Verdict, decision
from resreap.engine.owners import DUMP_ABOVE, Found, OwnerResolver, Probe, resolve_close_wait
from resreap.engine.policy import Counter
from resreap.engine.rulebook import HOLDERS_REMEMBERED, RuleBook
from resreap.engine.rules import Rule
from resreap.engine.tracker import CloseWaitTable, Entry, KeyedSocks
from resreap.bounded import BoundedDict
from resreap.host import procinfo
from resreap.model import Evidence, Key, Kind, Owner, SockId, Transition

log = logging.getLogger(__name__)

# Owners not found yet (the background scan is still reading, an accept
# queue shared by several processes) are looked for again after this, then
# twice as long each time up to the cap (a socket in flight in a unix
# socket has no holder at all, and must not cost a core).
RETRY_UNRESOLVED = 0.25
RETRY_UNRESOLVED_MAX = 60.0
# A counting socket still held by no one after this many looks (about 4 s)
# is an orphan (engine/losses says so).
ORPHAN_AFTER = 4
# Looks at that pace while a full scan is still reading for the socket
# (about 30 s): then the backoff, scan or no scan.
SEARCHED_MAX = 120
# ... and at most this many sockets per RETRY_UNRESOLVED (about 1,000 looks
# a second); the rest back off as usual.
SEARCHED_PER_RETRY = 256
# A counting socket is looked at again this often (new holders after a
# fork, or a change of evidence); the decision re-checks anyway.
RECHECK_COUNTED = 30.0
# Due sockets looked at per loop turn, the earliest first; the rest on the
# next turns, which follow at once.  A user's 20,000 sockets falling due
# together were one turn of 10 s or more (no watchdog ping, no other
# leak's reap).  No more than one chunk of exact lookups (owners
# .DUMP_ABOVE): past it a chunk dumps every CLOSE_WAIT socket of the host,
# 0.7 s at 20,000; 256 lookups take about 0.1 s.
DUE_PER_TURN = DUMP_ABOVE
# New sockets whose holders are looked for per loop turn (the same reason:
# 20,000 at once were one turn of 10 s on the fake host).  The rest wait
# for the next wakeup, not at once: while a scan is still reading, the
# same sockets would be asked for again in a spin.  A socket not looked
# for before its deadline is looked for then (check).
YOUNG_PER_TURN = DUMP_ABOVE


class Counting:
    def __init__(self, resolver: OwnerResolver, current: Current, book: RuleBook,
                 clock: Callable[[], float],
                 boottime: Callable[[], float] = procinfo.boottime) -> None:
        """``book``: which rule judges each holder; ``clock``: monotonic
        seconds (the events'); ``boottime``: CLOCK_BOOTTIME seconds, against
        which a process's age is read."""
        self.resolver = resolver
        self.book = book
        self.proc = resolver.proc
        self.current = current
        self._clock = clock
        self._boottime = boottime
        self._searched, self._searched_since = 0, float("-inf")  # prompt looks, this window
        self.table = CloseWaitTable()
        self.counter = Counter()
        self.young: list[Key] = []      # new sockets whose holders are looked for
        self.unlooked: list[Key] = []   # ... not looked for yet: past the turn's chunk
        self.recheck: list[Key] = []    # sockets to look at on the next turn
        # Keyed by (pid, start): a process that renames itself is the same
        # process (keyed with its name, each rename was a new entry).
        self._foreign: BoundedDict[tuple[int, int], bool] = BoundedDict(HOLDERS_REMEMBERED)
        self._serving: BoundedDict[tuple[int, int, int], bool] = BoundedDict(HOLDERS_REMEMBERED)
        self.orphaned = False  # a socket became an orphan since the last look
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.events_seen = {"existing": 0, "enter": 0, "exit": 0}
        # `top` sets a Churn to see each process's rates (watch does not:
        # nothing is recorded, nothing is looked up, per exit).
        self.churn: Churn | None = None

    def reconfigured(self) -> None:
        """New settings or rules are in force: every socket is judged again
        under them (its holder may fall under another rule now), none
        before the earliest grace has passed."""
        grace, now = self.current.rules.earliest, self._clock()
        self.book.reconfigured()
        self.table.reschedule_all(lambda e: max(now, e.entered + grace))

    def over(self, owner: Owner, exhausted_in: float | None = None) -> tuple[Rule, int] | None:
        """The first rule under which ``owner``'s counting sockets make it
        a target (RuleBook.over: the cached picks, cheap), and how many
        they are."""
        return self.book.over(owner, self.counting_socks(owner), exhausted_in)

    def standing(self, owner: Owner) -> list[tuple[Rule, int]]:
        """``owner``'s counting sockets per rule (RuleBook.standing)."""
        return self.book.standing(owner, self.counting_socks(owner))

    def counting_socks(self, owner: Owner) -> KeyedSocks:
        """The sockets counting against ``owner`` now."""
        return KeyedSocks(self.counter.by_owner.get(owner, ()), self.table)

    def due(self, now: float) -> list[Entry]:
        """Sockets whose deadline has come, and those to look at again."""
        due = self.table.due(now, DUE_PER_TURN)
        if self.recheck:
            keys, self.recheck = set(self.recheck), []
            due += [e for k in keys if (e := self.table.get(k)) is not None and e not in due]
        return due

    def apply(self, batch: list[Transition]) -> None:
        filters, debug, table = self.current.filters, self._debug, self.table
        grace = self.current.rules.earliest
        closers: dict[int, Owner | None] = {}  # this batch's closers, read once each
        for t in batch:
            if filters.ignore and filters.ignores(t.sock):
                continue
            if t.kind is Kind.EXIT:
                entry, again = table.exit_of(t)
                new = False
            else:
                entry, new = table.apply(t)
            self.events_seen[t.kind.value] += 1
            if debug:
                decision(Event.TRANSITION, logging.DEBUG, kind=t.kind.value,
                         socket=f"{t.sock.local}->{t.sock.remote}", lport=t.sock.lport,
                         cpu_pid=t.cpu_pid, note="cpu_pid: a hint only")
            if t.kind is Kind.EXIT:
                if entry is not None:
                    self._gone(entry)
                    if self.churn is not None:
                        self.churn.exited(entry.owners, entry.entered, t, self.resolver, closers)
                    if entry.bound and not entry.by_cookie:
                        self._rebind_twins(t.sock)
                else:
                    self.recheck.extend(e.key for e in again)
            elif new:
                table.schedule(entry, entry.entered + grace)
                self.young.append(entry.key)

    def credit(self, closers: dict[int, int], now: float) -> None:
        """The kernel's counts of sockets each process (pid) closed before
        they were seen one by one (a source with ``credits``): into the
        rates, and the transitions seen (an entry and an exit each)."""
        if self.churn is None or not closers:
            return
        for owner in self.resolver.owners(closers):
            n = closers[owner.pid]
            self.churn.credit(owner, n, now)
            self.events_seen["enter"] += n
            self.events_seen["exit"] += n

    def _rebind_twins(self, sock: SockId) -> None:
        """An event's socket (the kernel's address) cannot be matched to
        sock_diag's cookie: with the same 4-tuple in two namespaces, which
        entry took which socket was a guess.  When one of them leaves, the
        others are bound afresh to what is left in the kernel, so the exit
        of one never ends the other's timer."""
        for twin in self.table.same_tuple(sock):
            if twin.bound and not twin.by_cookie:
                self._forget(twin)
                twin.netns = twin.kid = None
                self._hold(twin, None)
                self.recheck.append(twin.key)

    # "Holds" and "counts against": _hold is the only writer of an entry's
    # holders; _count, _forget and _uncount are the only places that touch
    # the per-owner counter or an entry's ``counted`` and ``against``, so
    # the two cannot disagree.

    @staticmethod
    def _hold(entry: Entry, owners: tuple[Owner, ...] | None) -> None:
        """Who holds the socket, as found now (None: to be looked for)."""
        entry.owners = owners

    def _count(self, entry: Entry, against: tuple[Owner, ...]) -> None:
        """The entry counts, against these holders (none: not found yet)."""
        self._forget(entry)
        entry.counted, entry.against = True, against
        if against:
            self.counter.add(entry.key, against)

    def _forget(self, entry: Entry) -> None:
        """Uncount an entry (it left, or is about to be counted anew)."""
        if entry.counted and entry.against:
            self._uncount(entry.key, entry.against)
        entry.counted, entry.against = False, ()

    def _uncount(self, key: Key, owners: tuple[Owner, ...]) -> None:
        self.counter.remove(key, owners)

    def take_young(self) -> list[Key]:
        """The new sockets whose holders are to be looked for, handed over
        once (the loop resolves them after applying its batch)."""
        young, self.young = self.unlooked + self.young, []
        self.unlooked = []
        return young

    def _gone(self, entry: Entry) -> None:
        """An entry that left the table: uncount it, and drop its cached
        holders (one cache entry per connection would grow forever)."""
        self._forget(entry)
        if entry.inode:
            self.resolver.index.forget(entry.inode)

    def drop(self, entry: Entry) -> None:
        """The socket is not in CLOSE_WAIT any more (the kernel says so)."""
        self.table.remove(entry.key)
        self._gone(entry)

    def _probe(self, entry: Entry) -> Probe:
        return Probe(entry.sock, entry.netns, entry.kid)

    def _bind(self, entry: Entry, found: list[Found]) -> Found | None:
        """Which namespace's socket this entry is.  None: no longer in
        CLOSE_WAIT, or it is another entry's socket (seeded at start and
        reported by the kernel too), in which case the entry is dropped."""
        hit, taken = self.table.bind(entry, found)
        if taken:
            self.drop(entry)
        return hit

    def resolve_young(self, young: list[Key]) -> None:
        """Bind new sockets and find their owners while they are young: by
        the deadline the answer is cached and costs one readlink to verify.
        Sockets that came and went within one batch never get here."""
        pending = [e for k in young if (e := self.table.get(k)) is not None and e.owners is None]
        if len(pending) > YOUNG_PER_TURN:
            self.unlooked = [e.key for e in pending[YOUNG_PER_TURN:]]
            pending = pending[:YOUNG_PER_TURN]
        if not pending:
            return
        # Churn sockets live for milliseconds, leaks for the grace period: a
        # scan of every process (a second at 100k connections) is only worth
        # it once a socket has lasted a while, still well before its deadline.
        settled = self._clock() - min(0.5, self.current.rules.earliest / 4)
        old = [self._probe(e) for e in pending if e.entered <= settled]
        recent = [self._probe(e) for e in pending if e.entered > settled]
        resolved = resolve_close_wait(self.resolver, old) if old else {}
        if recent:
            resolved.update(resolve_close_wait(self.resolver, recent, full_scan=False))
        for entry in pending:
            if self.table.get(entry.key) is not entry:
                continue
            hit = self._bind(entry, resolved.get(self._probe(entry), []))
            if hit is None:
                continue  # left CLOSE_WAIT: its exit is on the way
            entry.inode = hit.diag.inode
            if hit.owners:
                self._hold(entry, hit.owners)
            else:
                # Not found yet (the full scan is rate-limited): try again on
                # the next wakeup, so that the deadline finds it resolved.
                self.young.append(entry.key)

    def _serves(self, owner: Owner, sock: SockId) -> bool:
        """Does ``owner``, or a process above it, hold a listener on the
        socket's local address and port (the service that accepted it)?"""
        key = (*owner.ident, sock.lport)
        known = self._serving.get(key)
        if known is None:
            listeners = self.resolver.listening_on(sock)
            # Bounded (procinfo.ANCESTRY_DEPTH): past it, "not served", so
            # the root-accepted socket does not count.
            known = bool(listeners & self.proc.ancestors(owner.pid, procinfo.ANCESTRY_DEPTH))
            self._serving[key] = known
        return known

    def _against(self, hit: Found, age: float,
                 loose: evidence.Judgement) -> tuple[tuple[Owner, ...], float]:
        """The holders this socket counts against, each judged under its own
        rule (``loose``: the judgement under the loosest rule, which is the
        only one when there are no rules), and in how many seconds to look
        again for those it does not count against yet (inf: none).  Not
        against holders that got it from another non-root user, and for a
        socket never accepted, only listeners that have been there for their
        rule's whole stall (a worker just started to replace a hung one has
        had no chance to accept it)."""
        out, later = [], float("inf")
        plain = self.current.rules.plain
        for owner in hit.owners:
            rule = self.book.rule_of(owner, hit.diag.sock)
            if rule is None:
                continue  # no rule judges it: default = "ignore", or unreadable
            judged = loose if plain else evidence.judge(hit.diag, age, rule.limits.rules)
            if not judged.counts:
                later = min(later, judged.recheck)
                continue
            kind = judged.evidence
            if kind is Evidence.QUEUED and \
                    procinfo.age(owner.start, self._boottime()) < rule.limits.stall:
                continue
            uids = self.book.uids(owner)
            if uids is None:
                continue
            vouched = hit.diag.uid == 0 and 0 not in uids and (
                kind is Evidence.QUEUED or self._serves(owner, hit.diag.sock))
            if evidence.counts_against(hit.diag.uid, uids, vouched):
                out.append(owner)
            elif owner.ident not in self._foreign:
                self._foreign[owner.ident] = True
                decision(Event.FOREIGN, logging.INFO, pid=owner.pid, comm=owner.comm,
                         socket_uid=hit.diag.uid, uids=sorted(uids),
                         socket=f"{hit.diag.sock.local}->{hit.diag.sock.remote}",
                         note="made by another user and passed in: does not count against it")
        return tuple(out), later

    def _count_held(self, entry: Entry, hit: Found, loose: evidence.Judgement,
                    now: float) -> tuple[Owner, ...]:
        """A socket that counts under the loosest rule, with holders: count
        it against those whose own rule says so, and look again when it
        would count against the others."""
        against, later = self._against(hit, now - entry.entered, loose)
        if against or later == float("inf"):
            self._count(entry, against)
            self.table.schedule(entry, now + min(RECHECK_COUNTED, later))
        else:
            self.table.schedule(entry, now + later)  # not yet under its holders' rules
        return against

    def check(self, entries: list[Entry], now: float) -> set[Owner]:
        """Sockets due for a look: ask the kernel what their process did
        with each (a lost exit must not count), judge the evidence, and
        count the socket against the holders it may count against."""
        touched: set[Owner] = set()
        rules = self.current.rules.loosest
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}))
        for entry in entries:
            if self.table.get(entry.key) is not entry:
                continue
            hit = self._bind(entry, resolved.get(self._probe(entry), []))
            if hit is None:
                if self.table.get(entry.key) is entry:
                    # Perhaps missed (procfs under churn, a namespace not
                    # noticed yet): looked for again before it is dropped.
                    maybe = self.resolver.kernel.through_procfs or not entry.bound
                    if maybe and self.table.look_again(entry, now):
                        continue
                    self.drop(entry)
                if self._debug:
                    self._timer(entry, Verdict.DROPPED)
                continue
            entry.unseen = 0
            judged = evidence.judge(hit.diag, now - entry.entered, rules)
            self._forget(entry)
            self._hold(entry, hit.owners)
            entry.evidence, entry.inode = judged.evidence, hit.diag.inode
            if not judged.counts:
                self.table.schedule(entry, now + judged.recheck)
                if self._debug:
                    self._timer(entry, Verdict.WAITING, evidence=judged.evidence.value,
                                again_in=round(judged.recheck, 2))
                continue
            if not hit.owners:
                self._count(entry, ())  # counts; against whom is not known yet
                if self._still_searched(entry, now):
                    continue
                entry.misses += 1
                delay = min(RETRY_UNRESOLVED * 2 ** (entry.misses - 1), RETRY_UNRESOLVED_MAX)
                self.table.schedule(entry, now + delay)
                if entry.misses == ORPHAN_AFTER:
                    self.orphaned = True  # said by engine/losses, at most hourly
                if self._debug:
                    self._timer(entry, Verdict.UNOWNED, evidence=judged.evidence.value,
                                again_in=round(delay, 2))
                continue
            entry.misses = 0
            against = self._count_held(entry, hit, judged, now)
            touched.update(against)
            if self._debug:
                self._timer(entry, Verdict.COUNTS, evidence=judged.evidence.value,
                            counts_for=[o.pid for o in against])
        return touched

    @staticmethod
    def _timer(entry: Entry, verdict: Verdict, **fields) -> None:
        decision(Event.TIMER, logging.DEBUG, socket=f"{entry.sock.local}->{entry.sock.remote}",
                 verdict=verdict.value, **fields)

    def _still_searched(self, entry: Entry, now: float) -> bool:
        """A counting socket whose holder is not found yet while a full scan
        still reads /proc for it (a cold host, fd tables of 20,000): looked
        at again promptly, without counting a miss.  The backoff (and the
        orphans line) start only once a whole scan found nobody, so the
        reap follows the scan's answer within RETRY_UNRESOLVED.  Bounded:
        a scan kept busy by new requests cannot hold it at this pace for
        more than SEARCHED_MAX looks."""
        if entry.waited >= SEARCHED_MAX or not self.resolver.index.scanner.searching(entry.inode):
            return False
        # And across sockets: a user's thousands of sockets in flight (held
        # by no one) must not buy thousands of lookups a second by keeping
        # a scan busy.
        if now - self._searched_since >= RETRY_UNRESOLVED:
            self._searched_since, self._searched = now, 0
        if self._searched >= SEARCHED_PER_RETRY:
            return False
        self._searched += 1
        entry.waited += 1
        self.table.schedule(entry, now + RETRY_UNRESOLVED)
        return True

    def verify(self, owner: Owner, rule: Rule,
               now: float) -> dict[Key, tuple[Entry, Found, object]]:
        """The owner's counting sockets under ``rule`` that, right now, are
        still in CLOSE_WAIT, still held by it, and still count under it (it
        may have closed them, passed them on or started using them since
        they counted)."""
        entries = []
        for key in list(self.counter.by_owner.get(owner, ())):
            entry = self.table.get(key)
            if entry is None:
                self._uncount(key, (owner,))  # a safety net: entries leave through _gone
            elif self.book.rule_of(owner, entry.sock) is rule:
                entries.append(entry)
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}))
        held: dict[Key, tuple[Entry, Found, object]] = {}
        for entry in entries:
            hit = self._bind(entry, resolved.get(self._probe(entry), []))
            if hit is None:
                if self.table.get(entry.key) is entry:
                    self.drop(entry)
                continue
            judged = evidence.judge(hit.diag, now - entry.entered, rule.limits.rules)
            holds = any(o.pid == owner.pid and o.start == owner.start for o in hit.owners)
            if judged.counts and holds:
                held[entry.key] = (entry, hit, judged.evidence)
                continue
            # Changed since it counted: count it again as it stands now.
            loose = evidence.judge(hit.diag, now - entry.entered, self.current.rules.loosest)
            self._forget(entry)
            self._hold(entry, hit.owners)
            entry.evidence = loose.evidence
            if loose.counts:
                self._count_held(entry, hit, loose, now)
            else:
                self.table.schedule(entry, now + loose.recheck)
        return held

    def left_behind(self, keys) -> int:
        """After a kill: how many of its sockets are still in CLOSE_WAIT
        (other holders: fork, fd passing)?  Those are looked at again at
        once, holders found afresh, so the leak is not left half-reaped."""
        entries = [e for k in keys if (e := self.table.get(k)) is not None]
        if not entries:
            return 0
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}),
                                      full_scan=False)
        left = 0
        for entry in entries:
            if resolved.get(self._probe(entry)):
                left += 1
                self._forget(entry)
                self._hold(entry, None)
                self.recheck.append(entry.key)
        return left
