"""Which rule judges a process: the one place that answers it.  The rule
book owns the per-process facts cache (psutil's oneshot idea: a process's
command line, cgroup and uids read together, once, kept UIDS_FRESH
seconds, for at most HOLDERS_REMEMBERED processes) and the rule picked per
(process, local port).  Counting asks it whom a socket counts against, the
watch derives a decision's rule from it (once, from facts read right
before, and the rule travels with the decision), `top` and `rules` show
what it says."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Collection, NamedTuple

from resreap.bounded import BoundedDict
from resreap.engine.policy import StormKey, threshold
from resreap.engine.rules import NO_FACTS, Facts, Rule
from resreap.errors import AccessDenied, ProcessGone, ProcessReplaced, ProcessUnreadable
from resreap.host import supervisor
from resreap.host.supervisor import Supervisor
from resreap.host.procinfo import Proc, ProcInfo
from resreap.model import Owner, SockId

if TYPE_CHECKING:  # config imports rules, as this module does
    from resreap.engine.config import Current

# A holder's facts are read again after this long (argv rewritten, setuid
# after start-up: a daemon dropping root).
UIDS_FRESH = 30.0
# Processes whose facts are kept at most: processes come and go.
HOLDERS_REMEMBERED = 4096
# Rules picked per process (one per local port where a rule matches ports:
# a client's leak has many local ports).
PICKS_PER_PROCESS = 1024


class Known(NamedTuple):
    read_at: float
    facts: Facts | None  # None: gone or unreadable
    picks: BoundedDict   # local port (0: any) -> Rule | None


class Reading(NamedTuple):
    """One decision's read of a process: its facts, and the rule they put
    it under with its counting sockets (``count``)."""

    info: ProcInfo
    facts: Facts
    rule: Rule
    count: int


class RuleBook:
    def __init__(self, current: "Current", proc: Proc, clock: Callable[[], float]) -> None:
        self.current = current
        self.proc = proc
        self._clock = clock
        self._known: BoundedDict[tuple[int, int], Known] = BoundedDict(HOLDERS_REMEMBERED)
        self._uids: BoundedDict[tuple[int, int], tuple[float, frozenset[int]]] = \
            BoundedDict(HOLDERS_REMEMBERED)

    def reconfigured(self) -> None:
        """New rules: every pick is made again."""
        self._known.clear()

    def refresh(self, owner: Owner) -> None:
        """Read ``owner``'s facts afresh at its next look (before a kill)."""
        self._known.discard(owner.ident)
        self._uids.discard(owner.ident)

    # -- facts -------------------------------------------------------------

    def uids(self, owner: Owner) -> frozenset[int] | None:
        """Its real, effective, saved and fs uids (whom a socket may count
        against); the cheapest fact, read alone where no rule needs the
        others.  None: gone or unreadable."""
        now = self._clock()
        known = self._uids.get(owner.ident)
        if known is None or now - known[0] > UIDS_FRESH:
            try:
                uids = self.proc.read_uids(owner.pid)
            except (ProcessGone, AccessDenied):
                return None
            known = self._uids[owner.ident] = (now, uids)
        return known[1]

    def facts(self, owner: Owner) -> Facts | None:
        """What ``owner``'s rule is matched against.  None: gone or
        unreadable (no rule judges it, nothing counts against it)."""
        return self._look(owner).facts

    def _look(self, owner: Owner) -> Known:
        now = self._clock()
        known = self._known.get(owner.ident)
        if known is not None and now - known.read_at <= UIDS_FRESH:
            return known
        try:
            _info, facts = self._read(owner)
        except (ProcessGone, AccessDenied, ProcessUnreadable, ProcessReplaced):
            facts = None
        return self._remember(owner, now, facts)

    def _remember(self, owner: Owner, now: float, facts: Facts | None) -> Known:
        known = self._known[owner.ident] = Known(now, facts, BoundedDict(PICKS_PER_PROCESS))
        return known

    def _read(self, owner: Owner) -> tuple[ProcInfo, Facts]:
        """The one read of a process: its stat and command line (bounded:
        a hostile process's reads cannot stall the loop), its cgroup, its
        uids.  Raises what the /proc edge raises."""
        info = self.proc.read_bounded(owner.pid)
        if info.start != owner.start:
            raise ProcessReplaced(owner.pid)
        where = supervisor.read(owner.pid, self.proc)
        uids = self.uids(owner)
        if uids is None:
            raise ProcessGone(owner.pid)
        return info, Facts(info.cmdline, where, uids)

    # -- rules -------------------------------------------------------------

    def rule_of(self, owner: Owner, sock: SockId) -> Rule | None:
        """The rule ``owner``'s socket ``sock`` falls under (None: no rule,
        the default ignores it, or the process cannot be read)."""
        rules = self.current.rules
        if rules.plain:
            return rules.default
        if not rules.needs_facts:
            return rules.pick(NO_FACTS, sock.lport)
        known = self._look(owner)
        if known.facts is None:
            return None
        port = sock.lport if rules.by_port else 0  # without port keys, one pick
        if port not in known.picks:
            known.picks[port] = rules.pick(known.facts, sock.lport)
        return known.picks[port]

    def standing(self, owner: Owner, socks: Collection[SockId]) -> list[tuple[Rule, int]]:
        """``owner``'s counting sockets ``socks`` per rule they fall under,
        in the rules' order (usually one rule).  With the default rule
        alone, only their number is asked (no socket is looked up)."""
        rules = self.current.rules
        if rules.plain:
            return [(rules.default, len(socks))] if socks else []  # type: ignore[list-item]
        counts: dict[int, int] = {}
        for sock in socks:
            rule = self.rule_of(owner, sock)
            if rule is not None:
                counts[id(rule)] = counts.get(id(rule), 0) + 1
        return [(r, counts[id(r)]) for r in rules.every() if id(r) in counts]

    def over(self, owner: Owner, socks: Collection[SockId],
             exhausted_in: float | None = None) -> tuple[Rule, int] | None:
        """The first rule under which ``owner``'s counting sockets make it a
        target (the predicate's count-only bound: -l, or with its fds
        forecast to run out in ``exhausted_in`` seconds, --act-before;
        --fd-percent needs a read, made at the decision), and how many they
        are."""
        return next(((r, n) for r, n in self.standing(owner, socks)
                     if threshold(r.limits, None).crossed_by(n, exhausted_in)), None)

    def decide(self, owner: Owner, socks: Collection[SockId],
               exhausted_in: float | None = None) -> Reading | None:
        """A decision's rule: the process read afresh, once, and its rule
        derived from what it is now (argv rewritten, privileges dropped
        since its counting sockets ``socks`` counted).  None: no rule's
        limit is reached under the fresh facts.  Raises ProcessGone,
        ProcessUnreadable, AccessDenied."""
        self.refresh(owner)
        info, facts = self._read(owner)
        self._remember(owner, self._clock(), facts)
        over = self.over(owner, socks, exhausted_in)
        if over is None:
            return None
        return Reading(info, facts, *over)

    def selected(self, owner: Owner) -> bool:
        """Does the command line's selection (-f, -p, --unit, --container:
        the default rule's match) take this process?  Unreadable: no."""
        filters = self.current.filters
        if not filters.selects_processes:
            return True
        facts = self.facts(owner)
        return facts is not None and filters.wants(owner.pid, facts.cmdline, facts.where)


class Case(NamedTuple):
    """One decision about one process over its limit: its facts read once
    (right before judging, RuleBook.decide), the rule that judges it, and
    what the storm bound counts it against.  The same rule decides
    children first, the rate limit, the re-check and the kill."""

    owner: Owner
    info: ProcInfo
    where: Supervisor
    rule: Rule
    storm: StormKey
