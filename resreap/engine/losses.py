"""Events lost and namespaces not watched: said, and never taken as "no
leak".  The kernel's count of events dropped is read each loop turn; a
loss (or a count that cannot be read) makes the watch compare its table
with the kernel's CLOSE_WAIT sockets, as it also does every minute
(counting.RECONCILE_EVERY) whatever happens."""

from __future__ import annotations

import logging

from resreap.engine.counting import Counting
from resreap.engine.decisions import Event, decision
from resreap.host import sockets
from resreap.host.sockets import SocketTable
from resreap.sources.events import EventSource

# "Lost events unknown" is said at most this often.
SAID_EVERY = 60.0
# The same number of unwatched namespaces is said again this often.
UNWATCHED_EVERY = 600.0


class Losses:
    def __init__(self, source: EventSource, counting: Counting, kernel: SocketTable) -> None:
        self.source = source
        self.sockets = counting
        self.kernel = kernel
        self.lost = 0  # events the kernel dropped, as last read
        self._unknown_said = float("-inf")
        self._unwatched_said = (0, float("-inf"))  # (how many, when)
        self._unsure = False  # lost events were unknown since the last reconcile

    def check(self, now: float) -> None:
        self._lost_events(now)
        self._unwatched(now)

    def _unwatched(self, now: float) -> None:
        """Namespaces left out by the caps (a user's thousands of `unshare
        -Urn`): said when their number changes, else every 10 minutes."""
        skipped = self.kernel.skipped
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

    def _lost_events(self, now: float) -> None:
        lost = self.source.lost()
        if lost is None:
            # Unknown (a kernel counter unreadable, a batch not taken): as
            # if events were lost, never as if none were; compared with the
            # kernel within a second, not on every turn.
            if now - self._unknown_said >= SAID_EVERY:
                self._unknown_said = now
                decision(Event.LOST_EVENTS, logging.WARNING, lost="unknown", total=self.lost,
                         note="the kernel's count could not be read; reconciling with the "
                              "kernel's CLOSE_WAIT sockets")
            self.sockets.reconcile_soon(now + 1.0)
            self._unsure = True
        elif lost > self.lost:
            decision(Event.LOST_EVENTS, logging.WARNING, lost=lost - self.lost, total=lost,
                     note="reconciling with the kernel's CLOSE_WAIT sockets")
            self.lost = lost
            self.sockets.reconcile(now, after_loss=True)
            return
        if now >= self.sockets.next_reconcile:
            self.sockets.reconcile(now, after_loss=bool(self.lost) or self._unsure)
            self._unsure = False
