"""One interface over the event sources, and the choice between them.

Everything downstream (timers, owners, policy, kill engine, output) sees
only ``Transition`` batches and cannot tell which source produced them.
"""

from __future__ import annotations

import abc
import logging
from typing import NamedTuple

from resreap.errors import BackendUnavailable, UsageError
from resreap.model import Kind, Transition
from resreap.host.sockets import SocketTable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bpf", "proc")


class EventSource(abc.ABC):
    """Streams CLOSE_WAIT transitions.

    ``start`` attaches and then reports the sockets already in CLOSE_WAIT
    (they produce no event of their own).  ``read`` waits at most
    ``timeout`` seconds and returns everything that arrived, oldest first.
    ``latency`` is the longest an event may wait before ``read`` returns it.
    ``first_pass``: the kernel drops sockets that leave CLOSE_WAIT before
    ``read`` takes them (BPF, for watch).  ``loader``: how the BPF program
    was loaded (core: the prebuilt object; bcc: compiled at start, with
    ``loader_why``); empty for polling.
    """

    name: str = ""
    latency: float = 0.0
    first_pass: bool = False
    loader: str = ""
    loader_why: str | None = None

    @abc.abstractmethod
    def start(self) -> list[Transition]: ...

    @abc.abstractmethod
    def read(self, timeout: float) -> list[Transition]: ...

    def lost(self) -> int | None:
        """Events dropped before they reached us, since start; None when
        that cannot be known right now (a kernel counter unreadable)."""
        return 0

    def follow(self, latency: float) -> None:
        """A reload's read latency (it follows the grace).  A poller keeps
        the interval it was given (--poll-interval): by default, nothing."""

    def close(self) -> None:
        pass


def seed_transitions(table: SocketTable, now: float) -> list[Transition]:
    """The sockets in CLOSE_WAIT right now, in every network namespace."""
    return [Transition(Kind.EXISTING, ns.diag.sock, now, kid=ns.diag.kid, netns=ns.netns)
            for ns in table.close_wait()]


class Selected(NamedTuple):
    source: EventSource
    fallback_reason: str | None  # why ``auto`` did not get BPF


def open_source(backend: str, table: SocketTable, *, latency: float,
                poll_interval: float | None = None, first_pass: bool = False) -> Selected:
    """Build the source asked for; ``auto`` prefers BPF and falls back to
    polling with the reason."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "bpf"):
        try:
            from resreap.sources.bpf_events import BpfSource

            return Selected(BpfSource(table, latency=latency, first_pass=first_pass), None)
        except BackendUnavailable as exc:
            if backend == "bpf":
                raise BackendUnavailable(f"{exc}; --backend proc polls instead") from exc
            reason = str(exc)
    else:
        reason = None
    from resreap.sources.poll_events import PollSource

    return Selected(PollSource(table, interval=poll_interval or latency), reason)
