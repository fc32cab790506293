"""When does a socket in CLOSE_WAIT count against the process holding it?

CLOSE_WAIT age alone is no evidence of a leak: the *peer* decides when a
socket enters CLOSE_WAIT, and a busy server keeps one there legitimately
while it answers.  The kernel's answer for the socket (sock_diag) says what
the *process* did with it, and that decides how long it must stay:

| state (sock_diag)                         | evidence      | counts after |
|-------------------------------------------|---------------|--------------|
| Recv-Q 0, Send-Q 0, nothing sent lately   | eof-ignored   | the grace -i |
| Recv-Q >= 1 (FIN or data unread)          | unread        | --stall      |
| no inode: still in a listener's queue     | queued        | --stall      |
| Send-Q > 0, or data sent within the grace | sending       | never, while so |

- eof-ignored: recv() returned 0 and the process kept the socket: the
  classic leak.  A half-close protocol can make a slow server look like
  this for a while, hence still the grace.
- unread: a pool that never touches its idle connections again (the most
  common real leak), or a busy or hung handler.  Only time tells them
  apart, so it takes the longer stall period.
- queued: nothing accepted it for that long.  A busy server and a hung one
  differ only by how long.
- sending: the process is still using the socket; the peer is the slow
  side (it half-closed and reads slowly, or stopped reading).  A peer must
  not be able to make resreap kill a server by reading slowly.

Who created the socket matters too: a socket made by another non-root user
and passed in over SCM_RIGHTS says nothing about the receiver.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from resreap.model import Evidence
from resreap.host.sockdiag import DiagSock

# A socket that does not count yet is looked at again at most this often,
# and at least this far apart (tiny graces in tests must not spin).
MIN_RECHECK = 0.05
MAX_RECHECK = 5.0


class Rules(NamedTuple):
    grace: float = 2.0   # -i: eof-ignored counts after this
    stall: float = 60.0  # --stall: unread and queued count after this


class Judgement(NamedTuple):
    evidence: Evidence
    counts: bool
    recheck: float  # seconds from now after which the answer may differ


def _later(seconds: float, rules: Rules) -> float:
    return max(MIN_RECHECK, min(seconds, max(rules.grace, MAX_RECHECK)))


def judge(diag: DiagSock, age: float, rules: Rules) -> Judgement:
    """How ``diag``, in CLOSE_WAIT for ``age`` seconds, stands."""
    if not diag.inode:
        return Judgement(Evidence.QUEUED, age >= rules.stall,
                         _later(min(rules.stall - age, rules.grace), rules))
    if diag.wqueue > 0:
        return Judgement(Evidence.SENDING, False, _later(rules.grace, rules))
    # Quiet: in CLOSE_WAIT and sending nothing, for this long.  procfs has
    # no tcp_info: there the age alone.
    idle = diag.idle_sent
    quiet = age if idle is None else min(age, idle)
    if idle is not None and idle < rules.grace:
        return Judgement(Evidence.SENDING, False, _later(rules.grace - idle, rules))
    if diag.rqueue == 0:
        return Judgement(Evidence.EOF_IGNORED, quiet >= rules.grace,
                         _later(rules.grace - quiet, rules))
    return Judgement(Evidence.UNREAD, quiet >= rules.stall,
                     _later(min(rules.stall - quiet, rules.grace), rules))


def counts_after(evidence: Evidence | None, rules: Rules) -> float | None:
    """The CLOSE_WAIT age at which a socket showing ``evidence`` counts, as
    ``judge`` decides it (None: not while it shows that; a socket not judged
    yet: the grace, the earliest any may count).  For `resreap top`."""
    if evidence is Evidence.SENDING:
        return None
    if evidence in (Evidence.UNREAD, Evidence.QUEUED):
        return rules.stall
    return rules.grace


def counts_against(sock_uid: int, holder_uids: Iterable[int], vouched: bool = True) -> bool:
    """May a socket created by ``sock_uid`` count against a process with
    these uids (real, effective, saved, fs)?  Its own sockets do.  A socket
    made by another non-root user reached this process over SCM_RIGHTS,
    which anyone can arrange: never.  A socket made by root counts only
    where root's part is ``vouched`` for: the socket still waits in a
    listener's queue, or the holder (or its ancestor) holds the listener it
    was accepted on (a service gets its listener from root: systemd, a
    master process).  Otherwise a user holding root-accepted sockets (inetd,
    Accept=yes, a root proxy) could pass them to anyone."""
    uids = set(holder_uids)
    if sock_uid in uids:
        return True
    return sock_uid == 0 and vouched


def summary(kinds: Iterable[Evidence]) -> str:
    """'eof-ignored:3,queued:1' for a decision line."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind.value] = counts.get(kind.value, 0) + 1
    return ",".join(f"{k}:{n}" for k, n in sorted(counts.items()))
