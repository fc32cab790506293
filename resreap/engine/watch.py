"""`resreap watch`: per-socket CLOSE_WAIT timers, and the decisions they
drive.  At each socket's deadline the kernel is asked what the process did
with it (evidence.py): a socket whose EOF was read and ignored counts after
the grace period, one left unread or in an accept queue after the longer
stall period, one still sending never.  A process holding at least the
limit of counting sockets is handed to the kill engine.  Decisions happen
at the deadline itself: the loop sleeps exactly until the next timer."""

from __future__ import annotations

import logging
import time
from typing import Callable, NamedTuple

from resreap.engine import evidence
from resreap.host import procinfo, supervisor
from resreap.engine.decisions import decision
from resreap.errors import AccessDenied, ProcessGone, ProcessUnreadable
from resreap.sources.events import EventSource
from resreap.engine.filters import Filters
from resreap.engine.killer import Killer, Outcome, Plan, Target
from resreap.model import Evidence, Holder, Key, Kind, Owner, Result, Snapshot, SockId, \
    SpareReason, Transition
from resreap.engine.owners import Found, OwnerResolver, Probe, resolve_close_wait
from resreap.engine.policy import Counter, Eligibility, Limits, StormGuard
from resreap.host.supervisor import Revival
from resreap.engine.tracker import CloseWaitTable, Entry

log = logging.getLogger(__name__)

# Owners not found yet (the background scan is still reading, an accept
# queue shared by several processes) are looked for again after this, then
# twice as long each time up to the cap (a socket in flight in a unix
# socket has no holder at all, and must not cost a core).
RETRY_UNRESOLVED = 0.25
RETRY_UNRESOLVED_MAX = 60.0
# A counting socket still held by no one after this many looks (about 4 s)
# is an orphan; the `orphans` line is repeated at most this often.
ORPHAN_AFTER = 4
ORPHANS_EVERY = 3600.0
# A counting socket is looked at again this often (new holders after a
# fork, or a change of evidence); the decision re-checks anyway.
RECHECK_COUNTED = 30.0
# Without lost events, the kernel's CLOSE_WAIT set is still compared with
# ours this often, so that no leak can hide behind a missed event.
RECONCILE_EVERY = 60.0
SAMPLE = 3  # endpoints named in a decision line
UNREADABLE_RETRY = 10.0


class WatchConfig(NamedTuple):
    limits: Limits
    plan: Plan
    filters: Filters


def _where(pid: int, proc_root: str) -> dict[str, str]:
    """unit= and container= for a decision line about ``pid``."""
    try:
        return supervisor.read(pid, proc_root).fields()
    except (ProcessGone, AccessDenied):
        return {}


def _endpoints(socks: list[SockId]) -> list[str]:
    socks = sorted(socks)
    shown = [f"{s.local}->{s.remote}" for s in socks[:SAMPLE]]
    if len(socks) > SAMPLE:
        shown.append(f"+{len(socks) - SAMPLE} more")
    return shown


class Watcher:
    def __init__(self, source: EventSource, resolver: OwnerResolver, config: WatchConfig,
                 killer: Killer | None = None, tick=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: CLOCK_MONOTONIC seconds, the clock of the events'
        timestamps (tests pass a fake one with a fake event source)."""
        self._clock = clock
        self.source = source
        self.resolver = resolver
        self.config = config
        self.limits = config.limits
        self.filters = config.filters
        self.proc_root = resolver.proc_root
        self.table = CloseWaitTable()
        self.counter = Counter()
        self.eligibility = Eligibility(config.filters, self.proc_root)
        self.storm = StormGuard(config.limits.max_kills, config.limits.per)
        self.killer = killer or Killer(config.plan, self.proc_root)
        self._young: list[Key] = []
        self._recheck: list[Key] = []
        self._deferred: dict[Owner, float] = {}
        self._reaped: set[Owner] = set()      # handed to the killer already
        self._spared: set[Owner] = set()      # ineligible: said once
        self._foreign: set[Owner] = set()     # passed-in sockets: said once
        self._uids: dict[Owner, frozenset[int]] = {}
        self._lost = 0
        self._next_reconcile = 0.0
        self._orphans_said = float("-inf")
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.outcomes: list[Outcome] = []
        # Called once per loop turn (sd_notify pings, config reloads).
        self._tick = tick
        self.events_seen = {"existing": 0, "enter": 0, "exit": 0}
        self.results: dict[str, int] = {}
        self.reaped_evidence: dict[str, int] = {}
        self.revivals: dict[Revival, int] = {}
        self.hook_failures = 0

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        self.resolver.learn_listeners()
        seeds = self.source.start()
        self._apply(seeds)
        self._next_reconcile = self._clock() + RECONCILE_EVERY
        if seeds:
            decision("existing", logging.INFO, sockets=len(self.table),
                     note=f"already in CLOSE_WAIT at start; they count from now + "
                          f"{self.limits.grace:g}s or more (see evidence)")

    def _wake_at(self, now: float) -> float:
        wake = now + self.source.latency
        deadline = self.table.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._deferred:
            wake = min(wake, min(self._deferred.values()))
        if self._recheck:
            wake = now
        return min(wake, self._next_reconcile)

    def step(self) -> None:
        now = self._clock()
        batch = self.source.read(max(0.0, self._wake_at(now) - now))
        young, self._young = self._young, []
        self._apply(batch)
        self._resolve_young(young)
        now = self._clock()
        touched: set[Owner] = set()
        due = self.table.due(now)
        if self._recheck:
            keys, self._recheck = set(self._recheck), []
            due += [e for k in keys if (e := self.table.get(k)) is not None and e not in due]
        if due:
            touched |= self._check(due, now)
        for owner, when in list(self._deferred.items()):
            if when <= now:
                del self._deferred[owner]
                touched.add(owner)
        if touched:
            self._decide(touched, now)
        self._collect()
        self._check_lost(now)
        if self._tick is not None:
            self._tick(self)

    def reconfigure(self, config: WatchConfig) -> None:
        """New settings from a reloaded config file: they apply to the next
        decisions; running kill sequences keep the plan they started with."""
        self.config = config
        self.limits = config.limits
        self.filters = config.filters
        self.eligibility = Eligibility(config.filters, self.proc_root)
        self.storm.max_kills, self.storm.per = config.limits.max_kills, config.limits.per
        self.killer.plan = config.plan
        self._spared.clear()
        # Judge every socket again under the new rules, none before its
        # (new) grace has passed.
        now = self._clock()
        self.table.reschedule_all(lambda e: max(now, e.entered + config.limits.grace))
        for owner in list(self.counter.by_owner):
            self._deferred.setdefault(owner, now)

    def snapshot(self, top: int) -> Snapshot:
        """Figures for metrics: cheap enough to build once a second."""
        import heapq

        counts = [(len(socks), owner) for owner, socks in self.counter.by_owner.items()]
        best = heapq.nlargest(top, counts, key=lambda c: c[0])
        holders = []
        for n, o in best:
            where = _where(o.pid, self.proc_root)
            holders.append(Holder(o.pid, o.comm, where.get("unit", ""), where.get("container", ""), n))
        return Snapshot(
            tracked=len(self.table),
            top=tuple(holders),
            other=sum(n for n, _ in counts) - sum(n for n, _ in best),
            outcomes={r.value: n for r, n in self.results.items()},
            evidence=dict(self.reaped_evidence),
            revivals={r.value: n for r, n in self.revivals.items()},
            hook_failures=self.hook_failures,
            events=dict(self.events_seen),
            lost=self._lost,
        )

    @property
    def reaped(self) -> int:
        """Processes killed (terminated or needing SIGKILL) so far."""
        return sum(n for r, n in self.results.items() if r.killed_it)

    def run(self) -> None:
        """Loop forever; call ``start`` first."""
        while True:
            self.step()

    def shutdown(self, timeout: float) -> None:
        """Let running kill sequences finish (bounded), log what is left."""
        self.killer.join(timeout)
        self._collect()
        left = self.killer.running
        if left:
            decision("abandon", logging.WARNING, kills_in_progress=left,
                     note="resreap is exiting; these sequences were cut short")
        self.source.close()

    # -- events -----------------------------------------------------------

    def _apply(self, batch: list[Transition]) -> None:
        ignores, debug, table = self.filters.ignores, self._debug, self.table
        grace = self.limits.grace
        for t in batch:
            if self.filters.ignore and ignores(t.sock):
                continue
            entry, new = table.apply(t)
            self.events_seen[t.kind.value] += 1
            if debug:
                log.debug("event %s %s -> %s cpu_pid=%d (hint only)", t.kind.value,
                          t.sock.local, t.sock.remote, t.cpu_pid)
            if t.kind is Kind.EXIT:
                if entry is not None:
                    self._gone(entry)
                    if entry.bound and entry.kid != entry.key[1]:
                        self._rebind_twins(t.sock)
                else:
                    # Seeded and reconciled sockets are keyed by their cookie,
                    # the exit event by the kernel's address: check the
                    # entries with this 4-tuple against the kernel now.
                    self._recheck.extend(e.key for e in table.same_tuple(t.sock) if e.bound)
            elif new:
                table.schedule(entry, entry.entered + grace)
                self._young.append(entry.key)

    def _rebind_twins(self, sock: SockId) -> None:
        """An event's socket (the kernel's address) cannot be matched to
        sock_diag's cookie: with the same 4-tuple in two namespaces, which
        entry took which socket was a guess.  When one of them leaves, the
        others are bound afresh to what is left in the kernel, so the exit
        of one never ends the other's timer."""
        for twin in self.table.same_tuple(sock):
            if twin.bound and twin.kid != twin.key[1]:
                self._forget(twin)
                twin.netns = twin.kid = None
                twin.owners = None
                self._recheck.append(twin.key)

    def _forget(self, entry: Entry) -> None:
        """Uncount an entry (it left, or is about to be counted anew)."""
        if entry.counted and entry.owners:
            self.counter.remove(entry.key, entry.owners)
        entry.counted = False

    def _gone(self, entry: Entry) -> None:
        """An entry that left the table: uncount it, and drop its cached
        holders (one cache entry per connection would grow forever)."""
        self._forget(entry)
        if entry.inode:
            self.resolver.index.forget(entry.inode)

    def _drop(self, entry: Entry) -> None:
        self.table.remove(entry.key)
        self._gone(entry)

    def _probe(self, entry: Entry) -> Probe:
        return Probe(entry.sock, entry.netns, entry.kid)

    def _bind(self, entry: Entry, found: list[Found]) -> Found | None:
        """Which namespace's socket this entry is.  None: no longer in
        CLOSE_WAIT, or it is another entry's socket (seeded at start and
        reported by the kernel too), in which case the entry is dropped."""
        if entry.bound:
            return found[0] if found else None
        claimed = {(e.netns, e.kid) for e in self.table.same_tuple(entry.sock)
                   if e.bound and e is not entry}
        free = [f for f in found if (f.netns, f.diag.kid) not in claimed]
        if not free:
            if found:
                self._drop(entry)
            return None
        hit = free[0]
        entry.netns, entry.kid = hit.netns, hit.diag.kid
        return hit

    def _resolve_young(self, young: list[Key]) -> None:
        """Bind new sockets and find their owners while they are young: by
        the deadline the answer is cached and costs one readlink to verify.
        Sockets that came and went within one batch never get here."""
        pending = [e for k in young if (e := self.table.get(k)) is not None and e.owners is None]
        if not pending:
            return
        # Churn sockets live for milliseconds, leaks for the grace period: a
        # scan of every process (a second at 100k connections) is only worth
        # it once a socket has lasted a while, still well before its deadline.
        settled = self._clock() - min(0.5, self.limits.grace / 4)
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
                entry.owners = hit.owners
            else:
                # Not found yet (the full scan is rate-limited): try again on
                # the next wakeup, so that the deadline finds it resolved.
                self._young.append(entry.key)

    # -- timers -----------------------------------------------------------

    def _holder_uids(self, owner: Owner) -> frozenset[int] | None:
        uids = self._uids.get(owner)
        if uids is None:
            try:
                uids = procinfo.read_uids(owner.pid, self.proc_root)
            except (ProcessGone, AccessDenied):
                return None  # cannot be judged: nothing counts against it
            if len(self._uids) > 4096:  # bounded: owners come and go
                self._uids.clear()
            self._uids[owner] = uids
        return uids

    def _against(self, hit: Found, kind: Evidence) -> tuple[Owner, ...]:
        """The holders this socket may count against: not those that got it
        from another non-root user, and for a socket never accepted, only
        listeners that have been there for the whole stall (a worker just
        started to replace a hung one has had no chance to accept it)."""
        out = []
        for owner in hit.owners:
            if kind is Evidence.QUEUED and procinfo.age(owner.start) < self.limits.stall:
                continue
            uids = self._holder_uids(owner)
            if uids is None:
                continue
            if evidence.counts_against(hit.diag.uid, uids):
                out.append(owner)
            elif owner not in self._foreign:
                self._foreign.add(owner)
                if len(self._foreign) > 4096:
                    self._foreign.clear()
                decision("foreign", logging.INFO, pid=owner.pid, comm=owner.comm,
                         socket_uid=hit.diag.uid, uids=sorted(uids),
                         socket=f"{hit.diag.sock.local}->{hit.diag.sock.remote}",
                         note="made by another user and passed in: does not count against it")
        return tuple(out)

    def _check(self, entries: list[Entry], now: float) -> set[Owner]:
        """Sockets due for a look: ask the kernel what their process did
        with each (a lost exit must not count), judge the evidence, and
        count the socket against the holders it may count against."""
        touched: set[Owner] = set()
        rules = self.limits.rules
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}))
        for entry in entries:
            if self.table.get(entry.key) is not entry:
                continue
            hit = self._bind(entry, resolved.get(self._probe(entry), []))
            if hit is None:
                if self.table.get(entry.key) is entry:
                    self._drop(entry)
                if self._debug:
                    log.debug("timer %s -> %s: no longer in CLOSE_WAIT, dropped",
                              entry.sock.local, entry.sock.remote)
                continue
            judged = evidence.judge(hit.diag, now - entry.entered, rules)
            self._forget(entry)
            entry.owners, entry.evidence, entry.inode = hit.owners, judged.evidence, hit.diag.inode
            if not judged.counts:
                self.table.schedule(entry, now + judged.recheck)
                if self._debug:
                    log.debug("timer %s -> %s: %s, does not count yet (again in %.2fs)",
                              entry.sock.local, entry.sock.remote, judged.evidence.value,
                              judged.recheck)
                continue
            entry.counted = True
            if not hit.owners:
                entry.misses += 1
                delay = min(RETRY_UNRESOLVED * 2 ** (entry.misses - 1), RETRY_UNRESOLVED_MAX)
                self.table.schedule(entry, now + delay)
                if entry.misses == ORPHAN_AFTER:
                    self._say_orphans(now)
                if self._debug:
                    log.debug("timer %s -> %s: counts, owner not found yet (again in %.2fs)",
                              entry.sock.local, entry.sock.remote, delay)
                continue
            entry.misses = 0
            against = self._against(hit, judged.evidence)
            entry.owners = against
            self.counter.add(entry.key, against)
            touched.update(against)
            self.table.schedule(entry, now + RECHECK_COUNTED)
            if self._debug:
                log.debug("timer %s -> %s: %s, counts for %s", entry.sock.local,
                          entry.sock.remote, judged.evidence.value,
                          ",".join(str(o.pid) for o in against) or "nobody")
        return touched

    def _say_orphans(self, now: float) -> None:
        """Sockets that count and that no process holds: say once (an hour)
        that they exist, and why nobody can be reaped for them."""
        if now - self._orphans_said < ORPHANS_EVERY:
            return
        self._orphans_said = now
        orphans = sum(1 for e in self.table if e.counted and not e.owners)
        denied = len(self.resolver.index.denied)
        decision("orphans", logging.WARNING, sockets=orphans, unreadable_processes=denied,
                 note="in CLOSE_WAIT and counting, but held by no process found: in flight in "
                      "a unix socket, held by a dying process"
                      + (", or by a process whose fds cannot be read" if denied else "")
                      + "; nobody can be reaped for them; looked for again less and less often")

    # -- decisions --------------------------------------------------------

    def _decide(self, owners: set[Owner], now: float) -> None:
        for owner in sorted(owners):
            count = self.counter.count(owner)
            if count < self.limits.limit:
                if self._debug:
                    log.debug("pid %d (%s): %d counting socket(s), below the limit %d",
                              owner.pid, owner.comm, count, self.limits.limit)
                continue
            if owner in self._reaped or self.killer.busy(owner.pid):
                continue
            if self._deferred.get(owner, now) > now:
                continue  # spared, rate-limited or unreadable: judged at its time
            if self._children_first(owner, now):
                continue
            if self.killer.full:
                # Bounded concurrency: decide when a kill slot is free, so that
                # a "reap" line always means a kill sequence started.
                self._deferred[owner] = now + 0.05
                continue
            self._consider(owner, now)

    def _children_first(self, owner: Owner, now: float) -> bool:
        """Reap the least: a process whose counting sockets its own
        descendants hold too, and who are over the limit themselves (a
        prefork master and its workers share the listener and its accept
        queue), waits while they are handled; it is judged again after
        that, and reaped only if the leak remains."""
        mine = self.counter.by_owner.get(owner)
        if not mine:
            return False
        kids = []
        for other, keys in self.counter.by_owner.items():
            if other != owner and other not in self._spared and len(keys) >= self.limits.limit \
                    and keys & mine \
                    and owner.pid in procinfo.ancestors(other.pid, self.proc_root) - {other.pid}:
                kids.append(other.pid)
        if not kids:
            return False
        plan = self.config.plan
        wait = plan.hook_timeout * bool(plan.hook) + 2 * plan.wait + self.limits.grace + 5.0
        if owner not in self._deferred:
            decision("children-first", logging.INFO, pid=owner.pid, comm=owner.comm,
                     **_where(owner.pid, self.proc_root),
                     children=sorted(kids), again_in=round(wait, 1),
                     note="its descendants hold the same sockets: they go first")
        self._deferred[owner] = now + wait
        return True

    def _consider(self, owner: Owner, now: float) -> None:
        try:
            info = self.eligibility.info(owner)
        except ProcessGone:
            return  # its sockets' exits are on their way
        except (ProcessUnreadable, AccessDenied) as exc:
            decision("unreadable", logging.WARNING, pid=owner.pid, comm=owner.comm,
                     reason=str(exc), retry_in=UNREADABLE_RETRY)
            self._deferred[owner] = now + UNREADABLE_RETRY
            return
        verdict = self.eligibility.check(info)
        if not verdict.ok:
            if owner not in self._spared:
                self._spared.add(owner)
                level = logging.DEBUG if verdict.reason is SpareReason.NOT_SELECTED \
                    else logging.WARNING
                decision("spare", level, pid=info.pid, comm=info.comm,
                         **_where(info.pid, self.proc_root), cmd=info.cmdline,
                         count=self.counter.count(owner), reason=verdict.why)
            return
        allowed = self.storm.next_allowed(info.cmdline, now,
                                          started=now - procinfo.age(info.start))
        if allowed:
            if owner not in self._deferred:
                decision("storm", logging.WARNING, pid=info.pid, comm=info.comm,
                         **_where(info.pid, self.proc_root), cmd=info.cmdline,
                         kills=self.storm.max_kills, per=self.storm.per,
                         next_in=round(allowed - now, 1),
                         note="this command keeps leaking after restarts: kills are rate-limited")
            self._deferred[owner] = allowed
            return
        verified = self._verify(owner, now)
        if len(verified) < self.limits.limit:
            if self._debug:
                log.debug("pid %d: holds only %d counting socket(s) on re-check",
                          owner.pid, len(verified))
            return
        if not self._harmful(owner, len(verified), now):
            return
        rows = sorted(verified.values(), key=lambda r: r[0].sock)
        socks = [entry.sock for entry, _hit, _kind in rows]
        oldest = max(now - entry.entered for entry, _hit, _kind in rows)
        found = evidence.summary(kind for _e, _h, kind in rows)
        try:
            where = supervisor.read(info.pid, self.proc_root)
        except (ProcessGone, AccessDenied):
            where = None
        target = Target(info, tuple(socks), oldest, tuple(hit.diag.inode for _e, hit, _k in rows),
                        self.limits.limit, found, tuple(entry.key for entry, _h, _k in rows),
                        where)
        plan = self.config.plan
        decision("reap" if not plan.dry_run else "would-reap", logging.WARNING,
                 pid=info.pid, comm=info.comm, **(where.fields() if where else {}),
                 count=len(socks), limit=self.limits.limit,
                 evidence=found, oldest=round(oldest, 3), sockets=_endpoints(socks),
                 cmd=info.cmdline, plan=plan.describe())
        if not self.killer.submit(target):  # only if it filled up just now
            log.warning("pid %d: kill slots full, deciding again shortly", owner.pid)
            self._deferred[owner] = now + 0.05
            return
        for _entry, _hit, kind in rows:
            self.reaped_evidence[kind.value] = self.reaped_evidence.get(kind.value, 0) + 1
        self._reaped.add(owner)

    def _harmful(self, owner: Owner, count: int, now: float) -> bool:
        """--fd-percent: the counting sockets must also be that share of the
        process's soft fd limit (the exhaustion that takes a server down)."""
        percent = self.limits.fd_percent
        if not percent:
            return True
        try:
            soft = procinfo.fd_soft_limit(owner.pid, self.proc_root)
        except (ProcessGone, AccessDenied):
            return False
        if soft is None or count * 100 >= percent * soft:
            return True
        if self._debug:
            log.debug("pid %d: %d counting socket(s) < %g%% of its fd limit %d",
                      owner.pid, count, percent, soft)
        self._deferred[owner] = now + max(self.limits.grace, 1.0)
        return False

    def _verify(self, owner: Owner, now: float) -> dict[Key, tuple[Entry, Found, object]]:
        """The owner's counting sockets that, right now, are still in
        CLOSE_WAIT, still held by it, and still count (it may have closed
        them, passed them on or started using them since they counted)."""
        entries = []
        for key in list(self.counter.by_owner.get(owner, ())):
            entry = self.table.get(key)
            if entry is None:
                self.counter.remove(key, (owner,))
            else:
                entries.append(entry)
        rules = self.limits.rules
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}))
        held: dict[Key, tuple[Entry, Found, object]] = {}
        for entry in entries:
            hit = self._bind(entry, resolved.get(self._probe(entry), []))
            if hit is None:
                if self.table.get(entry.key) is entry:
                    self._drop(entry)
                continue
            judged = evidence.judge(hit.diag, now - entry.entered, rules)
            holds = any(o.pid == owner.pid and o.start == owner.start for o in hit.owners)
            if judged.counts and holds:
                held[entry.key] = (entry, hit, judged.evidence)
                continue
            # Changed since it counted: count it again as it stands now.
            self._forget(entry)
            entry.owners, entry.evidence = hit.owners, judged.evidence
            if judged.counts:
                entry.counted = True
                entry.owners = self._against(hit, judged.evidence)
                self.counter.add(entry.key, entry.owners)
                self.table.schedule(entry, now + RECHECK_COUNTED)
            else:
                self.table.schedule(entry, now + judged.recheck)
        return held

    def _collect(self) -> None:
        for outcome in self.killer.finished():
            info = outcome.target.info
            owner = Owner(info.pid, info.start, info.comm)
            result = outcome.result
            level = logging.ERROR if result is Result.FAILED else logging.WARNING
            where = outcome.target.where
            fields = dict(pid=info.pid, comm=info.comm, **(where.fields() if where else {}),
                          result=result.value, signals=outcome.signals,
                          took=round(outcome.took, 3))
            if outcome.revive is not None:
                revival, said = outcome.revive
                fields["revive"] = revival.value
                self.revivals[revival] = self.revivals.get(revival, 0) + 1
                if revival not in (Revival.BY_SYSTEMD, Revival.STARTED, Revival.RUNNING):
                    fields["revive_detail"] = said
                    level = logging.ERROR
            if outcome.hook_status is not None:
                fields["hook"] = outcome.hook_status
            if outcome.detail:
                fields["detail"] = outcome.detail
            if result.killed_it:
                # A real kill: what the storm guard counts (at its start).
                self.storm.record(info.cmdline, self._clock() - outcome.took)
            if result.killed_it or result is Result.EXITED:
                left = self._left_behind(outcome.target)
                fields["sockets_left"] = left
                if left:
                    fields["note"] = ("its sockets are still in CLOSE_WAIT, held by other "
                                      "processes: looking at those now")
            decision("outcome", level if result is not Result.DRY_RUN else logging.INFO, **fields)
            self.outcomes.append(outcome)
            if len(self.outcomes) > 1000:  # bounded: a long-running daemon
                del self.outcomes[:500]
            self.results[result] = self.results.get(result, 0) + 1
            if result is Result.SPARED:
                self.hook_failures += 1
            if result.look_again:
                # Not killed this round: look again after another grace
                # period (a process that closed its sockets may leak again).
                self._reaped.discard(owner)
                self._deferred[owner] = self._clock() + max(self.limits.grace, 1.0)
            elif result in (Result.REPLACED, Result.FAILED):
                self._reaped.discard(owner)

    def _left_behind(self, target: Target) -> int:
        """After a kill: how many of its sockets are still in CLOSE_WAIT
        (other holders: fork, fd passing)?  Those are looked at again at
        once, holders found afresh, so the leak is not left half-reaped."""
        entries = [e for k in target.keys if (e := self.table.get(k)) is not None]
        if not entries:
            return 0
        resolved = resolve_close_wait(self.resolver, list({self._probe(e) for e in entries}),
                                      full_scan=False)
        left = 0
        for entry in entries:
            if resolved.get(self._probe(entry)):
                left += 1
                self._forget(entry)
                entry.owners = None
                self._recheck.append(entry.key)
        return left

    # -- lost events ------------------------------------------------------

    def _check_lost(self, now: float) -> None:
        lost = self.source.lost()
        if lost > self._lost:
            decision("lost-events", logging.WARNING, lost=lost - self._lost, total=lost,
                     note="reconciling with the kernel's CLOSE_WAIT sockets")
            self._lost = lost
            self.reconcile(now)
        elif now >= self._next_reconcile:
            self.reconcile(now)

    def reconcile(self, now: float) -> None:
        """Make the table match the kernel: a lost entry must not hide a
        leak, a lost exit must not cause a kill."""
        self._next_reconcile = now + RECONCILE_EVERY
        kernel = self.resolver.table.close_wait()
        if self.filters.ignore:
            kernel = [ns for ns in kernel if not self.filters.ignores(ns.diag.sock)]
        present = {(ns.netns, ns.diag.kid) for ns in kernel}
        tuples = {ns.diag.sock for ns in kernel}
        gone = [e for e in self.table if ((e.netns, e.kid) not in present if e.bound
                                          else e.sock not in tuples)]
        for entry in gone:
            self._drop(entry)
        claimed = {(e.netns, e.kid) for e in self.table if e.bound}
        unbound = {e.sock for e in self.table if not e.bound}
        added = [Transition(Kind.ENTER, ns.diag.sock, now, kid=ns.diag.kid, netns=ns.netns)
                 for ns in kernel
                 if (ns.netns, ns.diag.kid) not in claimed and ns.diag.sock not in unbound]
        self._apply(added)
        if gone or added:
            decision("reconcile", logging.INFO if not self._lost else logging.WARNING,
                     added=len(added), removed=len(gone))
