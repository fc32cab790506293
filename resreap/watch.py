"""`resreap watch`: per-socket CLOSE_WAIT timers, and the decisions they
drive.  A socket counts once it has stayed in CLOSE_WAIT for the grace
period (the event-driven form of the original's two snapshots and their
intersection); a process holding at least the limit of counting sockets is
handed to the kill engine.  Decisions happen at the deadline itself: the
loop sleeps exactly until the next timer."""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from resreap.decisionlog import decision
from resreap.errors import ProcessGone, ProcessUnreadable
from resreap.events import EventSource
from resreap.filters import Filters
from resreap.killer import Killer, Outcome, Plan, Target
from resreap.model import Kind, Owner, SockId, Transition
from resreap.owners import OwnerResolver, resolve_close_wait
from resreap.policy import Counter, Eligibility, Limits, StormGuard
from resreap.tracker import CloseWaitTable

log = logging.getLogger(__name__)

# Owners that could not be found (a throttled full scan, an accept queue
# shared by several processes) are looked for again this often.
RETRY_UNRESOLVED = 1.0
# Without lost events, the kernel's CLOSE_WAIT set is still compared with
# ours this often, so that no leak can hide behind a missed event.
RECONCILE_EVERY = 60.0
SAMPLE = 3  # endpoints named in a decision line
UNREADABLE_RETRY = 10.0


class WatchConfig(NamedTuple):
    limits: Limits
    plan: Plan
    filters: Filters


def _endpoints(socks) -> list[str]:
    socks = sorted(socks)
    shown = [f"{s.local}->{s.remote}" for s in socks[:SAMPLE]]
    if len(socks) > SAMPLE:
        shown.append(f"+{len(socks) - SAMPLE} more")
    return shown


class Watcher:
    def __init__(self, source: EventSource, resolver: OwnerResolver, config: WatchConfig,
                 killer: Killer | None = None, tick=None) -> None:
        self.source = source
        self.resolver = resolver
        self.config = config
        self.limits = config.limits
        self.filters = config.filters
        self.proc_root = resolver.proc_root
        self.table = CloseWaitTable(grace=config.limits.grace)
        self.counter = Counter()
        self.eligibility = Eligibility(config.filters, self.proc_root)
        self.storm = StormGuard(config.limits.max_kills, config.limits.per)
        self.killer = killer or Killer(config.plan, self.proc_root)
        self._young: list[SockId] = []
        self._unresolved: set[SockId] = set()
        self._next_retry = float("inf")
        self._deferred: dict[Owner, float] = {}
        self._reaped: set[Owner] = set()      # handed to the killer already
        self._spared: set[Owner] = set()      # ineligible: said once
        self._lost = 0
        self._next_reconcile = 0.0
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.outcomes: list[Outcome] = []
        # Called once per loop turn (sd_notify pings, config reloads).
        self._tick = tick
        self.events_seen = {"existing": 0, "enter": 0, "exit": 0}
        self.results: dict[str, int] = {}
        self.hook_failures = 0

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        self.resolver.learn_listeners()
        seeds = self.source.start()
        self._apply(seeds)
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY
        if seeds:
            decision("existing", logging.INFO, sockets=len(self.table),
                     note=f"already in CLOSE_WAIT at start; they count from now + {self.limits.grace:g}s")

    def _wake_at(self, now: float) -> float:
        wake = now + self.source.latency
        deadline = self.table.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._deferred:
            wake = min(wake, min(self._deferred.values()))
        return min(wake, self._next_retry, self._next_reconcile)

    def step(self) -> None:
        now = time.monotonic()
        batch = self.source.read(max(0.0, self._wake_at(now) - now))
        young, self._young = self._young, []
        self._apply(batch)
        self._resolve_young(young)
        now = time.monotonic()
        touched: set[Owner] = set()
        due = self.table.due(now)
        if due:
            touched |= self._count([e.sock for e in due], now)
        if now >= self._next_retry:
            touched |= self._retry_unresolved(now)
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
        if self.table.grace != config.limits.grace:
            self.table.set_grace(config.limits.grace)
        # Re-judge everyone over the (new) limit on the next turn.
        now = time.monotonic()
        for owner in list(self.counter.by_owner):
            self._deferred.setdefault(owner, now)

    def snapshot(self, top: int) -> dict:
        """Figures for metrics: cheap enough to build once a second."""
        import heapq

        counts = [(len(socks), owner) for owner, socks in self.counter.by_owner.items()]
        best = heapq.nlargest(top, counts, key=lambda c: c[0])
        return {
            "tracked": len(self.table),
            "top": [(o.pid, o.comm, n) for n, o in best],
            "other": sum(n for n, _ in counts) - sum(n for n, _ in best),
            "outcomes": dict(self.results),
            "hook_failures": self.hook_failures,
            "events": dict(self.events_seen),
            "lost": self._lost,
        }

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
        ignores, debug = self.filters.ignores, self._debug
        for t in batch:
            if self.filters.ignore and ignores(t.sock):
                continue
            entry, new = self.table.apply(t)
            self.events_seen[t.kind.value] += 1
            if debug:
                log.debug("event %s %s -> %s cpu_pid=%d (hint only)", t.kind.value,
                          t.sock.local, t.sock.remote, t.cpu_pid)
            if t.kind is Kind.EXIT:
                if entry is not None and entry.counted:
                    self._uncount(entry.sock, entry.owners)
            elif new:
                self._young.append(t.sock)

    def _uncount(self, sock: SockId, owners) -> None:
        if owners:
            self.counter.remove(sock, owners)
        self._unresolved.discard(sock)

    def _resolve_young(self, young: list[SockId]) -> None:
        """Find owners while the socket is young: by its deadline the answer
        is cached and costs one readlink to verify.  Sockets that came and
        went within one batch never get here."""
        pending = [s for s in young if (e := self.table.get(s)) is not None
                   and e.owners is None and not e.counted]
        if not pending:
            return
        # Churn sockets live for milliseconds, leaks for the grace period: a
        # scan of every process (a second at 100k connections) is only worth
        # it once a socket has lasted a while, still well before its deadline.
        settled = time.monotonic() - min(0.5, self.limits.grace / 4)
        old_enough = [s for s in pending if self.table.get(s).entered <= settled]
        resolved = resolve_close_wait(self.resolver, old_enough) if old_enough else {}
        recent = [s for s in pending if s not in resolved and s not in old_enough]
        if recent:
            resolved.update(resolve_close_wait(self.resolver, recent, full_scan=False))
        for sock in pending:
            hit = resolved.get(sock)
            if hit is None:
                continue  # left CLOSE_WAIT: its exit is on the way
            entry = self.table.get(sock)
            entry.owners, entry.netns = hit.owners, hit.netns
            if not hit.owners:
                # Not found yet (the full scan is rate-limited): try again on
                # the next wakeup, so that the deadline finds it resolved.
                entry.owners = None
                self._young.append(sock)

    # -- timers -----------------------------------------------------------

    def _count(self, socks: list[SockId], now: float) -> set[Owner]:
        """Sockets whose grace just ended: check each against the kernel (a
        lost exit must not count) and count it for its current holders."""
        touched: set[Owner] = set()
        resolved = resolve_close_wait(self.resolver, socks)
        for sock in socks:
            entry = self.table.get(sock)
            if entry is None:
                continue
            hit = resolved.get(sock)
            if hit is None:
                self.table.remove(sock)
                if self._debug:
                    log.debug("timer %s -> %s: no longer in CLOSE_WAIT, dropped",
                              sock.local, sock.remote)
                continue
            entry.owners, entry.netns = hit.owners, hit.netns
            if not hit.owners:
                self._unresolved.add(sock)
                self._next_retry = min(self._next_retry, now + RETRY_UNRESOLVED)
                if self._debug:
                    log.debug("timer %s -> %s: counts, owner not found yet", sock.local, sock.remote)
                continue
            self.counter.add(sock, hit.owners)
            touched.update(hit.owners)
            if self._debug:
                log.debug("timer %s -> %s: counts for %s", sock.local, sock.remote,
                          ",".join(str(o.pid) for o in hit.owners))
        return touched

    def _retry_unresolved(self, now: float) -> set[Owner]:
        self._next_retry = float("inf")
        socks = [s for s in self._unresolved if s in self.table.entries]
        self._unresolved = set()
        return self._count(socks, now) if socks else set()

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
            if self.killer.full:
                # Bounded concurrency: decide when a kill slot is free, so that
                # a "reap" line always means a kill sequence started.
                self._deferred[owner] = now + 0.05
                continue
            self._consider(owner, now)

    def _consider(self, owner: Owner, now: float) -> None:
        try:
            info = self.eligibility.info(owner)
        except ProcessGone:
            return  # its sockets' exits are on their way
        except ProcessUnreadable as exc:
            decision("unreadable", logging.WARNING, pid=owner.pid, comm=owner.comm,
                     reason=str(exc), retry_in=UNREADABLE_RETRY)
            self._deferred[owner] = now + UNREADABLE_RETRY
            return
        verdict = self.eligibility.check(info)
        if not verdict.ok:
            if owner not in self._spared:
                self._spared.add(owner)
                level = logging.DEBUG if "-f" in verdict.why else logging.WARNING
                decision("spare", level, pid=info.pid, comm=info.comm, cmd=info.cmdline,
                         count=self.counter.count(owner), reason=verdict.why)
            return
        allowed = self.storm.next_allowed(info.cmdline, now)
        if allowed:
            if owner not in self._deferred:
                decision("storm", logging.WARNING, pid=info.pid, comm=info.comm, cmd=info.cmdline,
                         kills=self.storm.max_kills, per=self.storm.per,
                         next_in=round(allowed - now, 1),
                         note="this command keeps leaking after restarts: kills are rate-limited")
            self._deferred[owner] = allowed
            return
        verified = self._verify(owner)
        socks = list(verified)
        if len(socks) < self.limits.limit:
            if self._debug:
                log.debug("pid %d: holds only %d counting socket(s) on re-check", owner.pid, len(socks))
            return
        oldest = max(now - self.table.entries[s].entered for s in socks)
        ordered = tuple(sorted(socks))
        target = Target(info, ordered, oldest, tuple(verified[s] for s in ordered),
                        self.limits.limit)
        plan = self.config.plan
        decision("reap" if not plan.dry_run else "would-reap", logging.WARNING,
                 pid=info.pid, comm=info.comm, count=len(socks), limit=self.limits.limit,
                 oldest=round(oldest, 3), sockets=_endpoints(socks), cmd=info.cmdline,
                 plan=plan.describe())
        if not self.killer.submit(target):  # only if it filled up just now
            log.warning("pid %d: kill slots full, deciding again shortly", owner.pid)
            self._deferred[owner] = now + 0.05
            return
        self.storm.record(info.cmdline, now)
        self._reaped.add(owner)

    def _verify(self, owner: Owner) -> dict[SockId, int]:
        """The owner's counting sockets (with their inodes) that are, right
        now, still in CLOSE_WAIT and still held by it (it may have closed
        them or passed them on since they counted)."""
        socks = list(self.counter.by_owner.get(owner, ()))
        resolved = resolve_close_wait(self.resolver, socks)
        held: dict[SockId, int] = {}
        for sock in socks:
            hit = resolved.get(sock)
            if hit is not None and any(o.pid == owner.pid and o.start == owner.start
                                       for o in hit.owners):
                held[sock] = hit.inode
            else:
                entry = self.table.get(sock)
                self.counter.remove(sock, (owner,))
                if hit is None:
                    self.table.remove(sock)
                elif entry is not None:
                    entry.owners = hit.owners
                    self.counter.add(sock, hit.owners)
        return held

    def _collect(self) -> None:
        for outcome in self.killer.finished():
            info = outcome.target.info
            owner = Owner(info.pid, info.start, info.comm)
            level = logging.ERROR if outcome.result == "failed" else logging.WARNING
            fields = dict(pid=info.pid, comm=info.comm, result=outcome.result,
                          signals=outcome.signals, took=round(outcome.took, 3))
            if outcome.hook_status is not None:
                fields["hook"] = outcome.hook_status
            if outcome.detail:
                fields["detail"] = outcome.detail
            decision("outcome", level if outcome.result != "dry-run" else logging.INFO, **fields)
            self.outcomes.append(outcome)
            if len(self.outcomes) > 1000:  # bounded: a long-running daemon
                del self.outcomes[:500]
            self.results[outcome.result] = self.results.get(outcome.result, 0) + 1
            if outcome.result == "spared":
                self.hook_failures += 1
            if outcome.result in ("spared", "dry-run"):
                # Spared this round: look again after another grace period.
                self._reaped.discard(owner)
                self._deferred[owner] = time.monotonic() + max(self.limits.grace, 1.0)
            elif outcome.result in ("replaced", "failed"):
                self._reaped.discard(owner)

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
        kernel = {ns.diag.sock for ns in self.resolver.table.close_wait()}
        if self.filters.ignore:
            kernel = {s for s in kernel if not self.filters.ignores(s)}
        gone = [s for s in self.table.entries if s not in kernel]
        for sock in gone:
            entry = self.table.remove(sock)
            if entry is not None and entry.counted:
                self._uncount(sock, entry.owners)
        added = [Transition(Kind.ENTER, s, now) for s in kernel if s not in self.table.entries]
        self._apply(added)
        if gone or added:
            decision("reconcile", logging.INFO if not self._lost else logging.WARNING,
                     added=len(added), removed=len(gone))
