"""Per process, how fast its sockets enter CLOSE_WAIT and leave it: `top`'s
IN/s and OUT/s.  A healthy server closes what its peers close (in = out); a
leaking one does not (in > out, out near 0).

Only sockets that left are recorded here, each with its holders, when it
entered and when it left (or, counted by the kernel for the process that
closed them before they were seen one by one, as many in and out at the
second they were taken: ``credit``); those still in CLOSE_WAIT are counted from the
table when the rates are asked for, so nothing is recorded twice.  A
socket's holders are the ones the watcher found, else the process whose
own close() took it out of CLOSE_WAIT (the exit's ``by_owner`` pid: a
holder, never the peer); one that left unattributed is not counted.

Memory is bounded whatever the churn: whole-second buckets over the
window, and at most MAX_OWNERS processes (the rest are dropped, and
counted in ``dropped``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

from resreap.model import Owner, Transition

if TYPE_CHECKING:  # owners reads /proc; churn only counts
    from resreap.engine.owners import OwnerResolver

WINDOW = 10          # seconds the rates are taken over
MAX_OWNERS = 4096


class Churn:
    def __init__(self, started: float, window: int = WINDOW) -> None:
        """``started``: monotonic seconds (the events' clock) when the
        events began: until a whole window has passed, rates are taken over
        the time seen."""
        self.window = window
        self.started = started
        # owner -> {second: [entered, left]} (at most ``window`` seconds kept)
        self._seconds: dict[Owner, dict[int, list[int]]] = {}
        self.dropped = 0

    def exited(self, owners: tuple[Owner, ...] | None, entered: float, t: Transition,
               resolver: "OwnerResolver", closers: dict[int, Owner | None]) -> None:
        """A socket left CLOSE_WAIT: recorded against its holders found, else
        the process whose own close() ran the exit (``closers``: this
        batch's, each looked up once)."""
        if not owners:
            closer = resolver.closer(t, closers)
            owners = (closer,) if closer is not None else ()
        if owners:
            self.left(owners, entered, t.ts)

    def left(self, owners: Iterable[Owner], entered: float, left: float) -> None:
        """A socket held by ``owners`` left CLOSE_WAIT: one in at
        ``entered`` (if inside the window), one out at ``left``."""
        for owner in owners:
            seconds = self._of(owner, left)
            if seconds is None:
                continue
            if entered > left - self.window:
                seconds.setdefault(math.floor(entered), [0, 0])[0] += 1
            seconds.setdefault(math.floor(left), [0, 0])[1] += 1
            if len(seconds) > self.window + 2:
                self._trim(seconds, left)

    def credit(self, owner: Owner, n: int, at: float) -> None:
        """``n`` sockets ``owner`` closed in its own close() that entered
        and left CLOSE_WAIT before they were seen one by one (the kernel
        counted them: sources' ``closers``), by ``at``: in and out at once."""
        seconds = self._of(owner, at)
        if seconds is None:
            return
        bucket = seconds.setdefault(math.floor(at), [0, 0])
        bucket[0] += n
        bucket[1] += n
        if len(seconds) > self.window + 2:
            self._trim(seconds, at)

    def _of(self, owner: Owner, now: float) -> dict[int, list[int]] | None:
        """``owner``'s seconds, made if there is room (None: MAX_OWNERS
        are kept, and this one is dropped and counted)."""
        seconds = self._seconds.get(owner)
        if seconds is None:
            if len(self._seconds) >= MAX_OWNERS:
                self._prune(now)
                if len(self._seconds) >= MAX_OWNERS:
                    self.dropped += 1
                    return None
            seconds = self._seconds[owner] = {}
        return seconds

    def _trim(self, seconds: dict[int, list[int]], now: float) -> None:
        for second in [s for s in seconds if s <= now - self.window - 1]:
            del seconds[second]

    def _prune(self, now: float) -> None:
        for owner in list(self._seconds):
            seconds = self._seconds[owner]
            self._trim(seconds, now)
            if not seconds:
                del self._seconds[owner]

    def rates(self, now: float, still_in: dict[Owner, list[float]]) -> dict[Owner, tuple[float, float]]:
        """Per process, (in per second, out per second) over the window
        ending ``now``; ``still_in``: per holder, when each of its sockets
        still in CLOSE_WAIT entered.  Processes with neither are left out."""
        self._prune(now)
        # Whole seconds only: a bucket half inside the window would count
        # its whole second.
        since = math.ceil(now - max(1.0, min(float(self.window), now - self.started)))
        span = max(1.0, now - since)
        counts: dict[Owner, list[int]] = {}
        for owner, seconds in self._seconds.items():
            got = [0, 0]
            for second, (ins, outs) in seconds.items():
                if second >= since:
                    got[0] += ins
                    got[1] += outs
            if got != [0, 0]:
                counts[owner] = got
        for owner, entered in still_in.items():
            fresh = sum(1 for ts in entered if ts >= since)
            if fresh:
                counts.setdefault(owner, [0, 0])[0] += fresh
        return {o: (ins / span, outs / span) for o, (ins, outs) in counts.items()}

    def __len__(self) -> int:
        return len(self._seconds)
