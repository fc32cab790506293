"""The host's TCP sockets across every network namespace in use.

Wraps one sock_diag connection per namespace, or /proc/PID/net/tcp{,6}
where sock_diag is unavailable (old or stripped kernels; forced with
RESREAP_SOCKET_TABLE=procfs).  Namespaces come and go with containers: the
set is refreshed on a slow period, new ones are noticed at every dump (the
poller's), and a lookup that finds nothing looks for new ones.

Anyone may make network namespaces (`unshare -Urn`, a thousand of them in
a second), so nothing here grows with them unbounded:

- a namespace's connection is opened only when it has TCP sockets (its
  sockstat says so), and at most MAX_OPEN stay open (least recently used
  closed first); every connection shares one receive buffer;
- at most MAX_USER_NAMESPACES namespaces made inside another user
  namespace (an unprivileged user's, a rootless container's) are watched,
  and MAX_NAMESPACES in all; past that a warning line says how many are
  not, and which kind.  Root's namespaces (container runtimes, ip netns)
  come first, so a user's namespaces never push a container's out.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Iterable, NamedTuple

from resreap import tunables
from resreap.host import netns
from resreap.errors import KernelQueryError, NamespaceGone, ResreapError
from resreap.model import TCP_CLOSE_WAIT, TCP_LISTEN, SockId
from resreap.host.procinfo import HOST, Proc
from resreap.host.procnet import ProcNetTcp
from resreap.host.sockdiag import RECV_BUFFER, DiagSock, SockDiag

log = logging.getLogger(__name__)

MAX_OPEN = 128
MAX_NAMESPACES = 4096
MAX_USER_NAMESPACES = 64
# New namespaces are looked for at most this often by dumps (a listing of
# /proc, then one stat per new process).
NOTICE_EVERY = 0.25
# How long a namespace's sockstat answer ("has TCP sockets") is trusted by
# lookups.
SOCKSTAT_FRESH = 1.0


class NsSock(NamedTuple):
    netns: int
    diag: DiagSock


class SocketTable:
    def __init__(self, proc: Proc = HOST, refresh_every: float = 30.0,
                 mode: str | None = None) -> None:
        self.proc = proc
        self.refresh_every = refresh_every
        self.mode = mode or tunables.get().socket_table
        if self.mode not in tunables.SOCKET_TABLES:
            raise KernelQueryError(f"unknown socket table {self.mode!r}: use one of "
                                   f"{', '.join(tunables.SOCKET_TABLES)}")
        self._own = netns.own_namespace(proc)
        self._own_user = netns.own_user_namespace(proc)
        self._buf = bytearray(RECV_BUFFER)
        # Open readers, least recently used first; ours is never closed.
        self._open: collections.OrderedDict[int, SockDiag | ProcNetTcp] = collections.OrderedDict()
        self._kinds: set[str] = set()
        self._pid: dict[int, int] = {}     # watched namespaces -> a process inside
        self._user_inos: set[int] = set()  # of them, made in another user namespace
        self._repicked: dict[int, float] = {}  # netns -> when its process was last re-picked
        self._pids_seen: set[int] = set()  # /proc at the last look for new namespaces
        self._noticed = float("-inf")
        self._inuse: dict[tuple[int, int], int] = {}  # (netns, family) -> sockstat inuse
        self._tcp: dict[int, tuple[float, tuple[int, ...]]] = {}  # netns -> (when, families)
        self._refreshed = float("-inf")
        self.skipped = 0  # namespaces in use but not watched (the caps)
        self.refresh()

    def _net_file(self, ino: int, name: str) -> str | None:
        """A /proc/PID/net file of the namespace, read through its process
        and confirmed to be that namespace's (None: unreadable now)."""
        where = "self" if ino == self._own else self._pid.get(ino)
        if where is None:
            return None
        try:
            return netns.read_net_file(where, ino, name, self.proc)
        except (OSError, NamespaceGone):
            return None

    def _families(self, ino: int) -> tuple[int, ...]:
        """The families with TCP sockets in this namespace.  A sock_diag dump
        walks the kernel's whole (global) established hash whatever it
        returns, so skipping an empty family or namespace halves the cost of
        a poll on an IPv4-only host."""
        families = []
        for family, name, tag in ((4, "sockstat", "TCP:"), (6, "sockstat6", "TCP6:")):
            self._inuse.pop((ino, family), None)
            text = self._net_file(ino, name)
            try:
                line = next(line for line in (text or "").splitlines() if line.startswith(tag))
                fields = line.split()
                inuse = int(fields[fields.index("inuse") + 1])
            except (StopIteration, ValueError, IndexError):
                families.append(family)  # unknown: look
                continue
            if inuse > 0:
                families.append(family)
                self._inuse[(ino, family)] = inuse
        return tuple(families)

    def activity(self, ino: int) -> str | None:
        """The namespace's TCP counters (the Tcp line of its net/snmp:
        segments in and out, resets, connections), per namespace and shared
        by IPv4 and IPv6.  A socket enters CLOSE_WAIT only on a received
        FIN, counted as it arrives, so where this has not moved since a
        dump that came after the last move, no socket of the namespace has
        entered CLOSE_WAIT since (the poller's reason to skip a dump).
        None: unreadable now (the process it is read through left)."""
        text = self._net_file(ino, "snmp")
        if text is None:
            return None
        lines = [line for line in text.splitlines() if line.startswith("Tcp:")]
        return lines[-1] if len(lines) == 2 else None

    def _with_established(self, ino: int, diag, families: tuple[int, ...]) -> tuple[int, ...]:
        """Drop the families whose sockets are all listeners.  A LISTEN-only
        dump skips the established hash, so it is cheap; where sockstat's
        in-use count equals the listeners, there is nothing else to walk for
        (typical of the host namespace on a container host)."""
        keep = []
        for family in families:
            inuse = self._inuse.get((ino, family))
            if inuse is None or inuse > 256:
                keep.append(family)
                continue
            try:
                listeners = len(diag.dump((TCP_LISTEN,), (family,)))
            except KernelQueryError:
                keep.append(family)
                continue
            if listeners < inuse:
                keep.append(family)
        return tuple(keep)

    @property
    def kind(self) -> str:
        """Which reader serves the namespaces: sock_diag or procfs."""
        return "+".join(sorted(self._kinds)) or "none"

    @property
    def through_procfs(self) -> bool:
        """Is some namespace read from /proc/PID/net/tcp?  Such a read is
        not atomic (under churn it may skip a line) and has no lookup (each
        one parses the whole file)."""
        return "procfs" in self._kinds

    def _make(self, ino: int, pid: int) -> SockDiag | ProcNetTcp:
        mine = ino == self._own
        if self.mode != "procfs":
            try:
                diag = SockDiag(netns.netlink_socket_in(None if mine else pid, self.proc, ino),
                                self._buf)
                try:
                    diag.dump(())  # an empty-filter probe: fails where sock_diag is missing
                except KernelQueryError:
                    diag.close()
                    raise
                self._kinds.add("sock_diag")
                return diag
            except NamespaceGone:
                raise  # not a missing sock_diag: another process may serve
            except KernelQueryError as exc:
                if self.mode == "sock_diag":
                    raise KernelQueryError(f"sock_diag unavailable: {exc}") from exc
                log.debug("netns %d: sock_diag unavailable (%s), reading /proc", ino, exc)
        self._kinds.add("procfs")
        return ProcNetTcp("self", self.proc) if mine else ProcNetTcp(pid, self.proc, ino)

    def _reader(self, ino: int) -> SockDiag | ProcNetTcp | None:
        """The namespace's reader, opened now if need be (None: the
        namespace is not watched, or its last process left)."""
        reader = self._open.get(ino)
        if reader is not None:
            self._open.move_to_end(ino)
            return reader
        pid = self._pid.get(ino)
        if pid is None:
            return None
        try:
            reader = self._make(ino, pid)
        except NamespaceGone:
            raise  # _query reaches it through another process
        except KernelQueryError as exc:
            if self.mode == "sock_diag":
                raise
            log.debug("netns %d skipped: %s", ino, exc)  # its last process left
            return None
        self._open[ino] = reader
        while len(self._open) > MAX_OPEN:
            victim = next(i for i in self._open if i != self._own)
            self._open.pop(victim).close()
        return reader

    def _repick(self, ino: int) -> int | None:
        """Another live process of the namespace, once its own left (None:
        none left, or asked too recently: a namespace whose processes keep
        leaving costs one /proc listing per NOTICE_EVERY at most)."""
        now = time.monotonic()
        if now - self._repicked.get(ino, float("-inf")) < NOTICE_EVERY:
            return None
        self._repicked[ino] = now
        stale = self._open.pop(ino, None)
        if stale is not None:
            stale.close()
        pid = netns.pid_in(ino, self.proc)
        if pid is None:
            self._forget(ino)
        else:
            self._pid[ino] = pid
        return pid

    def _forget(self, ino: int) -> None:
        """No process uses the namespace any more."""
        self._pid.pop(ino, None)
        self._user_inos.discard(ino)
        self._tcp.pop(ino, None)
        self._repicked.pop(ino, None)
        reader = self._open.pop(ino, None)
        if reader is not None:
            reader.close()

    def _query(self, ino: int, ask):
        """``ask(reader)`` on the namespace's reader.  Where the process it
        was reached through has left (a short-lived `ip netns exec`, a
        restarted container's first process), once more through another
        process of it.  None: the namespace is not watched, or no process
        uses it any more."""
        for attempt in (1, 2):
            try:
                reader = self._reader(ino)
                return None if reader is None else ask(reader)
            except NamespaceGone as exc:
                if attempt == 2 or self._repick(ino) is None:
                    log.debug("netns %d skipped: %s", ino, exc)
                    return None
        return None

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()

    def refresh(self) -> None:
        """The namespaces in use now (within the caps); close the readers
        of the ones no process uses any more."""
        self._refreshed = self._noticed = time.monotonic()
        live = netns.namespaces(self.proc)
        self._pids_seen = set(live.values())
        self._pid = {self._own: 0}
        self._user_inos = set()
        self._repicked.clear()
        self.skipped = 0
        self._admit(live)
        for ino in list(self._open):
            if ino not in self._pid:
                self._open.pop(ino).close()
            elif isinstance(self._open[ino], ProcNetTcp) and ino != self._own:
                # Read through a process of that namespace: keep it a live one.
                self._open[ino] = ProcNetTcp(self._pid[ino], self.proc, ino)
        self._tcp.clear()

    def _admit(self, found: dict[int, int]) -> None:
        """Watch these namespaces (ino -> a pid inside), root's first,
        within the caps; say what the caps left out."""
        root, users = [], []
        for ino, pid in found.items():
            if ino in self._pid:
                continue
            mine = netns.user_namespace_of(pid, self.proc) == self._own_user
            (root if mine else users).append((pid, ino))
        for pid, ino in sorted(root):
            if len(self._pid) >= MAX_NAMESPACES:
                self.skipped += 1
                continue
            self._pid[ino] = pid
        for pid, ino in sorted(users):
            if len(self._pid) >= MAX_NAMESPACES or len(self._user_inos) >= MAX_USER_NAMESPACES:
                self.skipped += 1
                continue
            self._pid[ino] = pid
            self._user_inos.add(ino)

    def _notice_new(self) -> bool:
        """Namespaces that got their first process since the last look:
        only processes new since then are looked at (one stat each).  True:
        some were admitted."""
        now = time.monotonic()
        if now - self._noticed < NOTICE_EVERY:
            return False
        self._noticed = now
        try:
            pids = set(self.proc.pids())
        except ResreapError:  # out of fds: the next look notices them
            return False
        fresh: dict[int, int] = {}
        for pid in pids - self._pids_seen:
            try:
                ino = self.proc.namespace(pid, "net")
            except OSError:
                continue
            if ino not in self._pid:
                fresh.setdefault(ino, pid)
        self._pids_seen = pids
        if fresh:
            before = len(self._pid)
            self._admit(fresh)
            return len(self._pid) > before
        return False

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh_every:
            self.refresh()

    @property
    def namespaces(self) -> list[int]:
        """The watched namespaces."""
        return list(self._pid)

    def made_by_a_user(self, ino: int) -> bool:
        """Was the namespace made in another user namespace (anyone's:
        `unshare -Urn`, a rootless container) rather than by root?"""
        return ino in self._user_inos

    @property
    def open_readers(self) -> int:
        return len(self._open)

    def _has_tcp(self, ino: int) -> tuple[int, ...]:
        """The families with TCP sockets in the namespace.  A namespace
        that had some within SOCKSTAT_FRESH is taken to have them still
        (lookups ask often); one that had none is asked again every time:
        a socket that just appeared there must never be missed."""
        now = time.monotonic()
        known = self._tcp.get(ino)
        if known is None or not known[1] or now - known[0] > SOCKSTAT_FRESH:
            known = self._tcp[ino] = (now, self._families(ino))
        return known[1]

    def watched(self) -> list[int]:
        """The namespaces to look at now, after the periodic refresh and a
        look for new ones (what every dump does first)."""
        self._maybe_refresh()
        self._notice_new()
        return list(self._pid)

    def dump_in(self, ino: int, states: Iterable[int], info: bool = False) -> list[NsSock] | None:
        """One namespace's TCP sockets in ``states`` (empty: it has no TCP
        socket at all, and no connection is opened for it; None: it did not
        answer: it is not watched, its last process left, or the dump
        failed)."""
        states = tuple(states)
        families = self._families(ino)
        self._tcp[ino] = (time.monotonic(), families)
        if not families:
            return []

        def ask(diag):
            wanted = families
            if TCP_LISTEN not in states:
                wanted = self._with_established(ino, diag, wanted)
            return diag.dump(states, wanted, info) if wanted else []
        try:
            found = self._query(ino, ask)
        except KernelQueryError as exc:
            log.debug("netns %d dump failed: %s", ino, exc)
            return None
        return None if found is None else [NsSock(ino, d) for d in found]

    def dump(self, states: Iterable[int], info: bool = False) -> list[NsSock]:
        """Every watched namespace's TCP sockets in ``states`` (the ones
        that did not answer are left out)."""
        states = tuple(states)
        out: list[NsSock] = []
        for ino in self.watched():
            out.extend(self.dump_in(ino, states, info) or ())
        return out

    def close_wait(self, info: bool = True) -> list[NsSock]:
        """Every CLOSE_WAIT socket, with the evidence fields (tcp_info)
        unless ``info`` is False (the poller only diffs identities)."""
        return self.dump((TCP_CLOSE_WAIT,), info=info)

    def listeners(self) -> list[NsSock]:
        return self.dump((TCP_LISTEN,))

    def lookup(self, sock: SockId, retry_new_namespaces: bool = True) -> list[NsSock]:
        """Every namespace's socket with this exact 4-tuple (usually one)."""
        self._maybe_refresh()
        found = self._lookup(sock)
        if not found and retry_new_namespaces:
            # A namespace made since the last look (noticed at most every
            # NOTICE_EVERY: a caller that missed looks again after that).
            if self._notice_new():
                found = self._lookup(sock)
            elif time.monotonic() - self._refreshed > 1.0:
                self.refresh()
                found = self._lookup(sock)
        return found

    def lookup_in(self, ino: int, sock: SockId) -> NsSock | None:
        """The socket with this 4-tuple in one namespace (None: gone, or
        the namespace is)."""
        try:
            hit = self._query(ino, lambda diag: diag.lookup(sock))
        except KernelQueryError as exc:
            log.debug("netns %d lookup failed: %s", ino, exc)
            return None
        return NsSock(ino, hit) if hit is not None else None

    def _lookup(self, sock: SockId) -> list[NsSock]:
        found = []
        for ino in list(self._pid):
            if not self._has_tcp(ino):
                continue
            hit = self.lookup_in(ino, sock)
            if hit is not None:
                found.append(hit)
        return found
