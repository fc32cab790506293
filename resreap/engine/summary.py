"""trace's rate-adaptive summary (`--summary RATE`): above RATE transitions
a second (a person reads a few lines a second, not thousands), one SUMMARY
line per process per second takes the place of the ENTER and EXIT lines;
STAYED lines, the leaks, stay.  Below half the rate for OFF_AFTER seconds,
every line again.

On BPF the kernel's first pass is on meanwhile, with credit: a socket that
leaves CLOSE_WAIT before it is taken never reaches user space and is
counted for the process whose own close() took it out (sources'
``closers``).  A SUMMARY line's counts are every socket of that process in
that second, counted or seen one by one; nothing twice.  Elsewhere (the
polling backend) every transition still arrives and is only summed."""

from __future__ import annotations

from typing import NamedTuple

from resreap.engine.trace import TraceKind, TraceRecord, Tracer
from resreap.model import Owner

# Seconds under half the rate before every line comes back (a burst's
# pauses must not flip the output back and forth).
OFF_AFTER = 3


class Counted(NamedTuple):
    """One SUMMARY line: a process's sockets into and out of CLOSE_WAIT in
    the ``seconds`` before ``ts`` (unix seconds)."""

    ts: float
    owner: Owner
    entered: int
    left: int
    seconds: float


class Switched(NamedTuple):
    """The output changed: SUMMARY lines from now on (``on``), or every line."""

    ts: float
    on: bool
    rate: float      # transitions a second over the second that decided it
    threshold: float


class Summarizer:
    def __init__(self, tracer: Tracer, threshold: float) -> None:
        """The tracer's clock (its events') and wall-clock offset are its
        lines'."""
        self.tracer = tracer
        self.threshold = threshold
        self.on = False
        self._clock = tracer.clock
        self._wall = tracer.wall_offset
        self._began = self._clock()
        self._seen = 0
        self._per: dict[Owner, list[int]] = {}
        # Of those, the kernel's counts: sockets that have no line of their
        # own (taken just after a switch back, still shown as SUMMARY).
        self._credited: dict[Owner, int] = {}
        self._quiet = 0

    def pass_through(self, records: list[TraceRecord]) -> list:
        """What to print of a step's ``records``: all of them, or in
        summary mode their STAYED and EXISTING lines; with, once a second,
        the SUMMARY lines and any switch."""
        out: list = []
        for rec in records:
            if rec.kind is TraceKind.ENTER or rec.kind is TraceKind.EXIT:
                self._seen += 1
                if rec.owners:
                    counts = self._per.setdefault(rec.owners[0], [0, 0])
                    counts[rec.kind is TraceKind.EXIT] += 1
                if self.on:
                    continue
            out.append(rec)
        self._credit()
        now = self._clock()
        if now - self._began >= 1.0:
            out += self._second(now)
        return out

    def _credit(self) -> None:
        source = self.tracer.source
        if not source.credits:
            return
        closers = source.closers()
        if not closers:
            return
        for owner in self.tracer.resolver.owners(closers):
            if not self.tracer.wanted((owner,)):
                continue
            n = closers[owner.pid]
            self.tracer.credit(owner, n)
            self._credited[owner] = self._credited.get(owner, 0) + n
            counts = self._per.setdefault(owner, [0, 0])
            counts[0] += n
            counts[1] += n
            self._seen += 2 * n

    def flush(self) -> list:
        """At the end: the last, partial second's SUMMARY lines."""
        self._credit()
        now = self._clock()
        rows = self._rows(now + self._wall, now - self._began)
        self._began, self._seen, self._per, self._credited = now, 0, {}, {}
        return rows

    def _rows(self, ts: float, elapsed: float) -> list[Counted]:
        """The SUMMARY lines of the counts so far: every socket in summary
        mode, else only those the kernel counted (no line of their own)."""
        counts = self._per if self.on else {o: [n, n] for o, n in self._credited.items()}
        return [Counted(ts, owner, ins, outs, round(elapsed, 3))
                for owner, (ins, outs) in sorted(counts.items(),
                                                 key=lambda kv: (-kv[1][0], kv[0].pid))]

    def _second(self, now: float) -> list:
        elapsed = now - self._began
        rate = self._seen / elapsed
        ts = now + self._wall
        out: list = self._rows(ts, elapsed)
        if self.on:
            self._quiet = self._quiet + 1 if rate < self.threshold / 2 else 0
            if self._quiet >= OFF_AFTER:
                self._switch(False)
                out.append(Switched(ts, False, round(rate, 1), self.threshold))
        elif rate > self.threshold:
            self._switch(True)
            out.append(Switched(ts, True, round(rate, 1), self.threshold))
        self._began, self._seen, self._per, self._credited = now, 0, {}, {}
        return out

    def _switch(self, on: bool) -> None:
        self.on, self._quiet = on, 0
        # The kernel's first pass follows (BPF): off again, its pending
        # sockets are taken at the next read, their exits come as lines.
        self.tracer.source.set_first_pass(on)
