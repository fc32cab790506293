"""When does a process cross the limit: counting sockets per process, who
may be reaped, and how often the same command may be reaped."""

from __future__ import annotations

import collections
import math
import os
import time
from typing import TYPE_CHECKING, Hashable, Iterable, NamedTuple

from resreap.host import supervisor
from resreap.host.procinfo import HOST, Proc, ProcInfo
from resreap.errors import AccessDenied, ProcessGone
from resreap.model import Key, Owner, SpareReason

from resreap.engine.rules import Limits

if TYPE_CHECKING:  # config imports rules, as this module does
    from resreap.engine.config import Current


class Threshold(NamedTuple):
    """How many counting sockets make a process a target, which bound set
    that number, and how close to running out of fds it may come."""

    count: int
    why: str   # "limit" (-l) or "fd-percent" (that share of its soft fd limit)
    fd_limit: int | None = None  # the soft fd limit it was computed from
    act_before: float | None = None  # --act-before: seconds before its fds run out

    def crossed_by(self, count: int, exhausted_in: float | None = None) -> bool:
        return self.reason(count, exhausted_in) is not None

    def reason(self, count: int, exhausted_in: float | None = None) -> str | None:
        """Why ``count`` counting sockets, with fds running out in
        ``exhausted_in`` seconds (engine/forecast; None: no forecast), make
        it a target: the bound's ``why``, or "exhaustion" (the forecast
        fell below --act-before: it still needs one counting socket, the
        evidence decides, the forecast only when).  None: not a target."""
        if count >= self.count:
            return self.why
        if self.due_in(count, exhausted_in) == 0.0:
            return "exhaustion"
        return None

    def due_in(self, count: int, exhausted_in: float | None) -> float | None:
        """Seconds until the forecast alone makes it a target (0: now);
        None: never with these sockets (no --act-before, no counting
        socket, or no forecast)."""
        if self.act_before is None or count < 1 or exhausted_in is None:
            return None
        return max(0.0, exhausted_in - self.act_before)


def threshold(limits: Limits, fd_limit: int | None) -> Threshold:
    """The one "crossed its limit" predicate's bound, for a process whose
    soft RLIMIT_NOFILE is ``fd_limit`` (None: unlimited): `-l`, or with
    `--fd-percent` that share of the fd limit where it is larger (the
    exhaustion that takes a server down); and `--act-before`.  The
    decision, the re-check before the first signal (Target.limit) and
    `top`'s REAP all ask it."""
    if limits.fd_percent and fd_limit:
        share = math.ceil(limits.fd_percent * fd_limit / 100)
        if share > limits.limit:
            return Threshold(share, "fd-percent", fd_limit, limits.act_before)
    return Threshold(limits.limit, "limit", fd_limit, limits.act_before)


def threshold_of(limits: Limits, pid: int, proc: Proc) -> Threshold | None:
    """``threshold`` for a live process, its soft fd limit read now where
    --fd-percent needs it.  None: unreadable (what cannot be read decides
    nothing)."""
    fd_limit = None
    if limits.fd_percent:
        try:
            fd_limit = proc.fd_soft_limit(pid)
        except (ProcessGone, AccessDenied):
            return None
    return threshold(limits, fd_limit)


class Counter:
    """Counting sockets per holding process, by the sockets' tracker keys.
    Distinct sockets, not fds: a socket on two fds counts once."""

    def __init__(self) -> None:
        self.by_owner: dict[Owner, set[Key]] = collections.defaultdict(set)
        # Holders whose count changed since the forecaster last sampled it.
        self.changed: set[Owner] = set()

    def add(self, key: Key, owners: Iterable[Owner]) -> None:
        for owner in owners:
            self.by_owner[owner].add(key)
            self.changed.add(owner)

    def remove(self, key: Key, owners: Iterable[Owner]) -> None:
        for owner in owners:
            self.changed.add(owner)
            keys = self.by_owner.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_owner[owner]

    def count(self, owner: Owner) -> int:
        return len(self.by_owner.get(owner, ()))


def protected_pids(proc: Proc = HOST) -> set[int]:
    """Never signalled: init, kthreadd, resreap itself and its ancestors
    (killing the shell or supervisor that runs us would be a disaster)."""
    return {1, 2} | proc.ancestors(os.getpid())


class Eligible(NamedTuple):
    """Eligibility's answer: may it be reaped, and if not, why."""

    ok: bool
    reason: SpareReason | None = None

    @property
    def why(self) -> str:
        return self.reason.value if self.reason else ""


class Eligibility:
    """Who may be reaped: the filters, the protected set, kernel threads."""

    def __init__(self, current: Current, proc: Proc = HOST) -> None:
        self.current = current
        self.proc = proc
        self.protected = protected_pids(proc)

    def check(self, info: ProcInfo, by_default: bool = True,
              where: supervisor.Supervisor | None = None) -> Eligible:
        """``by_default``: judged by the default rule, which the filters
        (-f, -p, --unit, --container) narrow; a named rule's match was its
        own selection.  ``where``: its cgroup, if the caller read it."""
        if info.pid in self.protected:
            return Eligible(False, SpareReason.PROTECTED)
        if info.kthread:
            return Eligible(False, SpareReason.KTHREAD)
        filters = self.current.filters
        if by_default and filters.selects_processes:
            if where is None and filters.selects_places:
                where = supervisor.of(info.pid, self.proc)
            if not filters.wants(info.pid, info.cmdline, where):
                return Eligible(False, SpareReason.NOT_SELECTED)
        return Eligible(True)


class StormKey(NamedTuple):
    """What one supervisor restarts: the storm bound's unit of account.  A
    command line alone was anyone's to copy: one kill of a user's process
    named like root's service spent that service's `max_rate`, and its
    next leak waited the whole window.  The rule, the uids, the unit and
    the container are not the process's to choose (the uids and the
    cgroup are the kernel's; the rule follows from them where it matches
    on trusted keys).  A pod's container is counted by its pod and name,
    which outlive the ids a restart changes (Supervisor.restarts_as)."""

    rule: str
    uids: tuple[int, ...]
    unit: str
    container: str
    cmdline: str

    @classmethod
    def of(cls, rule: str, uids, where: "supervisor.Supervisor | None",
           cmdline: str) -> "StormKey":
        unit, container = where.restarts_as if where else ("", "")
        return cls(rule, tuple(sorted(uids or ())), unit, container, cmdline)


class StormGuard:
    """Bounds how often one supervised command is reaped (StormKey): a
    supervisor restarting a command that leaks again within seconds must
    not turn resreap into a kill loop.  Past the bound, kills wait for the
    window to allow them.

    A storm is a kill followed by a *replacement* that leaks again: only
    kills made before the target started count against it.  Siblings that
    were alive together (a forking server's stuck children share one
    command line) are each reaped, and never called a storm.  Only real
    kills are recorded (not hook vetoes or dry runs)."""

    MAX_KEYS = 4096  # supervised commands remembered at most

    def __init__(self, current: Current) -> None:
        self.current = current
        self._kills: dict[Hashable, collections.deque[float]] = {}

    def __len__(self) -> int:
        return len(self._kills)

    def _recent(self, key: Hashable, now: float) -> collections.deque[float]:
        times = self._kills.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.current.rules.longest_window:
            times.popleft()
        return times

    def next_allowed(self, key: Hashable, now: float | None = None,
                     started: float | None = None, limits: Limits | None = None) -> float:
        """0 if a kill is allowed now, else the monotonic time it will be.
        ``started``: when the target started (monotonic); kills after it
        cannot have been of what it replaces.  ``limits``: the target's
        rule's (default: the default rule's)."""
        now = time.monotonic() if now is None else now
        limits = limits or self.current.limits
        max_kills, per = limits.max_kills, limits.per
        times = [t for t in self._recent(key, now) if (started is None or t < started)
                 and t > now - per]
        if len(times) < max_kills:
            return 0.0
        return times[-max_kills] + per

    def record(self, key: Hashable, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        times = self._recent(key, now)
        times.append(now)
        self._kills[key] = times
        if len(self._kills) > self.MAX_KEYS:
            self._prune(now)
        return len(times)

    def _prune(self, now: float) -> None:
        """Forget commands with no kill in the window; if every one is
        recent (thousands of distinct command lines a minute: hostile), the
        least recently killed go first."""
        window = self.current.rules.longest_window
        for key in [k for k, v in self._kills.items() if not v or v[-1] <= now - window]:
            del self._kills[key]
        if len(self._kills) > self.MAX_KEYS:
            keep = sorted(self._kills.items(), key=lambda kv: kv[1][-1])[-(self.MAX_KEYS * 3 // 4):]
            self._kills = dict(keep)
