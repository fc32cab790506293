"""Events lost, namespaces not watched, resreap out of fds, orphans: said,
and never taken as "no leak".  The kernel's count of events dropped is
read each loop turn; a loss (or a count that cannot be read) makes the
watch compare its table with the kernel's CLOSE_WAIT sockets, as it also
does every minute (RECONCILE_EVERY) whatever happens."""

from __future__ import annotations

import logging

from resreap.engine.counting import Counting
from resreap.engine.decisions import Event, decision
from resreap.model import Kind, Transition
from resreap.host import sockets
from resreap.host.sockets import SocketTable
from resreap.sources.events import EventSource

# Without lost events, the kernel's CLOSE_WAIT set is still compared with
# ours this often, so that no leak can hide behind a missed event.
RECONCILE_EVERY = 60.0
# "Lost events unknown" and "out of fds" are said at most this often.
SAID_EVERY = 60.0
# The `orphans` line is repeated at most this often.
ORPHANS_EVERY = 3600.0
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
        self.next_reconcile = 0.0
        self._orphans_said = float("-inf")
        self._out_of_fds_said = float("-inf")

    def start(self, now: float) -> None:
        self.next_reconcile = now + RECONCILE_EVERY

    def reconcile_soon(self, when: float) -> None:
        self.next_reconcile = min(self.next_reconcile, when)

    def check(self, now: float) -> None:
        self._lost_events(now)
        self._unwatched(now)
        if self.sockets.orphaned:
            self.sockets.orphaned = False
            self._orphans(now)

    def out_of_fds(self, exc: Exception, now: float) -> None:
        """resreap hit its own fd limit: loud, and never taken as "the
        process is gone" (what could not be read decides nothing).  The
        kernel's table is compared with ours again soon, so no socket of
        this turn is lost for good."""
        if now - self._out_of_fds_said >= SAID_EVERY:
            self._out_of_fds_said = now
            decision(Event.OUT_OF_FDS, logging.ERROR, error=str(exc),
                     note="this turn's sockets are looked at again shortly")
        self.reconcile_soon(now + 1.0)

    def _orphans(self, now: float) -> None:
        """Sockets that count and that no process holds: say once (an hour)
        that they exist, and why nobody can be reaped for them."""
        if now - self._orphans_said < ORPHANS_EVERY:
            return
        self._orphans_said = now
        orphans = sum(1 for e in self.sockets.table if e.counted and not e.owners)
        denied = len(self.sockets.resolver.index.denied)
        decision(Event.ORPHANS, logging.WARNING, sockets=orphans, unreadable_processes=denied,
                 note="in CLOSE_WAIT and counting, but held by no process found: in flight in "
                      "a unix socket, held by a dying process"
                      + (", or by a process whose fds cannot be read" if denied else "")
                      + "; nobody can be reaped for them; looked for again less and less often")

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
            self.reconcile_soon(now + 1.0)
            self._unsure = True
        elif lost > self.lost:
            decision(Event.LOST_EVENTS, logging.WARNING, lost=lost - self.lost, total=lost,
                     note="reconciling with the kernel's CLOSE_WAIT sockets")
            self.lost = lost
            self.reconcile(now, after_loss=True)
            return
        if now >= self.next_reconcile:
            self.reconcile(now, after_loss=bool(self.lost) or self._unsure)
            self._unsure = False

    def reconcile(self, now: float, after_loss: bool = False) -> None:
        """Make the table match the kernel: a lost entry must not hide a
        leak, a lost exit must not cause a kill."""
        self.next_reconcile = now + RECONCILE_EVERY
        kernel = self.kernel.close_wait()
        filters = self.sockets.current.filters
        if filters.ignore:
            kernel = [ns for ns in kernel if not filters.ignores(ns.diag.sock)]
        present = {(ns.netns, ns.diag.kid) for ns in kernel}
        tuples = {ns.diag.sock for ns in kernel}
        gone = [e for e in self.sockets.table if ((e.netns, e.kid) not in present if e.bound
                                          else e.sock not in tuples)]
        for entry in gone:
            self.sockets.drop(entry)
        claimed = {(e.netns, e.kid) for e in self.sockets.table if e.bound}
        unbound = {e.sock for e in self.sockets.table if not e.bound}
        added = [Transition(Kind.ENTER, ns.diag.sock, now, kid=ns.diag.kid, netns=ns.netns)
                 for ns in kernel
                 if (ns.netns, ns.diag.kid) not in claimed and ns.diag.sock not in unbound]
        self.sockets.apply(added)
        if gone or added:
            decision(Event.RECONCILE, logging.WARNING if after_loss else logging.INFO,
                     added=len(added), removed=len(gone))

