"""What `resreap top` shows, from the watcher's own state: per process, its
CLOSE_WAIT sockets now and those that count, their evidence, the oldest's
age, its fds against its soft limit, and when it would be reaped under the
settings in force.  No second copy of the policy: the deadlines are the
watcher's own timers."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from resreap.engine.evidence import counts_after
from resreap.errors import ResreapError
from resreap.model import Owner

if TYPE_CHECKING:
    from resreap.engine.watch import Watcher


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


def rows(watcher: "Watcher", now: float, top: int = 50) -> list[Row]:
    """The ``top`` processes holding the most CLOSE_WAIT sockets."""
    held: dict[Owner, list] = {}
    for entry in watcher.table:
        for owner in entry.owners or ():
            held.setdefault(owner, []).append(entry)
    largest = sorted(held.items(), key=lambda kv: -len(kv[1]))
    out = []
    for owner, entries in largest:
        if len(out) >= top:
            break
        if watcher.filters.selects_processes and not _selected(watcher, owner):
            continue  # -f / -p narrow the view as they narrow who is reaped
        out.append(_row(watcher, owner, entries, now))
    return out


def _selected(watcher: "Watcher", owner: Owner) -> bool:
    try:
        return watcher.filters.wants(owner.pid, watcher.proc.read_bounded(owner.pid).cmdline)
    except ResreapError:
        return False


def _row(watcher: "Watcher", owner: Owner, entries: list, now: float) -> Row:
    counting = watcher.counter.count(owner)
    evidence: dict[str, int] = {}
    for e in entries:
        if e.evidence is not None:
            evidence[e.evidence.value] = evidence.get(e.evidence.value, 0) + 1
    need = watcher.limits.limit - counting
    if need <= 0:
        reap_in: float | None = 0.0
    else:
        # When each socket not counting yet would count, by its evidence
        # (the same thresholds as the deadline's judgement).
        rules = watcher.limits.rules
        dues = sorted(e.entered + after for e in entries if not e.counted
                      and (after := counts_after(e.evidence, rules)) is not None)
        reap_in = max(0.0, dues[need - 1] - now) if len(dues) >= need else None
    proc = watcher.proc
    try:
        fds, limit = proc.fd_count(owner.pid), proc.fd_soft_limit(owner.pid)
    except ResreapError:
        fds, limit = None, None
    where = watcher.where(owner.pid)
    return Row(owner.pid, owner.comm, where.get("unit", ""), where.get("container", ""),
               len(entries), counting, evidence, max(0.0, now - min(e.entered for e in entries)),
               fds, limit, reap_in)
