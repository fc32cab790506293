"""The host's TCP sockets across every network namespace in use.

Wraps one sock_diag connection per namespace, or /proc/PID/net/tcp{,6}
where sock_diag is unavailable (old or stripped kernels; forced with
RESREAP_SOCKET_TABLE=procfs).  Namespaces come and go with containers: the
set is refreshed on a slow period and whenever a lookup finds nothing in
the known ones.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterable, NamedTuple

from resreap.host import netns
from resreap.errors import KernelQueryError
from resreap.model import TCP_CLOSE_WAIT, TCP_LISTEN, SockId
from resreap.host.procnet import ProcNetTcp
from resreap.host.sockdiag import DiagSock, SockDiag

log = logging.getLogger(__name__)


class NsSock(NamedTuple):
    netns: int
    diag: DiagSock


MODES = ("auto", "sock_diag", "procfs")


class SocketTable:
    def __init__(self, proc_root: str = "/proc", refresh_every: float = 30.0,
                 mode: str | None = None) -> None:
        self.proc_root = proc_root
        self.refresh_every = refresh_every
        self.mode = mode or os.environ.get("RESREAP_SOCKET_TABLE", "auto")
        if self.mode not in MODES:
            raise KernelQueryError(f"RESREAP_SOCKET_TABLE={self.mode!r}: use one of {', '.join(MODES)}")
        self._own = netns.own_namespace(proc_root)
        self._diag: dict[int, SockDiag | ProcNetTcp] = {}
        self._pid: dict[int, int] = {}
        self._inuse: dict[tuple[int, int], int] = {}  # (netns, family) -> sockstat inuse
        self._refreshed = float("-inf")
        self.refresh()

    def _families(self, ino: int) -> tuple[int, ...]:
        """The families with TCP sockets in this namespace.  A sock_diag dump
        walks the kernel's whole (global) established hash whatever it
        returns, so skipping an empty family or namespace halves the cost of
        a poll on an IPv4-only host."""
        where = "self" if ino == self._own else self._pid.get(ino, "self")
        families = []
        for family, name, tag in ((4, "sockstat", "TCP:"), (6, "sockstat6", "TCP6:")):
            self._inuse.pop((ino, family), None)
            try:
                with open(f"{self.proc_root}/{where}/net/{name}") as f:
                    for line in f:
                        if line.startswith(tag):
                            fields = line.split()
                            inuse = int(fields[fields.index("inuse") + 1])
                            if inuse > 0:
                                families.append(family)
                                self._inuse[(ino, family)] = inuse
                            break
            except (OSError, ValueError, IndexError):
                families.append(family)  # unknown: look
        return tuple(families)

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
        kinds = {"procfs" if isinstance(d, ProcNetTcp) else "sock_diag" for d in self._diag.values()}
        return "+".join(sorted(kinds)) or "none"

    def _open(self, ino: int, pid: int) -> SockDiag | ProcNetTcp:
        mine = ino == self._own
        if self.mode != "procfs":
            try:
                diag = SockDiag(netns.netlink_socket_in(None if mine else pid, self.proc_root))
                diag.dump(())  # an empty-filter probe: fails where sock_diag is missing
                return diag
            except (KernelQueryError, OSError) as exc:
                if self.mode == "sock_diag":
                    raise KernelQueryError(f"sock_diag unavailable: {exc}") from exc
                log.debug("netns %d: sock_diag unavailable (%s), reading /proc", ino, exc)
        return ProcNetTcp("self" if mine else pid, self.proc_root)

    def close(self) -> None:
        for diag in self._diag.values():
            diag.close()
        self._diag.clear()

    def refresh(self) -> None:
        """Open sock_diag in new namespaces, drop the ones no process uses."""
        self._refreshed = time.monotonic()
        live = netns.namespaces(self.proc_root)
        live.setdefault(self._own, 0)
        for ino in list(self._diag):
            if ino not in live:
                self._diag.pop(ino).close()
        self._pid = live
        for ino, pid in live.items():
            if isinstance(self._diag.get(ino), ProcNetTcp) and ino != self._own:
                # Read through a process of that namespace: keep it a live one.
                self._diag[ino] = ProcNetTcp(pid, self.proc_root)
            if ino in self._diag:
                continue
            try:
                self._diag[ino] = self._open(ino, pid)
            except KernelQueryError as exc:
                if self.mode == "sock_diag":
                    raise
                log.debug("netns %d skipped: %s", ino, exc)  # its last process left

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh_every:
            self.refresh()

    @property
    def namespaces(self) -> list[int]:
        return list(self._diag)

    def _each(self):
        for ino, diag in list(self._diag.items()):
            yield ino, diag

    def dump(self, states: Iterable[int], info: bool = False) -> list[NsSock]:
        self._maybe_refresh()
        states = tuple(states)
        out: list[NsSock] = []
        for ino, diag in self._each():
            families = self._families(ino)
            if TCP_LISTEN not in states:
                families = self._with_established(ino, diag, families)
            if not families:
                continue
            try:
                out.extend(NsSock(ino, d) for d in diag.dump(states, families, info))
            except KernelQueryError as exc:
                log.debug("netns %d dump failed: %s", ino, exc)
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
        if not found and retry_new_namespaces and time.monotonic() - self._refreshed > 1.0:
            self.refresh()
            found = self._lookup(sock)
        return found

    def lookup_in(self, ino: int, sock: SockId) -> NsSock | None:
        """The socket with this 4-tuple in one namespace (None: gone, or
        the namespace is)."""
        diag = self._diag.get(ino)
        if diag is None:
            return None
        try:
            hit = diag.lookup(sock)
        except KernelQueryError as exc:
            log.debug("netns %d lookup failed: %s", ino, exc)
            return None
        return NsSock(ino, hit) if hit is not None else None

    def _lookup(self, sock: SockId) -> list[NsSock]:
        found = []
        for ino, diag in self._each():
            try:
                hit = diag.lookup(sock)
            except KernelQueryError as exc:
                log.debug("netns %d lookup failed: %s", ino, exc)
                continue
            if hit is not None:
                found.append(NsSock(ino, hit))
        return found
