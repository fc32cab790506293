"""The last resort of owner lookup: reading every process's /proc/PID/fd,
in a background thread, so that the event loop never waits for it.

With large fd tables (200 processes of 20,000 fds each) one complete scan
took 56 s inside the loop: longer than the systemd watchdog, and real leaks
waited minutes behind it.  Here the scan:

- runs in one background thread, one scan at a time; a caller gets what the
  cache knows now, and finds the scan's answer there on a later try;
- reads processes with few fds first (a leaker is found in milliseconds,
  fd hogs wait), and stops once every socket asked for has a holder;
- restarts with the union when new sockets are asked for mid-scan, so a
  new leak never waits behind a long scan for an old one;
- backs off, per socket, after a complete scan did not find it (a socket in
  flight in a unix socket has no holder at all): 5 s, 10 s, ... 10 min.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Protocol

from resreap.bounded import BoundedDict


class ScanIndex(Protocol):
    """What a scan needs of the fd index (owners.FdIndex, which owns the
    scanner: described here, not imported, so neither module imports the
    other back)."""

    def scan_order(self) -> list[int]: ...

    def scan_pids(self, pids: Iterable[int], wanted: set[int],
                  stop_when_found: bool = False) -> dict[int, set[int]]: ...

    def add_family(self, found: dict[int, set[int]], read: Iterable[int] = (),
                   budget: object = None) -> None: ...


log = logging.getLogger(__name__)

BACKOFF_FIRST = 5.0
BACKOFF_MAX = 600.0
CHECK_EVERY = 32  # processes read between looks at new requests ...
CHECK_SECONDS = 0.05  # ... or seconds, whichever comes first


class FullScanner:
    def __init__(self, index: ScanIndex, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds, for the backoff of sockets a scan
        did not find (the loop's clock)."""
        self._index = index
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        # inode -> (failed scans, next try); bounded: forgotten sockets' misses.
        self._misses: BoundedDict[int, tuple[int, float]] = BoundedDict(65536)
        self._thread: threading.Thread | None = None
        self._current: set[int] = set()  # what the running scan looks for
        self.scans = 0
        self.last_took = 0.0

    def request(self, inodes: Iterable[int]) -> None:
        """Look for the holders of these socket inodes in the background."""
        now = self._clock()
        with self._cond:
            for inode in inodes:
                miss = self._misses.get(inode)
                if miss is None or now >= miss[1]:
                    self._pending.add(inode)
            if not self._pending:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fdscan", daemon=True)
                self._thread.start()
            self._cond.notify()

    def searching(self, inode: int) -> bool:
        """Is a scan still to look for this socket, or looking now?  Its
        holders may yet be found: no reason to back off."""
        with self._cond:
            return inode in self._pending or inode in self._current

    def forget(self, inode: int) -> None:
        with self._cond:
            self._misses.pop(inode, None)
            self._pending.discard(inode)

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or scanning (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._scanning:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    _scanning = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                wanted, self._pending = self._pending, set()
                self._current = wanted  # grows as _more takes new requests in
                self._scanning = True
            try:
                self._scan(wanted)
            except Exception:  # noqa: BLE001 - the thread must outlive a bug, loudly
                log.exception("background /proc fd scan failed")
            finally:
                with self._cond:
                    self._scanning = False
                    self._current = set()
                    self._cond.notify_all()

    def _more(self, wanted: set[int]) -> bool:
        """Take newly asked-for sockets into this scan; True if there were."""
        with self._cond:
            fresh = self._pending - wanted
            self._pending.clear()
        wanted |= fresh
        return bool(fresh)

    def _scan(self, wanted: set[int]) -> None:
        began = time.monotonic()
        self.scans += 1
        index = self._index
        found: dict[int, set[int]] = {}
        done: set[int] = set()
        while True:
            restart = False
            order = index.scan_order()
            looked = time.monotonic()
            for i, pid in enumerate(order):
                # New requests are taken in every CHECK_EVERY processes, or
                # every CHECK_SECONDS: past the small ones come the fd hogs,
                # and 32 of 20,000 fds each were seconds a new leak waited.
                if i and (i % CHECK_EVERY == 0 or time.monotonic() - looked >= CHECK_SECONDS):
                    looked = time.monotonic()
                    if self._more(wanted):
                        restart = True
                        break
                if not wanted - found.keys():
                    break
                if pid in done:
                    continue
                # Every wanted socket it holds, found or not yet: each holder
                # met on the way counts (a forked pair).
                for inode, pids in index.scan_pids((pid,), wanted).items():
                    found.setdefault(inode, set()).update(pids)
                done.add(pid)
            if not restart:
                break
            # New sockets: the processes read so far hold none of the old
            # ones, but may hold the new ones.
            done.clear()
        # The first holder found may be the child: its family holds them too.
        index.add_family(found)
        self.last_took = time.monotonic() - began
        now = self._clock()
        with self._cond:
            for inode in found:
                self._misses.pop(inode, None)
            for inode in wanted - found.keys():
                failures = self._misses.get(inode, (0, 0.0))[0] + 1
                delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
                self._misses[inode] = (failures, now + delay)
        log.debug("background fd scan: %d of %d socket(s) found in %.3fs",
                  len(found), len(wanted), self.last_took)
