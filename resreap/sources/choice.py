"""The choice between the event sources: BPF where the kernel offers it,
else polling, with the reason.  Its own module: it imports both sources,
which import the interface (events.py), so no module imports back into
one that imports it."""

from __future__ import annotations

from typing import NamedTuple

from resreap.errors import BackendUnavailable, UsageError
from resreap.host.sockets import SocketTable
from resreap.sources.events import EventSource

BACKENDS = ("auto", "bpf", "proc")


class Selected(NamedTuple):
    source: EventSource
    fallback_reason: str | None  # why ``auto`` did not get BPF


def open_source(backend: str, table: SocketTable, *, latency: float,
                poll_interval: float | None = None, first_pass: bool = False,
                credit: bool = False, switchable: bool = False) -> Selected:
    """Build the source asked for; ``auto`` prefers BPF and falls back to
    polling with the reason."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "bpf"):
        try:
            from resreap.sources.bpf_events import BpfSource

            return Selected(BpfSource(table, latency=latency, first_pass=first_pass,
                                      credit=credit, switchable=switchable), None)
        except BackendUnavailable as exc:
            if backend == "bpf":
                raise BackendUnavailable(f"{exc}; --backend proc polls instead") from exc
            reason = str(exc)
    else:
        reason = None
    from resreap.sources.poll_events import PollSource

    return Selected(PollSource(table, interval=poll_interval or latency), reason)
