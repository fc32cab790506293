"""The one read model of the watch's state: what `resreap top` and
`resreap rules` show, and the metrics' snapshot.  Per process, its
CLOSE_WAIT sockets now and those that count, their evidence, the oldest's
age, how fast its sockets enter CLOSE_WAIT and leave it (engine/churn.py,
where top set one), its fds against its soft limit, its memory, and when
it would be reaped under the settings in force.  No second copy of the
policy: the deadlines are the watcher's own timers."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, NamedTuple

from resreap.engine.evidence import counts_after
from resreap.engine.policy import threshold
from resreap.errors import ResreapError
from resreap.host import supervisor
from resreap.model import Holder, Owner, Snapshot

if TYPE_CHECKING:
    from resreap.engine.rules import Rule
    from resreap.host.supervisor import Supervisor
    from resreap.engine.watch import Watcher


LOOKED_AT_MAX = 1024


class Row(NamedTuple):
    pid: int
    comm: str
    unit: str
    container: str
    close_wait: int         # its CLOSE_WAIT sockets now
    counting: int           # those that count against it
    evidence: dict          # Evidence.value -> sockets, as last judged
    oldest: float           # seconds the oldest has been in CLOSE_WAIT
    fds: int | None         # open fds (None: unreadable)
    fd_limit: int | None    # its soft RLIMIT_NOFILE (None: unlimited or unreadable)
    reap_in: float | None   # seconds until it would be reaped; None: not with these sockets
    rule: str = "-"         # the rule judging it ("-": none, default = "ignore")
    action: str = "-"       # what its rule would do (ops fills it: the plan, or "dry run")
    enter_rate: float = 0.0  # its sockets entering CLOSE_WAIT per second (churn window)
    exit_rate: float = 0.0   # ... and leaving it (its close())
    rss: int | None = None   # resident memory, bytes (None: unreadable)
    # Seconds until its fds run out at its leak's pace (engine/forecast;
    # None: its counting sockets do not grow, or no fd limit).
    exhausted_in: float | None = None
    namespace: str = ""      # its pod's namespace and name (Kubernetes; "" if none)
    pod: str = ""

    @property
    def place(self) -> str:
        """namespace/pod, else its container, else its unit ("" if none)."""
        return f"{self.namespace}/{self.pod}" if self.pod else self.container or self.unit


def rows(watcher: "Watcher", now: float, top: int = 50) -> list[Row]:
    """The ``top`` processes holding the most CLOSE_WAIT sockets, then
    those whose sockets pass through CLOSE_WAIT fastest (where the watcher
    records churn)."""
    held: dict[Owner, list] = {}
    for entry in watcher.table:
        for owner in entry.owners or ():
            held.setdefault(owner, []).append(entry)
    churn = watcher.sockets.churn
    # Sockets found at start entered at some unknown time before: not an
    # enter seen.
    rates = churn.rates(now, {o: [e.entered for e in es if not e.existing]
                              for o, es in held.items()}) if churn is not None else {}
    ranked = sorted(set(held) | set(rates),
                    key=lambda o: (-len(held.get(o, ())), -sum(rates.get(o, (0.0, 0.0))), o.pid))
    out = []
    # Bounded reads per frame: a filter that rejects thousands of churning
    # processes reads each one's command line (holders rank first).
    for owner in ranked[:LOOKED_AT_MAX]:
        if len(out) >= top:
            break
        if owner not in held and not watcher.proc.alive(owner.pid, owner.start):
            continue  # churned, then exited
        if not watcher.book.selected(owner):
            continue  # -f / -p / --unit narrow the view as they narrow who is reaped
        facts = watcher.book.facts(owner)
        row = _row(watcher, owner, held.get(owner, []), now,
                   facts.where if facts is not None else supervisor.of(owner.pid, watcher.proc))
        enter_rate, exit_rate = rates.get(owner, (0.0, 0.0))
        out.append(row._replace(enter_rate=round(enter_rate, 1), exit_rate=round(exit_rate, 1),
                                rss=_rss(watcher, owner)))
    return out


def _rss(watcher: "Watcher", owner: Owner) -> int | None:
    try:
        return watcher.proc.rss(owner.pid)
    except ResreapError:
        return None


def _reap_in(entries: list, rule: "Rule", counting: int, now: float,
             fd_limit: int | None, readable: bool, exhausted_in: float | None) -> float | None:
    """When ``rule`` would reap the holder of these sockets: now if
    ``counting`` cross its bound (policy.threshold, as the watch asks it:
    -l, or the --fd-percent share of ``fd_limit``, or its fds forecast to
    run out in ``exhausted_in`` within --act-before), else when enough of
    the others would count, by their evidence (the same thresholds as the
    deadline's judgement), or when the forecast reaches --act-before.
    With --fd-percent and a fd limit that could not be read, never (the
    watch decides nothing on it either)."""
    if rule.limits.fd_percent and not readable:
        return None
    bound = threshold(rule.limits, fd_limit)
    by_forecast = bound.due_in(counting, exhausted_in)
    need = bound.count - counting
    if need <= 0:
        return 0.0
    dues = sorted(e.entered + after for e in entries if not e.counted
                  and (after := counts_after(e.evidence, rule.limits.rules)) is not None)
    by_count = max(0.0, dues[need - 1] - now) if len(dues) >= need else None
    return min((t for t in (by_count, by_forecast) if t is not None), default=None)


def _row(watcher: "Watcher", owner: Owner, entries: list, now: float,
         where: "Supervisor") -> Row:
    counting = watcher.sockets.counter.count(owner)
    evidence: dict[str, int] = {}
    for e in entries:
        if e.evidence is not None:
            evidence[e.evidence.value] = evidence.get(e.evidence.value, 0) + 1
    # Its sockets by the rule judging each (one rule, unless a rule
    # matches a port): the rule that would reap it first is shown.
    by_rule: dict[int, tuple["Rule", list]] = {}
    for e in entries:
        rule = watcher.book.rule_of(owner, e.sock)
        if rule is not None:
            by_rule.setdefault(id(rule), (rule, []))[1].append(e)
    proc = watcher.proc
    try:
        limit, readable = proc.fd_soft_limit(owner.pid), True
    except ResreapError:
        limit, readable = None, False
    try:
        fds = proc.fd_count(owner.pid)
    except ResreapError:
        fds = None
    counted = dict((id(r), n) for r, n in watcher.sockets.standing(owner))
    exhausted_in = watcher.forecasts.seconds(owner, now)
    best: tuple[float | None, "Rule | None"] = (None, None)
    for key, (rule, mine) in by_rule.items():
        when = _reap_in(mine, rule, counted.get(key, 0), now, limit, readable, exhausted_in)
        if best[1] is None or (when is not None and (best[0] is None or when < best[0])):
            best = (when, rule)
    reap_in, rule = best
    pod = where.pod
    return Row(owner.pid, owner.comm, where.unit or "", where.container_name,
               len(entries), counting, evidence,
               max(0.0, now - min((e.entered for e in entries), default=now)),
               fds, limit, reap_in if rule is not None else None,
               rule.name if rule is not None else "-", exhausted_in=exhausted_in,
               namespace=pod.namespace if pod else "", pod=pod.name if pod else "")


def snapshot(watcher: "Watcher", top: int) -> Snapshot:
    """Figures for metrics: cheap enough to build once a second."""
    counts = [(len(socks), owner) for owner, socks in watcher.sockets.counter.by_owner.items()]
    best = heapq.nlargest(top, counts, key=lambda c: c[0])
    # A top holder is usually a largest holder of CLOSE_WAIT too: its
    # cgroup is read once per snapshot.
    wheres: dict[int, "Supervisor"] = {}

    now = watcher.now()

    def holder(owner: Owner, n: int) -> Holder:
        where = wheres.get(owner.pid)
        if where is None:
            where = wheres[owner.pid] = supervisor.of(owner.pid, watcher.proc)
        return Holder(owner.pid, owner.comm, where.unit or "", where.container_name, n,
                      watcher.forecasts.seconds(owner, now),
                      where.pod.namespace if where.pod else "", where.pod.name if where.pod else "")

    # Every CLOSE_WAIT socket with a known holder, counting or not yet: a
    # process heading for a reap shows before its sockets count.
    now_held: dict[Owner, int] = {}
    oldest = None
    for entry in watcher.table:
        if oldest is None or entry.entered < oldest:
            oldest = entry.entered
        for owner in entry.owners or ():
            now_held[owner] = now_held.get(owner, 0) + 1
    holding = heapq.nlargest(top, ((n, o) for o, n in now_held.items()), key=lambda c: c[0])
    tally = watcher.tally
    return Snapshot(
        oldest=max(0.0, now - oldest) if oldest is not None else 0.0,
        holding=tuple(holder(o, n) for n, o in holding),
        kill_buckets=tuple(tally.kill_buckets), kill_seconds=tally.kill_seconds,
        tracked=len(watcher.table),
        top=tuple(holder(o, n) for n, o in best),
        exhausting=tuple(holder(o, watcher.sockets.counter.count(o))
                         for _s, o in watcher.forecasts.soonest(top, now)),
        other=sum(n for n, _ in counts) - sum(n for n, _ in best),
        rule_outcomes=dict(tally.rule_results),
        rules=tuple(r.name for r in watcher.current.rules.every()),
        evidence=dict(tally.reaped_evidence),
        revivals={r.value: n for r, n in tally.revivals.items()},
        hook_failures=tally.hook_failures,
        events=dict(watcher.sockets.events_seen),
        lost=watcher.losses.lost,
    )
