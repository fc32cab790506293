"""One interface over the event sources (sources/choice.py picks one).

Everything downstream (timers, owners, policy, kill engine, output) sees
only ``Transition`` batches and cannot tell which source produced them.
"""

from __future__ import annotations

import abc
import logging

from resreap.model import Kind, Transition
from resreap.host.sockets import SocketTable

log = logging.getLogger(__name__)


class EventSource(abc.ABC):
    """Streams CLOSE_WAIT transitions.

    ``start`` attaches and then reports the sockets already in CLOSE_WAIT
    (they produce no event of their own).  ``read`` waits at most
    ``timeout`` seconds and returns everything that arrived, oldest first.
    ``latency`` is the longest an event may wait before ``read`` returns it.
    ``first_pass``: the kernel drops sockets that leave CLOSE_WAIT before
    ``read`` takes them (BPF, for watch).  ``credits``: it counts them
    instead, per process that closed them (BPF, for top): ``closers``
    hands those counts over.  ``loader``: how the BPF program
    was loaded (core: the prebuilt object; bcc: compiled at start, with
    ``loader_why``); empty for polling.
    """

    name: str = ""
    latency: float = 0.0
    first_pass: bool = False
    credits: bool = False
    switchable: bool = False  # set_first_pass can turn the first pass on and off
    loader: str = ""
    loader_why: str | None = None

    @abc.abstractmethod
    def start(self) -> list[Transition]: ...

    @abc.abstractmethod
    def read(self, timeout: float) -> list[Transition]: ...

    def set_first_pass(self, on: bool) -> bool:
        """Turn the kernel's first pass on or off (a ``switchable``
        source); False: this source cannot."""
        return False

    def closers(self) -> dict[int, int]:
        """Per process (pid), the sockets it closed that left CLOSE_WAIT
        before ``read`` took them, since the last call (with ``credits``)."""
        return {}

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
