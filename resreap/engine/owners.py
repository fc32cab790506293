"""Who holds a socket: found from the socket itself, never from the event.

The pid seen at the tracepoint is whoever was on the CPU (the transition to
CLOSE_WAIT runs in softirq: pid 0, or over loopback the *peer*), so owners
come from the socket's inode and the /proc/PID/fd links that point at it.

A full /proc/*/fd scan costs about 0.8 s at 100k connections (a minute with
huge fd tables), so answers are cached (inode -> {pid: fd}) and a cached
answer is verified with one readlink.  A miss first scans the likely
holders (the owners of the listener on the same port, or of earlier sockets
to the same peer), and only then every process, in the background
(fdscan.py).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Callable, Iterable, NamedTuple, Protocol

from resreap.host.procinfo import HOST, Proc
from resreap.errors import AccessDenied, NotRoot, ProcessGone
from resreap.engine.fdscan import FullScanner
from resreap.model import TCP_CLOSE_WAIT, Kind, Owner, SockId, Transition
from resreap.host.sockdiag import DiagSock
from resreap.host.sockets import NsSock

log = logging.getLogger(__name__)

class KernelSockets(Protocol):
    """What owner lookups need of the kernel's socket tables: SocketTable,
    or a test's fake (tests/unit/fakehost.FakeKernel declares it, and a
    unit test compares their signatures)."""

    proc: Proc
    kind: str               # which reader serves, for people: sock_diag, procfs
    through_procfs: bool    # some namespace is read from /proc/PID/net/tcp
    namespaces: list[int]   # the watched network namespaces
    skipped: int            # namespaces in use but not watched (the caps)

    def close_wait(self, info: bool = True) -> list[NsSock]: ...

    def listeners(self) -> list[NsSock]: ...

    def lookup(self, sock: SockId, retry_new_namespaces: bool = True) -> list[NsSock]: ...

    def lookup_in(self, ino: int, sock: SockId) -> NsSock | None: ...


def check_privileges() -> None:
    """Owners come from every process's /proc/PID/fd, which only root (or
    CAP_SYS_PTRACE with CAP_DAC_READ_SEARCH) may read."""
    if os.geteuid() != 0:
        raise NotRoot("resreap must run as root: it reads every process's /proc/PID/fd "
                      "to find who holds a socket (try: sudo resreap ...)")


# The fds the event loop may read inline for one lookup (hints and their
# family, by fd table size, smallest first); about 20 ms of readlinks.
INLINE_FDS = 16384


class Budget:
    """A number of fds to read inline; processes are taken smallest fd
    table first while they fit."""

    def __init__(self, fds: int) -> None:
        self.left = fds
        self.left_out = 0

    def take(self, pids: Iterable[int], proc: Proc) -> list[int]:
        out = []
        for size, pid in sorted((proc.fd_table_size(pid), pid) for pid in pids):
            if size > self.left:
                self.left_out += 1
                continue
            self.left -= size
            out.append(pid)
        return out


class FdIndex:
    """inode -> {pid: fd} for socket fds, from /proc/PID/fd.  The event loop
    verifies cached answers and scans likely holders inline; a scan of every
    process runs in the background (fdscan.py).  The cache is shared with
    that thread, hence the lock."""

    # A safety net: callers forget sockets as they leave; this bounds what a
    # missed exit could leave behind.
    MAX_CACHED = 262144

    def __init__(self, proc: Proc = HOST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds, for the background scan's backoff."""
        self.proc = proc
        self._cache: dict[int, dict[int, int]] = {}
        self._lock = threading.Lock()
        self.scanner = FullScanner(self, clock)
        # Processes whose fds could not be read: their sockets have no owner
        # here.  Bounded; reported once by whoever reads it.
        self.denied: set[int] = set()
        # Processes whose fd tables did not fit the inline budget (left to
        # the background scan), so far.
        self.inline_deferred = 0

    @property
    def full_scans(self) -> int:
        return self.scanner.scans

    @property
    def cached(self) -> int:
        """Sockets whose holders are cached (bounded: see forget)."""
        return len(self._cache)

    def forget(self, inode: int) -> None:
        with self._lock:
            self._cache.pop(inode, None)
        self.scanner.forget(inode)

    def _remember(self, inode: int, pid: int, fd: int) -> None:
        with self._lock:
            if len(self._cache) >= self.MAX_CACHED and inode not in self._cache:
                self._cache.clear()
            self._cache.setdefault(inode, {})[pid] = fd

    def _verify(self, inode: int) -> set[int]:
        with self._lock:
            held = dict(self._cache.get(inode) or {})
        if not held:
            return set()
        stale = [pid for pid, fd in held.items()
                 if not self.proc.holds_socket(pid, fd, inode)]
        if stale:
            with self._lock:
                cached = self._cache.get(inode)
                if cached is not None:
                    for pid in stale:
                        cached.pop(pid, None)
                    if not cached:
                        del self._cache[inode]
        return set(held) - set(stale)

    def holds(self, pid: int, inode: int) -> bool:
        """Does ``pid`` hold ``inode`` right now?  One readlink when cached."""
        with self._lock:
            fd = self._cache.get(inode, {}).get(pid)
        if fd is not None and self.proc.holds_socket(pid, fd, inode):
            return True
        found = self.scan_pids((pid,), {inode})
        return pid in found.get(inode, ())

    def scan_pids(self, pids: Iterable[int], wanted: set[int],
                  stop_when_found: bool = False) -> dict[int, set[int]]:
        """Read these processes' fds for the wanted inodes (and cache them)."""
        found: dict[int, set[int]] = {}
        for pid in pids:
            if stop_when_found and len(found) == len(wanted):
                break
            try:
                for fd, inode in self.proc.socket_fds(pid):
                    if inode in wanted:
                        self._remember(inode, pid, fd)
                        found.setdefault(inode, set()).add(pid)
            except AccessDenied:
                if len(self.denied) < 4096:
                    self.denied.add(pid)
        return found

    def children(self, pids: Iterable[int]) -> set[int]:
        """Direct children of ``pids`` (prefork servers hand accepted
        sockets to their workers).  Empty where the kernel lacks
        CONFIG_PROC_CHILDREN: the full scan still finds them."""
        out: set[int] = set()
        for pid in pids:
            out |= self.proc.children(pid)
        return out

    def family(self, found: dict[int, set[int]], depth: int = 8) -> set[int]:
        """Parents and every descendant of the holders found (not
        init/kthreadd): fork shares sockets down a whole tree (socat's child
        runs sh, which runs the command: three holders)."""
        pids = {p for holders in found.values() for p in holders}
        near: set[int] = set()
        for pid in pids:
            try:
                near.add(self.proc.read_stat(pid)[1])
            except (ProcessGone, AccessDenied):
                continue
        level = pids
        for _ in range(depth):
            level = self.children(level) - pids - near
            if not level:
                break
            near |= level
        return near - pids - {0, 1, 2}

    def add_family(self, found: dict[int, set[int]], read: Iterable[int] = (),
                   budget: "Budget | None" = None) -> None:
        """Fork shares a socket down a tree (socat's child, its sh, the
        command): add every holder among the found holders' family, in
        place.  ``read``: processes already read, not read again.
        ``budget``: read only the family members whose fd tables fit it
        (the event loop); the rest are left to the background scan."""
        if found:
            family = self.family(found) - set(read)
            if budget is not None:
                family = budget.take(family, self.proc)
            for inode, pids in self.scan_pids(family, set(found)).items():
                found[inode] |= pids

    def all_pids(self) -> list[int]:
        return self.proc.pids()

    def scan_order(self) -> list[int]:
        """Every process, fewest fds first (fd hogs cannot delay finding a
        leaker), the newest first among equals (a leaking server was often
        just restarted)."""
        return sorted(self.all_pids(), key=lambda pid: (self.proc.fd_table_size(pid), -pid))

    def holders(self, inodes: Iterable[int], hints: Iterable[int] = (),
                full_scan: bool = True) -> dict[int, set[int]]:
        """Map each inode to the pids holding it (absent: no holder known
        yet).  The cache and the likely holders are read now; with
        ``full_scan`` the others are looked for in the background, and a
        later call finds them in the cache."""
        result: dict[int, set[int]] = {}
        missing: set[int] = set()
        for inode in inodes:
            pids = self._verify(inode)
            if pids:
                result[inode] = pids
            else:
                missing.add(inode)
        if missing:
            hints = set(hints)
            hints |= self.children(hints)
            if hints:
                # Inline, within a budget of fds: big fd tables (a user's 40
                # children of 20,000 fds, connecting to themselves) go to
                # the background scan instead of silencing the loop.
                budget = Budget(INLINE_FDS)
                found = self.scan_pids(budget.take(hints, self.proc), missing)
                self.add_family(found, read=hints, budget=budget)  # every holder, before anyone is judged
                for inode, pids in found.items():
                    result[inode] = pids
                    missing.discard(inode)
                if budget.left_out:
                    self.inline_deferred += budget.left_out
                    if found and full_scan:
                        # Their family's big members: read in the background,
                        # found in the cache by a later look.
                        self.scanner.request(found)
        if missing and full_scan:
            self.scanner.request(missing)
        return result


def held_count(pid: int, inodes: Iterable[int], proc: Proc = HOST) -> int:
    """How many of ``inodes`` ``pid`` holds right now (a fresh scan)."""
    wanted = set(inodes)
    try:
        return len({inode for _fd, inode in proc.socket_fds(pid) if inode in wanted})
    except AccessDenied:
        return 0  # cannot be confirmed: not guilty


class Hints:
    """Where a socket's owner most likely is, by a key (a local port, a
    peer): pids seen holding such sockets.  An LRU: ephemeral ports make
    new keys with every connection, and the map must not grow with them."""

    MAX = 4096

    def __init__(self) -> None:
        self._pids: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pids)

    def get(self, key) -> set[int]:
        pids = self._pids.get(key)
        if pids is None:
            return set()
        self._pids.move_to_end(key)
        return pids

    def add(self, key, pids: Iterable[int]) -> None:
        known = self._pids.get(key)
        if known is None:
            known = self._pids[key] = set()
            if len(self._pids) > self.MAX:
                self._pids.popitem(last=False)
        else:
            self._pids.move_to_end(key)
        known.update(pids)
        if len(known) > 64:  # a port shared by many processes: the newest
            for pid in sorted(known)[:-64]:
                known.discard(pid)


def _wildcard(raw: bytes) -> bool:
    return not any(raw)


class OwnerResolver:
    """Socket -> owning processes, including sockets still in an accept
    queue (no inode yet), which belong to the owners of their listener."""

    # How long start-up waits for the holders of the listeners.
    LISTENERS_WAIT = 5.0

    def __init__(self, kernel: KernelSockets, index: FdIndex | None = None,
                 scan_wait: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``scan_wait``: how long a lookup may wait for the background scan
        (trace shows each socket once, so it waits a little; watch never
        waits: it looks again later).  ``clock``: monotonic seconds, for how
        fresh the listeners are."""
        self.kernel = kernel
        self.proc = kernel.proc
        self._clock = clock
        self.index = index or FdIndex(kernel.proc, clock)
        self.scan_wait = scan_wait
        self._listeners: list[NsSock] = []
        self._listeners_at = float("-inf")
        # Pids seen holding sockets by local port and by peer: where a new
        # socket's owner most likely is.
        self._by_lport = Hints()
        self._by_peer = Hints()

    def _listener_for(self, ns: NsSock, refresh: bool) -> list[NsSock]:
        if refresh or self._clock() - self._listeners_at > 5.0:
            self._listeners = self.kernel.listeners()
            self._listeners_at = self._clock()
        child = ns.diag.sock
        same_port = [
            lst for lst in self._listeners
            if lst.netns == ns.netns and lst.diag.sock.lport == child.lport
            and lst.diag.sock.family == child.family
        ]
        exact = [lst for lst in same_port if lst.diag.sock.laddr == child.laddr]
        return exact or [lst for lst in same_port if _wildcard(lst.diag.sock.laddr)]

    def listening_on(self, sock: SockId) -> set[int]:
        """The pids that hold a listener on ``sock``'s local address and
        port, in any namespace (one list, refreshed at most once a second):
        an accepted socket's likely owners when its own fd is gone."""
        for refresh in (False, True):
            if refresh:
                if self._clock() - self._listeners_at < 1.0:
                    break
                self._listeners = self.kernel.listeners()
                self._listeners_at = self._clock()
            same = [lst for lst in self._listeners
                    if lst.diag.sock.lport == sock.lport and lst.diag.sock.family == sock.family
                    and (lst.diag.sock.laddr == sock.laddr or _wildcard(lst.diag.sock.laddr))]
            if same:
                inodes = [lst.diag.inode for lst in same]
                held = self.index.holders(inodes, self._by_lport.get(sock.lport), full_scan=False)
                return {pid for pids in held.values() for pid in pids}
        return set()

    def _accept_queue_owner(self, ns: NsSock) -> set[int]:
        for refresh in (False, True):
            listeners = self._listener_for(ns, refresh)
            # With SO_REUSEPORT several listeners share the port; only one
            # whose queue is non-empty can hold this connection.
            queued = [lst for lst in listeners if lst.diag.rqueue > 0] or listeners
            if queued:
                break
        else:
            return set()
        owner_sets = []
        for lst in queued:
            held = self.index.holders([lst.diag.inode], self._by_lport.get(lst.diag.sock.lport))
            owner_sets.append(frozenset(held.get(lst.diag.inode, ())))
        if len(set(owner_sets)) != 1:
            # Different processes listen on this port: the queue cannot be
            # attributed, and a guess could kill the wrong one.
            log.debug("accept queue of %s is ambiguous between %s",
                      ns.diag.sock.local, [sorted(s) for s in owner_sets])
            return set()
        return set(owner_sets[0])

    def _hints(self, sock: SockId) -> set[int]:
        return self._by_lport.get(sock.lport) | self._by_peer.get((sock.raddr, sock.rport))

    def _learn(self, sock: SockId, pids: set[int]) -> None:
        # Bounded LRUs: ephemeral ports and peers come and go.
        self._by_lport.add(sock.lport, pids)
        self._by_peer.add((sock.raddr, sock.rport), pids)

    def pids(self, socks: list[NsSock], full_scan: bool = True) -> dict[tuple[int, SockId], set[int]]:
        """The pids holding each socket, keyed by (netns, 4-tuple); a socket
        with no holder is absent.  ``full_scan=False``: the cache and the
        likely holders only."""
        result: dict[tuple[int, SockId], set[int]] = {}
        with_inode = [ns for ns in socks if ns.diag.inode]
        hints: set[int] = set()
        for ns in with_inode:
            hints |= self._hints(ns.diag.sock)
        held = self.index.holders([ns.diag.inode for ns in with_inode], hints,
                                  full_scan=False) if with_inode else {}
        unfound = [ns for ns in with_inode if ns.diag.inode not in held]
        if unfound and full_scan:
            # Before paying for a scan of every process, make sure the
            # socket still exists: churn closes most of them within
            # milliseconds, and scanning for those is pure waste.
            still = [ns for ns in unfound if (hit := self.kernel.lookup_in(ns.netns, ns.diag.sock))
                     is not None and hit.diag.inode == ns.diag.inode]
            if still:
                inodes = [ns.diag.inode for ns in still]
                held.update(self.index.holders(inodes))  # hints: done; the rest in the background
                if self.scan_wait and len(held) < len(with_inode) \
                        and self.index.scanner.idle(self.scan_wait):
                    held.update(self.index.holders(inodes, full_scan=False))
        for ns in with_inode:
            pids = held.get(ns.diag.inode)
            if pids:
                result[(ns.netns, ns.diag.sock)] = pids
                self._learn(ns.diag.sock, pids)
        for ns in socks:
            if not ns.diag.inode:
                pids = self._accept_queue_owner(ns)
                if pids:
                    result[(ns.netns, ns.diag.sock)] = pids
        return result

    def learn_listeners(self) -> None:
        """Index the listeners' owners up front so that a first leak on a
        port does not wait for a full scan."""
        self._listeners = self.kernel.listeners()
        self._listeners_at = self._clock()
        inodes = [lst.diag.inode for lst in self._listeners if lst.diag.inode]
        held = self.index.holders(inodes)
        if len(held) < len(inodes) and self.index.scanner.idle(self.LISTENERS_WAIT):
            held = self.index.holders(inodes, full_scan=False)
        for lst in self._listeners:
            pids = held.get(lst.diag.inode)
            if pids:
                self._by_lport.add(lst.diag.sock.lport, pids)

    def owners(self, pids: Iterable[int]) -> list[Owner]:
        out = []
        for pid in sorted(pids):
            try:
                start, _ppid, comm, _k = self.proc.read_stat(pid)
            except (ProcessGone, AccessDenied):
                continue
            out.append(Owner(pid, start, comm))
        return out

    def closer(self, t: Transition, cache: dict[int, Owner | None]) -> Owner | None:
        """The process that ran an exit's CLOSE_WAIT -> LAST_ACK with its
        own close() (``by_owner``): a holder of the socket, never the peer
        (at ESTABLISHED -> CLOSE_WAIT the pid is whoever was on the CPU).
        ``cache``: the batch's, each pid read once.  None: not its own
        close, or gone."""
        if t.kind is not Kind.EXIT or not t.by_owner or not t.cpu_pid:
            return None
        if t.cpu_pid not in cache:
            found = self.owners((t.cpu_pid,))
            cache[t.cpu_pid] = found[0] if found else None
        return cache[t.cpu_pid]


class Probe(NamedTuple):
    """A socket to look up: bound (its namespace and kernel id known) or,
    for a BPF event not yet looked up, just a 4-tuple."""

    sock: SockId
    netns: int | None = None
    kid: int | None = None


class Found(NamedTuple):
    """A socket in CLOSE_WAIT as the kernel reports it now, with holders."""

    netns: int
    diag: DiagSock
    owners: tuple[Owner, ...]


# Past this many sockets one filtered dump is cheaper than exact lookups.
DUMP_ABOVE = 256


def _close_wait(kernel: KernelSockets, probes: list[Probe]) -> dict[Probe, list[NsSock]]:
    out: dict[Probe, list[NsSock]] = {}
    # /proc/net/tcp has no lookup: each one parses the whole file (every
    # TIME_WAIT socket too), so there one dump serves every probe.
    if len(probes) > DUMP_ABOVE or (len(probes) > 1 and kernel.through_procfs):
        by_tuple: dict[SockId, list[NsSock]] = {}
        wanted = {p.sock for p in probes}
        for ns in kernel.close_wait():
            if ns.diag.sock in wanted:
                by_tuple.setdefault(ns.diag.sock, []).append(ns)
        for probe in probes:
            hits = by_tuple.get(probe.sock, [])
            if probe.kid is not None:
                hits = [ns for ns in hits if ns.netns == probe.netns and ns.diag.kid == probe.kid]
            out[probe] = hits
        return out
    for probe in probes:
        if probe.kid is not None:
            hit = kernel.lookup_in(probe.netns, probe.sock)
            hits = [hit] if hit is not None and hit.diag.kid == probe.kid else []
        else:
            hits = kernel.lookup(probe.sock)
        out[probe] = [ns for ns in hits if ns.diag.state == TCP_CLOSE_WAIT]
    return out


def resolve_close_wait(resolver: OwnerResolver, probes: list[Probe],
                       full_scan: bool = True) -> dict[Probe, list[Found]]:
    """Check each socket against the kernel and find its holders.

    A bound probe finds at most its own socket; an unbound one every
    namespace's CLOSE_WAIT socket with that 4-tuple.  An empty list: no
    longer in CLOSE_WAIT (an exit not read yet, or lost): it must not count.
    ``full_scan=False``: no scan of every process for unknown holders."""
    if not probes:
        return {}
    hits = _close_wait(resolver.kernel, probes)
    every = [ns for found in hits.values() for ns in found]
    pids = resolver.pids(every, full_scan)
    # One stat read and one shared tuple per holder set, not per socket: a
    # flood is thousands of sockets held by a few processes.
    by_holders: dict[frozenset[int], tuple[Owner, ...]] = {}
    out: dict[Probe, list[Found]] = {}
    for probe, found in hits.items():
        rows = []
        for ns in found:
            holders = frozenset(pids.get((ns.netns, ns.diag.sock), ()))
            owners = by_holders.get(holders)
            if owners is None:
                owners = by_holders[holders] = tuple(resolver.owners(holders))
            rows.append(Found(ns.netns, ns.diag, owners))
        out[probe] = rows
    return out
