"""Decision lines: what the engine decided and why, one record per
decision with its evidence as fields, emitted through the
"resreap.engine.decisions" logger.  Where they go and how they look (text, JSON,
the journal, a log file) is ops/decisionlog's job.

The kinds of line are an enum: code and tests name them through it, so a
rename cannot leave a test asserting the absence of a line no one writes
any more, and the manual's list (docs/watch.md) is checked against it."""

from __future__ import annotations

import enum
import logging
from typing import Any

from resreap.model import SockId

log = logging.getLogger("resreap.engine.decisions")


class Event(str, enum.Enum):
    """The ``event`` of a decision line (its first word in text)."""

    # The daemon's life.
    LOADING = "loading"              # the BPF program is being loaded
    BACKEND = "backend"              # BPF unavailable: polling instead
    START = "start"                  # watching now, with these settings
    RELOAD = "reload"                # new settings applied, or rejected
    STOPPING = "stopping"            # waiting for running kill sequences
    ABANDON = "abandon"              # kill sequences left unfinished
    STOP = "stop"                    # the end, with totals
    # Sockets.
    EXISTING = "existing"            # already in CLOSE_WAIT at start
    FOREIGN = "foreign"              # passed in by another user: never counts
    ORPHANS = "orphans"              # counting, held by no process found
    RECONCILE = "reconcile"          # our table made to match the kernel's
    LOST_EVENTS = "lost-events"      # the kernel dropped events
    OUT_OF_FDS = "out-of-fds"        # resreap hit its own fd limit
    UNWATCHED = "unwatched"          # network namespaces past the caps: not seen
    # Processes.
    CHILDREN_FIRST = "children-first"  # its descendants are handled first
    SPARE = "spare"                  # ineligible: never killed
    STORM = "storm"                  # rate-limited: it keeps leaking
    UNREADABLE = "unreadable"        # /proc could not be read: later
    REAP = "reap"                    # a kill sequence starts
    WOULD_REAP = "would-reap"        # the same, in a dry run
    OUTCOME = "outcome"              # how a kill sequence ended
    # Debug level (-D): every event and timer, and why a process was not
    # reaped yet.
    TRANSITION = "transition"        # a socket entered or left CLOSE_WAIT
    TIMER = "timer"                  # a socket's deadline: what it showed
    BELOW = "below"                  # a process not over its limit (yet)

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    """A TIMER line's ``verdict``: what became of the socket."""

    DROPPED = "dropped"      # no longer in CLOSE_WAIT
    WAITING = "waiting"      # does not count yet: looked at again later
    UNOWNED = "unowned"      # counts, but its holder is not found yet
    COUNTS = "counts"        # counts, against ``counts_for``

    def __str__(self) -> str:
        return self.value


def decision(event: Event, level: int = logging.INFO, /, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event.value, extra={"fields": fields})


# Endpoints named in a decision line.
ENDPOINTS_SHOWN = 3


def endpoints(socks: list[SockId]) -> list[str]:
    """A few sockets as local->remote, and how many more."""
    socks = sorted(socks)
    shown = [f"{s.local}->{s.remote}" for s in socks[:ENDPOINTS_SHOWN]]
    if len(socks) > ENDPOINTS_SHOWN:
        shown.append(f"+{len(socks) - ENDPOINTS_SHOWN} more")
    return shown
