"""`resreap watch`: the decisions about processes.  When a socket counts,
and against whom, is counting.py's job; here, a process holding at least
the limit of counting sockets is checked (eligible? rate-limited? its
children first? still guilty right now?) and handed to the kill engine, and
the outcomes are recorded.  Decisions happen at each socket's deadline
itself: the loop sleeps exactly until the next timer."""

from __future__ import annotations

import bisect
import logging
import time
from typing import Callable, NamedTuple

from resreap.bounded import BoundedDict
from resreap.engine import evidence
from resreap.engine.config import Current, WatchConfig
from resreap.engine.counting import Counting
from resreap.engine.decisions import Event, decision
from resreap.engine.filters import Filters
from resreap.engine.killer import KillEngine, Killer, Outcome, Target
from resreap.engine.owners import OwnerResolver
from resreap.engine.policy import Eligibility, StormGuard, StormKey, Threshold, threshold
from resreap.engine.rules import Limits, Rule
from resreap.errors import AccessDenied, OutOfFds, ProcessGone, ProcessUnreadable
from resreap.host import procinfo, sockets, supervisor
from resreap.host.procinfo import Lineage, Proc, ProcInfo
from resreap.host.supervisor import Supervisor
from resreap.model import KILL_BUCKETS, Holder, Owner, Result, Revival, Snapshot, SockId, \
    SpareReason
from resreap.sources.events import EventSource

log = logging.getLogger(__name__)

SAMPLE = 3  # endpoints named in a decision line
# The out-of-fds and "lost events unknown" lines are repeated at most this often.
OUT_OF_FDS_EVERY = 60.0
# The same number of unwatched namespaces is said again this often.
UNWATCHED_EVERY = 600.0
CHILDREN_FIRST_WAITS = 2  # times a parent waits for its children before it is judged
UNREADABLE_RETRY = 10.0
# A dry run says `would-reap` for a process again this long after (sooner
# after a reload): every grace, a DaemonSet left in dry run wrote two lines
# every 2 s per leaking process, for days.
DRY_RUN_AGAIN = 60.0
# Seconds of decisions per loop turn (real time): the owners left are
# decided on the next turns, which follow at once, the longest waiting
# first.  With the due sockets' chunk (counting.DUE_PER_TURN) this bounds a
# turn, so the loop reaches its watchdog ping and other leaks' deadlines
# whatever a user piles up (10,000 spared processes were one 12 s turn).
TURN_BUDGET = 0.25
# ... and seconds of due sockets' checks, a chunk at a time.
CHECK_BUDGET = 0.15
# Processes remembered as handed to the killer or spared (ineligible) are
# forgotten once they hold no counting socket, checked this often; and
# never more than this many (least recently judged first out).
FORGET_EVERY = 60.0
REMEMBERED = 65536


class Case(NamedTuple):
    """One decision about one process over its limit: its facts read once
    (right before judging), the rule that judges it, and what the storm
    bound counts it against.  The same rule decides children first, the
    rate limit, the re-check and the kill."""

    owner: Owner
    info: ProcInfo
    where: Supervisor
    rule: Rule
    storm: StormKey


def read_latency(grace: float) -> float:
    """How long the loop may sleep without new events: a quarter of the
    grace, within [0.01, 0.25] s.  Deadlines use the kernel's timestamps, so
    this bounds how late a new socket is seen (and, with the kernel's first
    pass, how often the pending sockets are taken), not timer accuracy."""
    return min(0.25, max(0.01, grace / 4))


def _where(pid: int, proc: Proc) -> dict[str, str]:
    """unit= and container= for a decision line about ``pid``."""
    return supervisor.of(pid, proc).fields()


def _endpoints(socks: list[SockId]) -> list[str]:
    socks = sorted(socks)
    shown = [f"{s.local}->{s.remote}" for s in socks[:SAMPLE]]
    if len(socks) > SAMPLE:
        shown.append(f"+{len(socks) - SAMPLE} more")
    return shown


class Watcher:
    def __init__(self, source: EventSource, resolver: OwnerResolver, current: Current,
                 killer: KillEngine | None = None, tick=None,
                 clock: Callable[[], float] = time.monotonic,
                 boottime: Callable[[], float] = procinfo.boottime) -> None:
        """``current``: the settings in force, shared with the kill engine;
        ``clock``: CLOCK_MONOTONIC seconds, the clock of the events'
        timestamps; ``boottime``: CLOCK_BOOTTIME seconds, the clock of
        process start times (tests pass fake ones with a fake host)."""
        self._clock = clock
        self._boottime = boottime
        self.source = source
        self.resolver = resolver
        # The settings in force, read by every component through this one
        # reference (a reload swaps what it holds).
        self.current = current
        self.proc = resolver.proc
        # Sockets: when each counts, and against whom.
        self.sockets = Counting(resolver, self.current, clock, boottime)
        self.eligibility = Eligibility(self.current, self.proc)
        self.storm = StormGuard(self.current)
        self.killer = killer or Killer(self.current, self.proc)
        self._deferred: dict[Owner, float] = {}
        # Owners over their limit not decided yet (the turn's budget ran out).
        self._backlog: list[Owner] = []
        # Parents waiting for their children's kill sequences (children first).
        self._parents: BoundedDict[Owner, set[int]] = BoundedDict(4096)
        # By (pid, start): handed to the killer already; ineligible (said once).
        self._reaped: BoundedDict[tuple[int, int], float] = BoundedDict(REMEMBERED)
        self._spared: BoundedDict[tuple[int, int], float] = BoundedDict(REMEMBERED)
        self._next_forget = 0.0
        # Each process's parent read once per turn (children first).
        self.lineage = Lineage(self.proc)
        self._timer: Callable[[], float] = time.monotonic  # the turn's budget: real time
        self._lost = 0
        self._out_of_fds_said = float("-inf")
        self._unknown_said = float("-inf")
        self._unwatched_said = (0, float("-inf"))  # (how many, when)
        self._unsure = False  # lost events were unknown since the last reconcile
        self._waits: BoundedDict[Owner, int] = BoundedDict(4096)  # children-first waits
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.outcomes: list[Outcome] = []
        # Called once per loop turn (sd_notify pings, config reloads).
        self._tick = tick
        self.results: dict[str, int] = {}
        self.rule_results: dict[tuple[str, str], int] = {}  # (rule, result) -> outcomes
        # Kill durations for the histogram: per bucket, and their sum.
        self._kill_buckets = [0] * (len(KILL_BUCKETS) + 1)
        self._kill_seconds = 0.0
        self.reaped_evidence: dict[str, int] = {}
        self.revivals: dict[Revival, int] = {}
        self.hook_failures = 0

    @property
    def config(self) -> WatchConfig:
        return self.current.config

    @property
    def limits(self) -> Limits:
        return self.current.limits

    @property
    def filters(self) -> Filters:
        return self.current.filters

    @property
    def table(self):
        return self.sockets.table

    @property
    def counter(self):
        return self.sockets.counter

    @property
    def events_seen(self) -> dict[str, int]:
        return self.sockets.events_seen

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        self.resolver.learn_listeners()
        seeds = self.source.start()
        self.sockets.apply(seeds)
        self.sockets.start_reconciling(self._clock())
        if seeds:
            decision(Event.EXISTING, logging.INFO, sockets=len(self.table),
                     note=f"already in CLOSE_WAIT at start; they count from now + "
                          f"{self.current.rules.earliest:g}s or more (see evidence)")

    def _wake_at(self, now: float) -> float:
        wake = now + self.source.latency
        deadline = self.table.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._deferred:
            wake = min(wake, min(self._deferred.values()))
        if self.sockets.recheck or self._backlog:
            wake = now
        return min(wake, self.sockets.next_reconcile)

    def step(self) -> None:
        now = self._clock()
        batch = self.source.read(max(0.0, self._wake_at(now) - now))
        try:
            self._turn(batch)
        except OutOfFds as exc:
            # Loud, and never taken as "the process is gone": what could not
            # be read decides nothing.  The kernel's table is compared with
            # ours again soon, so no socket of this turn is lost for good.
            now = self._clock()
            if now - self._out_of_fds_said >= OUT_OF_FDS_EVERY:
                self._out_of_fds_said = now
                decision(Event.OUT_OF_FDS, logging.ERROR, error=str(exc),
                         note="this turn's sockets are looked at again shortly")
            self.sockets.reconcile_soon(now + 1.0)
        if self._tick is not None:
            self._tick(self)

    def _turn(self, batch) -> None:
        self.lineage.clear()
        young = self.sockets.take_young()
        self.sockets.apply(batch)
        self.sockets.resolve_young(young)
        now = self._clock()
        touched: set[Owner] = set()
        # Due sockets in chunks (counting.DUE_PER_TURN) while the turn's
        # check budget lasts: a flood's sockets take turns, each one short.
        began = self._timer()
        while due := self.sockets.due(now):
            touched |= self.sockets.check(due, now)
            if self._timer() - began >= CHECK_BUDGET:
                break
        for owner, when in list(self._deferred.items()):
            if when <= now:
                del self._deferred[owner]
                touched.add(owner)
        if touched or self._backlog:
            self._decide(touched, now)
        self._collect()
        if now >= self._next_forget:
            self._forget_idle(now)
        self._check_lost(now)
        self._check_unwatched(now)

    def reconfigure(self, config: WatchConfig) -> None:
        """New settings from a reloaded config file: they apply to the next
        decisions; running kill sequences keep the plan they started with."""
        self.current.config = config
        self._spared.clear()
        self.sockets.reconfigured()
        self.source.follow(read_latency(self.current.rules.earliest))
        now = self._clock()
        for owner in list(self.counter.by_owner):
            # Judged at once under the new settings (a dry run left by this
            # reload acts now, not at its next reminder); a storm's bound or
            # a children-first wait is checked again then.
            self._deferred[owner] = now

    def snapshot(self, top: int) -> Snapshot:
        """Figures for metrics: cheap enough to build once a second."""
        import heapq

        counts = [(len(socks), owner) for owner, socks in self.counter.by_owner.items()]
        best = heapq.nlargest(top, counts, key=lambda c: c[0])
        # A top holder is usually a largest holder of CLOSE_WAIT too: its
        # cgroup is read once per snapshot.
        wheres: dict[int, dict[str, str]] = {}

        def holder(owner: Owner, n: int) -> Holder:
            where = wheres.get(owner.pid)
            if where is None:
                where = wheres[owner.pid] = _where(owner.pid, self.proc)
            return Holder(owner.pid, owner.comm, where.get("unit", ""),
                          where.get("container", ""), n)

        holders = [holder(o, n) for n, o in best]
        # Every CLOSE_WAIT socket with a known holder, counting or not yet:
        # a process heading for a reap shows before its sockets count.
        now_held: dict[Owner, int] = {}
        oldest = None
        for entry in self.table:
            if oldest is None or entry.entered < oldest:
                oldest = entry.entered
            for owner in entry.owners or ():
                now_held[owner] = now_held.get(owner, 0) + 1
        holding = heapq.nlargest(top, ((n, o) for o, n in now_held.items()), key=lambda c: c[0])
        return Snapshot(
            oldest=max(0.0, self._clock() - oldest) if oldest is not None else 0.0,
            holding=tuple(holder(o, n) for n, o in holding),
            kill_buckets=tuple(self._kill_buckets), kill_seconds=self._kill_seconds,
            tracked=len(self.table),
            top=tuple(holders),
            other=sum(n for n, _ in counts) - sum(n for n, _ in best),
            rule_outcomes=dict(self.rule_results),
            rules=tuple(r.name for r in self.current.rules.every()),
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
            decision(Event.ABANDON, logging.WARNING, kills_in_progress=left,
                     note="resreap is exiting; these sequences were cut short")
        self.source.close()

    # -- decisions --------------------------------------------------------

    def _decide(self, owners: set[Owner], now: float) -> None:
        """Decide about the owners touched this turn and those left over
        from earlier turns, within TURN_BUDGET.  The fresh ones first (their
        sockets just counted: a leak's reap is due now), but the left-over
        ones, the longest waiting first, get at least half of the budget,
        so that no stream of new owners starves them."""
        waiting = set(self._backlog)
        fresh, self._backlog = sorted(owners - waiting), self._backlog
        began, half = self._timer(), TURN_BUDGET / 2
        left: list[Owner] = []
        for i, owner in enumerate(fresh):
            if i and self._timer() - began >= half:
                left = fresh[i:]
                break
            self._decide_one(owner, now)
        queue, self._backlog = self._backlog, []
        for i, owner in enumerate(queue):
            if i and self._timer() - began >= TURN_BUDGET:
                self._backlog = queue[i:]
                break
            self._decide_one(owner, now)
        self._backlog += left

    def _decide_one(self, owner: Owner, now: float) -> None:
        """The cheap checks first; the process is read only once it has a
        kill slot, and its children looked for only once it is eligible."""
        if self.sockets.over(owner) is None:
            if self._debug:
                for rule, count in self.sockets.standing(owner):
                    decision(Event.BELOW, logging.DEBUG, pid=owner.pid, comm=owner.comm,
                             rule=rule.name, count=count, limit=rule.limits.limit,
                             why="limit")
            return
        if owner.ident in self._reaped or owner.ident in self._spared \
                or self.killer.busy(owner.pid):
            return  # an ineligible verdict holds while it leaks (until a reload)
        if self._deferred.get(owner, now) > now:
            return  # rate-limited, waiting for children or unreadable: judged at its time
        if self.killer.full:
            # Bounded concurrency: decide when a kill slot is free, so that
            # a "reap" line always means a kill sequence started.  Checked
            # first: waiting owners cost nothing more while slots are full.
            self._deferred[owner] = now + 0.05
            return
        case = self._judge(owner, now)
        if case is None or self._children_first(case, now) or self._rate_limited(case, now):
            return
        rule = case.rule
        verified = self.sockets.verify(owner, rule, now)
        if len(verified) < rule.limits.limit:
            if self._debug:
                decision(Event.BELOW, logging.DEBUG, pid=owner.pid, comm=owner.comm,
                         rule=rule.name, count=len(verified), limit=rule.limits.limit,
                         why="re-check")
            return
        bound = self._threshold(owner, rule, len(verified), now)
        if bound is not None:
            self._reap(case, verified, bound, now)

    def _judge(self, owner: Owner, now: float) -> Case | None:
        """Read the process (bounded), its rule from what it is right now
        (argv rewritten, privileges dropped since its sockets counted), and
        whether it may be reaped at all.  None: gone, unreadable (looked at
        again later) or spared (said once)."""
        try:
            info = self.eligibility.info(owner)
        except ProcessGone:
            return None  # its sockets' exits are on their way
        except (ProcessUnreadable, AccessDenied) as exc:
            decision(Event.UNREADABLE, logging.WARNING, pid=owner.pid, comm=owner.comm,
                     reason=str(exc), retry_in=UNREADABLE_RETRY)
            self._deferred[owner] = now + UNREADABLE_RETRY
            return None
        self.sockets.refresh(owner)
        over = self.sockets.over(owner)
        if over is None:
            return None
        rule, count = over
        # Its cgroup, read once: for --unit / --container, the lines, the
        # storm key and the Target (its service is what a revival starts).
        where = supervisor.of(info.pid, self.proc)
        verdict = self.eligibility.check(info, by_default=rule is self.current.rules.default,
                                         where=where)
        if not verdict.ok:
            if owner.ident not in self._spared:
                self._spared[owner.ident] = now
                level = logging.DEBUG if verdict.reason is SpareReason.NOT_SELECTED \
                    else logging.WARNING
                decision(Event.SPARE, level, pid=info.pid, comm=info.comm,
                         **where.fields(), rule=rule.name, cmd=info.cmdline,
                         count=count, reason=verdict.why)
            return None
        storm = StormKey.of(rule.name, self.sockets.uids(owner), where, info.cmdline)
        return Case(owner, info, where, rule, storm)

    def _children_first(self, case: Case, now: float) -> bool:
        """Reap the least: a process whose counting sockets its own
        descendants hold too, and who are over the limit themselves (a
        prefork master and its workers share the listener and its accept
        queue), waits while they are handled; it is judged again after
        that, and reaped only if the leak remains."""
        owner, rule = case.owner, case.rule
        mine = self.counter.by_owner.get(owner)
        if not mine:
            return False
        # The co-holders, from the owner's own sockets (each knows whom it
        # counts against): never a walk over every owner, which made each
        # decision cost the number of owners (a user's 10,000 processes
        # stalled the loop for a minute).
        others: set[Owner] = set()
        for key in mine:
            entry = self.table.get(key)
            if entry is not None:
                others.update(entry.against)
        others.discard(owner)
        # Ancestry from the turn's lineage: each parent read once, each
        # walk bounded (procinfo.ANCESTRY_DEPTH: past it "not a
        # descendant", and the owner, itself over its limit, is judged).
        kids = [other.pid for other in sorted(others)
                if other.ident not in self._spared and other.pid != owner.pid
                and self.lineage.descends(other.pid, owner.pid)
                and self.sockets.over(other) is not None]
        if not kids:
            return False
        # Bounded: a descendant that is never handled (rate-limited,
        # unreadable) must not shelter its parent forever; after this many
        # waits the parent is judged as it stands.
        waits = self._waits.get(owner, 0)
        if waits >= CHILDREN_FIRST_WAITS:
            return False
        self._waits[owner] = waits + 1
        plan = rule.plan
        wait = plan.hook_timeout * bool(plan.hook) + 2 * plan.wait + rule.limits.grace + 5.0
        if owner not in self._deferred:
            decision(Event.CHILDREN_FIRST, logging.INFO, pid=owner.pid, comm=owner.comm,
                     **case.where.fields(), rule=rule.name,
                     children=kids, again_in=round(wait, 1),
                     note="its descendants hold the same sockets: they go first")
        self._deferred[owner] = now + wait
        self._parents[owner] = set(kids)
        return True

    def _rate_limited(self, case: Case, now: float) -> bool:
        info, rule = case.info, case.rule
        allowed = self.storm.next_allowed(case.storm, now,
                                          started=now - procinfo.age(info.start, self._boottime()),
                                          limits=rule.limits)
        if not allowed:
            return False
        if case.owner not in self._deferred:
            decision(Event.STORM, logging.WARNING, pid=info.pid, comm=info.comm,
                     **case.where.fields(), rule=rule.name, cmd=info.cmdline,
                     kills=rule.limits.max_kills, per=rule.limits.per,
                     next_in=round(allowed - now, 1),
                     note="this command keeps leaking after restarts: kills are rate-limited")
        self._deferred[case.owner] = allowed
        return True

    def _reap(self, case: Case, verified: dict, bound: Threshold, now: float) -> None:
        info, where, rule = case.info, case.where, case.rule
        rows = sorted(verified.values(), key=lambda r: r[0].sock)
        socks = [entry.sock for entry, _hit, _kind in rows]
        oldest = max(now - entry.entered for entry, _hit, _kind in rows)
        found = evidence.summary(kind for _e, _h, kind in rows)
        target = Target(info, tuple(socks), oldest, tuple(hit.diag.inode for _e, hit, _k in rows),
                        bound.count, found, tuple(entry.key for entry, _h, _k in rows),
                        where, rule, case.storm)
        plan = rule.plan
        decision(Event.REAP if not plan.dry_run else Event.WOULD_REAP, logging.WARNING,
                 pid=info.pid, comm=info.comm, **where.fields(), rule=rule.name,
                 count=len(socks), limit=rule.limits.limit,
                 **({"needed": bound.count} if bound.why == "fd-percent" else {}),
                 evidence=found, oldest=round(oldest, 3), sockets=_endpoints(socks),
                 cmd=info.cmdline, plan=plan.describe() + (" (dry run)" if plan.dry_run else ""))
        if not self.killer.submit(target):  # only if it filled up just now
            log.warning("pid %d: kill slots full, deciding again shortly", info.pid)
            self._deferred[case.owner] = now + 0.05
            return
        for _entry, _hit, kind in rows:
            self.reaped_evidence[kind.value] = self.reaped_evidence.get(kind.value, 0) + 1
        self._reaped[case.owner.ident] = now

    def _forget_idle(self, now: float) -> None:
        """Forget the processes remembered as reaped or spared, and the
        children-first bookkeeping, of those that hold no counting socket
        any more (exited, or healed): a month of churn, or a process
        renaming itself at every look, must not grow them."""
        self._next_forget = now + FORGET_EVERY
        holding = {o.ident for o in self.counter.by_owner}
        running = set(self.killer.running_pids())
        for book in (self._reaped, self._spared):
            book.keep(lambda ident: ident in holding or ident[0] in running)
        for book in (self._waits, self._parents):
            book.keep(lambda owner: owner.ident in holding)

    def _threshold(self, owner: Owner, rule: Rule, count: int,
                   now: float) -> Threshold | None:
        """The rule's bound for this process (policy.threshold: -l, or its
        --fd-percent share of the process's soft fd limit, read now), if
        its ``count`` counting sockets cross it; else None, and with
        --fd-percent it is looked at again after the grace."""
        fd_limit = None
        if rule.limits.fd_percent:
            try:
                fd_limit = self.proc.fd_soft_limit(owner.pid)
            except (ProcessGone, AccessDenied):
                return None  # what cannot be read decides nothing
        bound = threshold(rule.limits, fd_limit)
        if bound.crossed_by(count):
            return bound
        if self._debug:
            decision(Event.BELOW, logging.DEBUG, pid=owner.pid, comm=owner.comm, count=count,
                     rule=rule.name, limit=rule.limits.limit, why=bound.why,
                     fd_percent=rule.limits.fd_percent, fd_limit=fd_limit, needed=bound.count)
        self._deferred[owner] = now + max(rule.limits.grace, 1.0)
        return None

    def _collect(self) -> None:
        for outcome in self.killer.finished():
            info = outcome.target.info
            self._children_done(info.pid)
            owner = Owner(info.pid, info.start, info.comm)
            result = outcome.result
            level = logging.ERROR if result is Result.FAILED else logging.WARNING
            where = outcome.target.where
            fields = dict(pid=info.pid, comm=info.comm, **(where.fields() if where else {}),
                          rule=outcome.target.rule_name, result=result.value, signals=outcome.signals,
                          took=round(outcome.took, 3))
            if outcome.revive is not None:
                revival, said = outcome.revive
                fields["revive"], fields["revive_detail"] = revival.value, said
                self.revivals[revival] = self.revivals.get(revival, 0) + 1
                if revival not in (Revival.BY_SYSTEMD, Revival.STARTED, Revival.RUNNING,
                                   Revival.STOPPED, Revival.WAS_DOWN, Revival.NOT_MAIN,
                                   Revival.NOT_RESTARTABLE):
                    level = logging.ERROR
            if outcome.hook_status is not None:
                fields["hook"] = outcome.hook_status
            if outcome.detail:
                fields["detail"] = outcome.detail
            if result.killed_it:
                # A real kill: what the storm guard counts (at its start).
                self.storm.record(outcome.target.storm_key, self._clock() - outcome.took)
                self._kill_buckets[bisect.bisect_left(KILL_BUCKETS, outcome.took)] += 1
                self._kill_seconds += outcome.took
            if result.killed_it or result is Result.EXITED:
                left = self.sockets.left_behind(outcome.target.keys)
                fields["sockets_left"] = left
                if left:
                    fields["note"] = ("its sockets are still in CLOSE_WAIT, held by other "
                                      "processes: looking at those now")
            if result.look_again:
                # Not killed this round: judged again later (a process that
                # closed its sockets may leak again).
                rule = outcome.target.rule
                grace = (rule.limits if rule is not None else self.limits).grace
                fields["again_in"] = DRY_RUN_AGAIN if result is Result.DRY_RUN else max(grace, 1.0)
                self._reaped.discard(owner.ident)
                self._deferred[owner] = self._clock() + fields["again_in"]
            elif result in (Result.REPLACED, Result.FAILED):
                self._reaped.discard(owner.ident)
            decision(Event.OUTCOME, level if result is not Result.DRY_RUN else logging.INFO, **fields)
            self.outcomes.append(outcome)
            if len(self.outcomes) > 1000:  # bounded: a long-running daemon
                del self.outcomes[:500]
            self.results[result] = self.results.get(result, 0) + 1
            by = (outcome.target.rule_name, result.value)
            if by in self.rule_results or len(self.rule_results) < 1024:  # bounded: rules
                self.rule_results[by] = self.rule_results.get(by, 0) + 1
            if result is Result.SPARED:
                self.hook_failures += 1

    def _children_done(self, pid: int) -> None:
        """A child's kill sequence ended: once all of a parent's have, judge
        the parent again at once (its `again_in` is only the longest wait),
        after the sockets the children left are counted afresh."""
        for parent, kids in self._parents.items():
            kids.discard(pid)
            if not kids:
                self._parents.discard(parent)
                if parent in self._deferred:
                    self._deferred[parent] = min(self._deferred[parent], self._clock() + 0.05)

    # -- lost events ------------------------------------------------------

    def _check_unwatched(self, now: float) -> None:
        """Namespaces left out by the caps (a user's thousands of `unshare
        -Urn`): said when their number changes, else every 10 minutes."""
        skipped = self.resolver.kernel.skipped
        said, when = self._unwatched_said
        if skipped and (skipped != said or now - when >= UNWATCHED_EVERY):
            self._unwatched_said = (skipped, now)
            decision(Event.UNWATCHED, logging.WARNING, namespaces=skipped,
                     user_max=sockets.MAX_USER_NAMESPACES, max=sockets.MAX_NAMESPACES,
                     note="network namespaces past the caps (those made in other user "
                          "namespaces first: unshare -Urn, rootless containers); leaks "
                          "inside them are not seen")
        elif not skipped:
            self._unwatched_said = (0, when)

    def _check_lost(self, now: float) -> None:
        lost = self.source.lost()
        if lost is None:
            # Unknown (a kernel counter unreadable, a batch not taken): as
            # if events were lost, never as if none were; compared with the
            # kernel within a second, not on every turn.
            if now - self._unknown_said >= OUT_OF_FDS_EVERY:
                self._unknown_said = now
                decision(Event.LOST_EVENTS, logging.WARNING, lost="unknown", total=self._lost,
                         note="the kernel's count could not be read; reconciling with the "
                              "kernel's CLOSE_WAIT sockets")
            self.sockets.reconcile_soon(now + 1.0)
            self._unsure = True
        elif lost > self._lost:
            decision(Event.LOST_EVENTS, logging.WARNING, lost=lost - self._lost, total=lost,
                     note="reconciling with the kernel's CLOSE_WAIT sockets")
            self._lost = lost
            self.sockets.reconcile(now, after_loss=True)
            return
        if now >= self.sockets.next_reconcile:
            self.sockets.reconcile(now, after_loss=bool(self._lost) or self._unsure)
            self._unsure = False
