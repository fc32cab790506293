"""`resreap watch`: the decisions about processes.  When a socket counts,
and against whom, is counting.py's job; here, a process holding at least
the limit of counting sockets is checked (eligible? rate-limited? its
children first? still guilty right now?) and handed to the kill engine, and
the outcomes are recorded.  Decisions happen at each socket's deadline
itself: the loop sleeps exactly until the next timer."""

from __future__ import annotations

import logging
import time
from typing import Callable

from resreap.bounded import BoundedDict
from resreap.engine import containers, evidence
from resreap.engine.config import Current, WatchConfig, read_latency
from resreap.engine.counting import Counting
from resreap.engine.decisions import Event, decision
from resreap.engine.family import ChildrenFirst
from resreap.engine.forecast import Foresight
from resreap.engine.losses import Losses
from resreap.engine.killer import KillEngine, Killer, Outcome, Target
from resreap.engine.outcomes import Listener, Tally, announce, say
from resreap.engine.owners import OwnerResolver
from resreap.engine.policy import Eligibility, StormGuard, StormKey, Threshold, threshold_of
from resreap.engine.rulebook import Case, RuleBook
from resreap.engine.rules import Rule
from resreap.errors import AccessDenied, OutOfFds, ProcessGone, ProcessUnreadable
from resreap.host import procinfo
from resreap.host.procinfo import Lineage
from resreap.model import Owner, Result, SpareReason
from resreap.sources.events import EventSource

log = logging.getLogger(__name__)

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
        self.current = current  # the settings in force: one reference, swapped by a reload
        self.proc = resolver.proc
        # Which rule judges each process: one book, asked by every decision;
        # then when each socket counts, and against whom.
        self.book = RuleBook(self.current, self.proc, clock)
        self.sockets = Counting(resolver, self.current, self.book, clock, boottime)
        self.eligibility = Eligibility(self.current, self.proc)
        self.storm = StormGuard(self.current)
        self.killer = killer or Killer(self.current, self.proc)
        self._deferred: dict[Owner, float] = {}
        # Owners over their limit not decided yet (the turn's budget ran out).
        self._backlog: list[Owner] = []
        # By (pid, start): handed to the killer already; ineligible (said once).
        self._reaped: BoundedDict[tuple[int, int], float] = BoundedDict(REMEMBERED)
        self._spared: BoundedDict[tuple[int, int], float] = BoundedDict(REMEMBERED)
        self._next_forget = 0.0
        # Each process's parent read once per turn, for children first.
        self.lineage = Lineage(self.proc)
        self.family = ChildrenFirst(self.sockets, self.lineage)
        self._timer: Callable[[], float] = time.monotonic  # the turn's budget: real time
        self.losses = Losses(source, self.sockets, resolver.kernel)
        # When each leaking holder runs out of fds; when to look at those
        # whose rule acts before that (--act-before).
        self.foresight = Foresight(self.current, self.sockets.counter, self.proc)
        self.forecasts = self.foresight.forecasts
        self._debug = log.isEnabledFor(logging.DEBUG)
        # Called once per loop turn (sd_notify pings, config reloads).
        self._tick = tick
        self.tally = Tally()
        # Told each settled outcome (the daemon adds its recent reaps).
        self.listeners: list[Listener] = [say, self.tally.heard]

    @property
    def table(self):
        return self.sockets.table

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        self.resolver.learn_listeners()
        seeds = self.source.start()
        self.sockets.apply(seeds)
        self.losses.start(self._clock())
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
        alarm = self.foresight.alarms.next()
        if alarm is not None:
            wake = min(wake, alarm)
        if self.sockets.recheck or self._backlog:
            wake = now
        return min(wake, self.losses.next_reconcile)

    def now(self) -> float:
        """The events' clock (monotonic seconds)."""
        return self._clock()

    def step(self) -> None:
        now = self._clock()
        batch = self.source.read(max(0.0, self._wake_at(now) - now))
        if self.source.credits:
            self.sockets.credit(self.source.closers(), self._clock())
        try:
            self._turn(batch)
        except OutOfFds as exc:
            self.losses.out_of_fds(exc, self._clock())
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
        touched.update(self.foresight.turn(now))
        if touched or self._backlog:
            self._decide(touched, now)
        self._collect()
        if now >= self._next_forget:
            self._forget_idle(now)
        self.losses.check(now)

    def reconfigure(self, config: WatchConfig) -> None:
        """New settings from a reloaded config file: they apply to the next
        decisions; running kill sequences keep the plan they started with."""
        self.current.config = config
        self._spared.clear()
        self.foresight.reconfigured()
        self.sockets.reconfigured()
        self.source.follow(read_latency(self.current.rules.earliest))
        now = self._clock()
        for owner in list(self.sockets.counter.by_owner):
            # Judged at once under the new settings (a dry run left by this
            # reload acts now, not at its next reminder); a storm's bound or
            # a children-first wait is checked again then.
            self._deferred[owner] = now

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
        exhausted_in = self.foresight.exhausted_in(owner, now)
        if self.sockets.over(owner, exhausted_in) is None:
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
        case = self._judge(owner, now, exhausted_in)
        if case is None or self._children_first(case, now) or self._rate_limited(case, now):
            return
        verified = self.sockets.verify(owner, case.rule, now)
        bound = self._threshold(owner, case.rule, len(verified), exhausted_in, now)
        if bound is not None:
            self._reap(case, verified, bound, exhausted_in, now)

    def _judge(self, owner: Owner, now: float, exhausted_in: float | None) -> Case | None:
        """Read the process once (bounded) and derive its rule from what it
        is right now (the rule book: argv rewritten, privileges dropped
        since its sockets counted), then whether it may be reaped at all.
        None: gone, unreadable (looked at again later), under its limit by
        its fresh rule, or spared (said once)."""
        try:
            reading = self.book.decide(owner, self.sockets.counting_socks(owner), exhausted_in)
        except ProcessGone:
            return None  # its sockets' exits are on their way
        except (ProcessUnreadable, AccessDenied) as exc:
            decision(Event.UNREADABLE, logging.WARNING, pid=owner.pid, comm=owner.comm,
                     reason=str(exc), retry_in=UNREADABLE_RETRY)
            self._deferred[owner] = now + UNREADABLE_RETRY
            return None
        if reading is None:
            return None
        info, where, rule = reading.info, reading.facts.where, reading.rule
        verdict = self.eligibility.check(info, by_default=rule is self.current.rules.default,
                                         where=where)
        if not verdict.ok:
            if owner.ident not in self._spared:
                self._spared[owner.ident] = now
                level = logging.DEBUG if verdict.reason is SpareReason.NOT_SELECTED \
                    else logging.WARNING
                decision(Event.SPARE, level, pid=info.pid, comm=info.comm,
                         **where.fields(), rule=rule.name, cmd=info.cmdline,
                         count=reading.count, reason=verdict.why)
            return None
        storm = StormKey.of(rule.name, reading.facts.uids, where, info.cmdline)
        return Case(owner, info, where, rule, storm)

    def _children_first(self, case: Case, now: float) -> bool:
        """Its descendants go first (engine/family): True while it waits."""
        owner, rule = case.owner, case.rule
        kids = self.family.kids(owner, self._spared)
        wait = self.family.wait(owner, kids, rule) if kids else None
        if wait is None:
            return False
        if owner not in self._deferred:
            decision(Event.CHILDREN_FIRST, logging.INFO, pid=owner.pid, comm=owner.comm,
                     **case.where.fields(), rule=rule.name,
                     children=kids, again_in=round(wait, 1),
                     note="its descendants hold the same sockets: they go first")
        self._deferred[owner] = now + wait
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

    def _reap(self, case: Case, verified: dict, bound: Threshold,
              exhausted_in: float | None, now: float) -> None:
        info, where, rule = case.info, case.where, case.rule
        rows = sorted(verified.values(), key=lambda r: r[0].sock)
        socks = [entry.sock for entry, _hit, _kind in rows]
        oldest = max(now - entry.entered for entry, _hit, _kind in rows)
        found = evidence.summary(kind for _e, _h, kind in rows)
        reason = bound.reason(len(rows), exhausted_in)
        if exhausted_in is None:
            exhausted_in = self.forecasts.seconds(case.owner, now)  # for the lines
        # On a forecast, the re-check before the first signal asks for one
        # of its counting sockets still held (the evidence), not -l.
        target = Target(info, tuple(socks), oldest, tuple(hit.diag.inode for _e, hit, _k in rows),
                        1 if reason == "exhaustion" else bound.count, found,
                        tuple(entry.key for entry, _h, _k in rows), where, rule, case.storm,
                        reason or bound.why, exhausted_in)
        if rule.plan.kill == "container":
            chosen = containers.main_process(where, info, self.proc)
            target = target._replace(signalled=chosen.main, kill_why=chosen.why)
        announce(target, bound)
        if not self.killer.submit(target):  # only if it filled up just now
            log.warning("pid %d: kill slots full, deciding again shortly", info.pid)
            self._deferred[case.owner] = now + 0.05
            return
        self.tally.handed(kind for _e, _h, kind in rows)
        self._reaped[case.owner.ident] = now

    def _forget_idle(self, now: float) -> None:
        """Forget the processes remembered as reaped or spared, and the
        children-first bookkeeping, of those that hold no counting socket
        any more (exited, or healed): a month of churn, or a process
        renaming itself at every look, must not grow them."""
        self._next_forget = now + FORGET_EVERY
        holding = {o.ident for o in self.sockets.counter.by_owner}
        running = set(self.killer.running_pids())
        for book in (self._reaped, self._spared):
            book.keep(lambda ident: ident in holding or ident[0] in running)
        self.family.keep(lambda owner: owner.ident in holding)

    def _threshold(self, owner: Owner, rule: Rule, count: int, exhausted_in: float | None,
                   now: float) -> Threshold | None:
        """The rule's bound for this process (policy.threshold_of: -l, or
        its --fd-percent share of its soft fd limit, read now, or its fds
        forecast to run out within --act-before), if its ``count``
        verified counting sockets cross it; else None, and past -l it is
        looked at again after the grace (unreadable: decides nothing)."""
        bound = threshold_of(rule.limits, owner.pid, self.proc)
        if bound is None or bound.crossed_by(count, exhausted_in):
            return bound
        if count < rule.limits.limit:
            if self._debug:
                decision(Event.BELOW, logging.DEBUG, pid=owner.pid, comm=owner.comm,
                         rule=rule.name, count=count, limit=rule.limits.limit, why="re-check")
            return None
        if self._debug:
            decision(Event.BELOW, logging.DEBUG, pid=owner.pid, comm=owner.comm, count=count,
                     rule=rule.name, limit=rule.limits.limit, why=bound.why,
                     fd_percent=rule.limits.fd_percent, fd_limit=bound.fd_limit,
                     needed=bound.count)
        self._deferred[owner] = now + max(rule.limits.grace, 1.0)
        return None

    def listen(self, listener: Listener) -> None:
        """Also tell ``listener`` each outcome, once settled."""
        self.listeners.append(listener)

    def _collect(self) -> None:
        for outcome in self.killer.finished():
            added = self._settle(outcome)
            for listener in self.listeners:
                listener(outcome, added)

    def _settle(self, outcome: Outcome) -> dict:
        """What a finished kill sequence changes here: its parent's wait,
        the storm bound, its sockets still held by others, when it is judged
        again.  Returns the fields this adds to the outcome line."""
        target, result = outcome.target, outcome.result
        info = target.info
        for parent in self.family.done(info.pid):
            # All its children's sequences ended: judged again at once
            # (its `again_in` was only the longest wait).
            if parent in self._deferred:
                self._deferred[parent] = min(self._deferred[parent], self._clock() + 0.05)
        owner, added = Owner(info.pid, info.start, info.comm), {}
        if result.killed_it:
            # A real kill: what the storm guard counts (at its start).
            self.storm.record(target.storm_key, self._clock() - outcome.took)
        if result.killed_it or result is Result.EXITED:
            left = added["sockets_left"] = self.sockets.left_behind(target.keys)
            if left:
                added["note"] = ("its sockets are still in CLOSE_WAIT, held by other "
                                 "processes: looking at those now")
        if result.look_again:
            # Not killed this round: judged again later (a process that
            # closed its sockets may leak again).
            grace = (target.rule.limits if target.rule is not None else self.current.limits).grace
            added["again_in"] = DRY_RUN_AGAIN if result is Result.DRY_RUN else max(grace, 1.0)
            self._reaped.discard(owner.ident)
            self._deferred[owner] = self._clock() + added["again_in"]
        elif result in (Result.REPLACED, Result.FAILED):
            self._reaped.discard(owner.ident)
        return added
