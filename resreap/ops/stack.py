"""The watch's stack, built in one place for `watch` and for `top` and
`rules`: the socket table, the event source chosen for the settings, the
owner resolver and the Watcher over the settings in force.  What differs is
said by the caller: the kernel's first pass (watch) or every transition
(top's rates), and a dry run (top and rules: WatchConfig.dry_run)."""

from __future__ import annotations

import sys
from typing import Callable, NamedTuple

from resreap.engine.config import Current, WatchConfig
from resreap.engine.owners import OwnerResolver
from resreap.engine.config import read_latency
from resreap.engine.watch import Watcher
from resreap.host import pods
from resreap.host.sockets import SocketTable
from resreap.ops.settings import WatchSettings
from resreap.sources.choice import Selected, open_source

# The loop shares the interpreter with the background fd scan (and each
# bounded /proc read's thread).  Each syscall of the loop gives up the GIL,
# and taking it back waited up to the switch interval (5 ms) while the scan
# ran: 256 socket lookups took 1.4 s, the loop's longest gap under a
# user's 10,000 processes (#31).  At 0.5 ms: 0.13 s.  Without contention
# the interval costs nothing.
SWITCH_INTERVAL = 0.0005


class Stack(NamedTuple):
    selected: Selected   # the event source, and why it fell back (if it did)
    table: SocketTable
    watcher: Watcher


def build(st: WatchSettings, config: WatchConfig, *, first_pass: bool, credit: bool = False,
          tick: Callable | None = None) -> Stack:
    """The caller has checked its privileges first (before the lock, the
    log, anything that would fail less clearly for a user).
    ``first_pass``: the kernel drops sockets that leave CLOSE_WAIT before
    user space took them (watch: churn costs nothing); without it every
    transition arrives.  ``credit`` (top's per-process rates): it counts
    them per process that closed them instead.  ``tick``: called once per
    loop turn."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    pods.read_from(st.runtime_dirs)
    earliest = config.ruleset().earliest
    table = SocketTable()
    # Events may wait in the ring this long; deadlines use kernel
    # timestamps, so this bounds work per wakeup, not timer accuracy.
    selected = open_source(st.backend, table, latency=read_latency(earliest),
                           poll_interval=st.poll_interval or max(0.05, earliest / 2),
                           first_pass=first_pass, credit=credit)
    watcher = Watcher(selected.source, OwnerResolver(table), Current(config), tick=tick)
    return Stack(selected, table, watcher)
