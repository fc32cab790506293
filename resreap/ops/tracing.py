"""The `trace` command around the engine's Tracer: open the source, stream
the lines, and at the end the per-process summary.  Lines are handed to
``out`` and notes to ``note`` (the CLI's printers): nothing here prints."""

from __future__ import annotations

import functools
import signal
from typing import Callable

from resreap import tunables
from resreap.engine.evidence import Rules
from resreap.engine.owners import OwnerResolver, check_privileges
from resreap.engine.summary import Summarizer
from resreap.engine.trace import Tracer
from resreap.host import pods
from resreap.host.sockets import SocketTable
from resreap.ops import formatting
from resreap.ops.settings import TraceSettings
from resreap.sources.choice import open_source

# trace shows each socket once: it may wait this long for a background scan
# to name its owner.
TRACE_SCAN_WAIT = 0.5


class _Stop:
    """INT or TERM: the first one asks the loop to end after showing what
    the kernel has queued already (nothing that happened before Ctrl-C is
    dropped unsaid); a second one ends it at once."""

    def __init__(self) -> None:
        self.asked = False
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, _signo, _frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True


def run(st: TraceSettings, out: Callable[[str], None], note: Callable[[str], None]) -> None:
    """Trace until INT or TERM (or ``out`` raising KeyboardInterrupt: the
    reader went away), then hand over the summary.  Raises ResreapError
    for what stops it from starting."""
    stop = _Stop()
    tunables.get()  # a bad knob is a one-line error now, not mid-start
    tracer = None
    try:
        check_privileges()
        pods.read_from(st.runtime_dirs)
        table = SocketTable()
        # With --min-age, the kernel's first pass: a socket that leaves
        # CLOSE_WAIT before the next take (a tenth of a second) never
        # reaches user space; only the lines of those that stay are shown.
        # With --summary, the first pass with credit, off until the rate
        # calls for it (engine/summary).
        summary = bool(st.summary)
        selected = open_source(st.backend, table, latency=0.1,
                               first_pass=st.min_age is not None or summary, credit=summary,
                               switchable=summary)
        if selected.fallback_reason:
            note(f"resreap: BPF unavailable ({selected.fallback_reason}); "
                 f"polling every {selected.source.latency:g}s instead")
        tracer = Tracer(selected.source, OwnerResolver(table, scan_wait=TRACE_SCAN_WAIT),
                        st.filters, Rules(grace=st.grace), min_age=st.min_age)
        existing = tracer.start()
        above = (f" Above {st.summary:g} transitions/s, one line per process per second "
                 "(--summary)." if summary else "")
        note(f"Tracing TCP CLOSE_WAIT transitions ({selected.source.name} backend, "
             f"{len(table.namespaces)} network namespace(s)).{above} Ctrl-C to end.")
        if table.skipped:
            note(f"resreap: warning: {table.skipped} network namespace(s) past the caps are "
                 "not traced (those made in other user namespaces go first)")
        emit = formatting.trace_json if st.json_out else formatting.trace_line
        if summary:
            emit = functools.partial(formatting.any_json if st.json_out else formatting.any_line,
                                     emit)
            summarizer = Summarizer(tracer, st.summary)
            shown, last = summarizer.pass_through, summarizer.flush
        else:
            shown, last = _every, list
        if not st.json_out:
            out(formatting.HEADER)
        _emit(existing, emit, out)
        while not stop.asked:
            _emit(shown(tracer.step(selected.source.latency)), emit, out)
        _emit(shown(tracer.step(0)) + last(), emit, out)  # what was queued before the stop
    except KeyboardInterrupt:
        pass
    if tracer is not None:
        _summary(tracer, st.json_out, out, note)


def _every(records):
    return records


def _emit(records, emit, out) -> None:
    """A step's lines in one write (a write and a flush per line were a
    tenth of trace's cost under churn)."""
    if records:
        out("\n".join(emit(rec) for rec in records))


def _summary(tracer: Tracer, json_out: bool, out: Callable[[str], None],
             note: Callable[[str], None]) -> None:
    lost = tracer.source.lost()
    tracer.source.close()
    rows = tracer.summary()
    try:
        if json_out:
            out(formatting.summary_json(rows))
        else:
            note("")
            for line in formatting.summary_lines(rows):
                note(line)
        if lost is None:
            note("resreap: warning: lost events unknown (the kernel's counter could not be read)")
        elif lost:
            note(f"resreap: warning: {lost} event(s) were lost in the kernel")
    except KeyboardInterrupt:
        pass
