"""When does a leaking process run out of file descriptors: from how fast
its counting sockets grow (the evidence policy's, never its raw fd count:
a server that fills its table with healthy connections grows no counting
socket and gets no forecast), its fds in use now and its soft
RLIMIT_NOFILE.

The estimator is the secant of the count's history: (last - first) /
(time between them), over the samples of the last WINDOW seconds (at most
SAMPLES of them, at least STEP apart, so a fast leak's window is about
SAMPLES * STEP seconds and a slow one's WINDOW).  The count is sampled
once per loop turn for the holders whose count changed (nothing per
event, nothing for a holder that does not change).  Why the secant: a
leak that comes in bursts (ten sockets every few seconds) rises in steps;
between the first and the last step the secant is exact, where a rate
over "the last N seconds" swings by a whole burst depending on where the
window ends.  Net, not gross: sockets that leave (closed late, or the
process was fixed) lower the count.  A forecast needs the count still
growing: MIN_GROWTH sockets over the window, a quarter of that in its
later half (a process that closes what it leaks after a while rises
once, then stays flat: no forecast once the rise is in the earlier
half), and a change within three of its usual gaps (STALE_MIN at least:
a leak that stopped).

fds and the limit are read at most every FD_FRESH seconds per holder, and
only where a forecast is asked for (a reap line, `top`'s rows, the
metrics' top holders, or a rule with `act_before`)."""

from __future__ import annotations

import collections
import heapq
from typing import TYPE_CHECKING, NamedTuple

from resreap.errors import AccessDenied, ProcessGone
from resreap.host.procinfo import Proc
from resreap.model import Owner

if TYPE_CHECKING:
    from resreap.engine.config import Current
    from resreap.engine.policy import Counter

# Seconds of history at most; samples kept per holder; their spacing.
WINDOW = 300.0
SAMPLES = 24
STEP = 2.0
# A forecast needs this many samples spanning at least this long: a leak
# is a rate, not a burst (sockets found at start all count at once).
MIN_SAMPLES = 3
MIN_SPAN = 2 * STEP
MIN_GROWTH = 3  # ... and a net growth of this many sockets (not one up, one down)
# No change for max(STALE_MIN, STALE_GAPS times the mean gap between
# samples): the leak stopped, no forecast.
STALE_MIN = 10.0
STALE_GAPS = 3
# A holder's fds in use and soft fd limit are read again after this long
# (a limit raised at run time, prlimit, counts within it).
FD_FRESH = 5.0


class Forecast(NamedTuple):
    """A holder heading for EMFILE."""

    rate: float      # counting sockets gained per second, net
    fds: int         # fds in use when read
    fd_limit: int    # its soft RLIMIT_NOFILE
    at: float        # monotonic time its fds run out, at this rate

    def seconds(self, now: float) -> float:
        """Seconds until its fds run out (0: out already)."""
        return max(0.0, self.at - now)


class _History:
    """A holder's count: samples at least STEP apart (the window), and
    its latest change."""

    __slots__ = ("samples", "last")

    def __init__(self, now: float, count: int) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque(
            [(now, count)], maxlen=SAMPLES)
        self.last = (now, count)


class _Fds(NamedTuple):
    read_at: float
    fds: int | None       # None: unreadable
    fd_limit: int | None  # None: unlimited or unreadable


class Forecaster:
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        # Per holder with counting sockets: (time, count) samples; gone with
        # its last counting socket, so bounded by the counter's holders.
        self._history: dict[Owner, _History] = {}
        self._fds: dict[Owner, _Fds] = {}

    def __len__(self) -> int:
        return len(self._history)

    def sample(self, owner: Owner, count: int, now: float) -> None:
        """``owner`` holds ``count`` counting sockets at ``now`` (0: none
        left, its history goes)."""
        if count <= 0:
            self._history.pop(owner, None)
            self._fds.pop(owner, None)
            return
        history = self._history.get(owner)
        if history is None:
            self._history[owner] = _History(now, count)
            return
        if history.last[1] == count:
            return
        history.last = (now, count)
        if now - history.samples[-1][0] >= STEP:
            history.samples.append((now, count))

    def rate(self, owner: Owner, now: float) -> float | None:
        """Counting sockets gained per second, net, over the window; None:
        not growing (too little history, no net growth, or stopped)."""
        known = self._history.get(owner)
        if known is None:
            return None
        samples = known.samples
        while len(samples) > MIN_SAMPLES and samples[0][0] < now - WINDOW:
            samples.popleft()
        if len(samples) + (known.last != samples[-1]) < MIN_SAMPLES:
            return None
        (t0, n0), (t1, n1) = samples[0], known.last
        span, growth = t1 - t0, n1 - n0
        if span < MIN_SPAN or growth < MIN_GROWTH:
            return None
        if now - t1 > max(STALE_MIN, STALE_GAPS * span / (len(samples) - 1 or 1)):
            return None
        mid = (t0 + now) / 2
        at_mid = next(n for t, n in reversed(samples) if t <= mid)
        if (n1 - at_mid) * 4 < growth:
            return None  # it rose, then stopped rising: sockets leave as they come
        return growth / span

    def of(self, owner: Owner, now: float) -> Forecast | None:
        """When ``owner`` runs out of fds, if its leak keeps its pace; None:
        not growing, no fd limit, or unreadable."""
        rate = self.rate(owner, now)
        if rate is None:
            return None
        fds = self._read(owner, now)
        if fds.fds is None or fds.fd_limit is None:
            return None
        free = max(0, fds.fd_limit - fds.fds)
        return Forecast(rate, fds.fds, fds.fd_limit, fds.read_at + free / rate)

    def follow(self, counts: dict[Owner, set], changed: set[Owner], now: float) -> list[Owner]:
        """Sample the holders whose count changed (the counter's
        ``changed``, emptied), from ``counts`` (its ``by_owner``): once per
        loop turn, whatever the events.  Returns them (those that hold
        none any more have no history, so no forecast)."""
        out = list(changed)
        changed.clear()
        for owner in out:
            self.sample(owner, len(counts.get(owner, ())), now)
        return out

    def soonest(self, n: int, now: float) -> list[tuple[float, Owner]]:
        """The ``n`` holders whose fds run out first: (seconds, owner)."""
        found = [(f.seconds(now), owner) for owner in list(self._history)
                 if (f := self.of(owner, now)) is not None]
        return heapq.nsmallest(n, found, key=lambda c: c[0])

    def seconds(self, owner: Owner, now: float) -> float | None:
        forecast = self.of(owner, now)
        return forecast.seconds(now) if forecast is not None else None

    def _read(self, owner: Owner, now: float) -> _Fds:
        known = self._fds.get(owner)
        if known is not None and now - known.read_at < FD_FRESH:
            return known
        try:
            known = _Fds(now, self.proc.fd_count(owner.pid), self.proc.fd_soft_limit(owner.pid))
        except (ProcessGone, AccessDenied):
            known = _Fds(now, None, None)
        self._fds[owner] = known
        return known


class Alarms:
    """When each holder's forecast reaches `--act-before`: the watch looks
    at it again then (as it does at a socket's deadline), so a reap on a
    forecast is on time without a look per turn.  One time per holder,
    replaced as its forecast changes; a heap with stale entries skipped."""

    def __init__(self) -> None:
        self._at: dict[Owner, float] = {}
        self._heap: list[tuple[float, int, Owner]] = []
        self._seq = 0  # ties: owners are not ordered

    def __len__(self) -> int:
        return len(self._at)

    def set(self, owner: Owner, when: float | None) -> None:
        """Look at ``owner`` at ``when`` (None: no alarm)."""
        if when is None:
            self._at.pop(owner, None)
            return
        if self._at.get(owner) == when:
            return
        self._at[owner] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, owner))
        if len(self._heap) > 2 * len(self._at) + 64:
            self._heap = [(t, i, o) for t, i, o in self._heap if self._at.get(o) == t]
            heapq.heapify(self._heap)

    def next(self) -> float | None:
        while self._heap and self._at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Owner]:
        out = []
        while (when := self.next()) is not None and when <= now:
            owner = heapq.heappop(self._heap)[2]
            del self._at[owner]
            out.append(owner)
        return out


class Foresight:
    """The watch's side of the forecast: each turn, the holders whose
    count changed are sampled; where a rule acts on forecasts
    (--act-before), each one's alarm is set at its forecast less the
    longest --act-before, and those whose alarm rang are looked at."""

    def __init__(self, current: "Current", counter: "Counter", proc: Proc) -> None:
        self.current = current
        self.counter = counter
        self.forecasts = Forecaster(proc)
        self.alarms = Alarms()

    def turn(self, now: float) -> list[Owner]:
        """Once per loop turn: the owners whose alarm rang."""
        changed = self.forecasts.follow(self.counter.by_owner, self.counter.changed, now)
        act_before = self.current.rules.act_before
        if act_before is None:
            return []
        for owner in changed:
            # One that holds no counting socket any more has no forecast, so
            # no alarm either (a month of leaking processes that exited must
            # not pile up).
            forecast = self.forecasts.of(owner, now)
            self.alarms.set(owner, forecast.at - act_before if forecast is not None else None)
        return self.alarms.due(now)

    def exhausted_in(self, owner: Owner, now: float) -> float | None:
        """Its forecast where a rule acts on one (else None, nothing read)."""
        if self.current.rules.act_before is None:
            return None
        return self.forecasts.seconds(owner, now)

    def reconfigured(self) -> None:
        """New rules: alarms are set again at each holder's next change."""
        self.alarms = Alarms()
