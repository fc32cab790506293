"""TCP sockets from /proc/PID/net/tcp{,6}: the reader for kernels or
sandboxes without netlink sock_diag.  Slower (the kernel cannot filter by
state: a table of 100k TIME_WAIT sockets costs about 0.05 s to skip through,
for a dump of the CLOSE_WAIT ones or one socket's lookup) but everywhere.

Addresses are printed as 32-bit words in host byte order; ports and states
as hex.  For a LISTEN socket the rx_queue column is the accept queue length.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

from resreap.errors import KernelQueryError, NamespaceGone
from resreap.model import SockId
from resreap.host import netns
from resreap.host.procinfo import HOST, Proc
from resreap.host.sockdiag import DiagSock


def _words(raw: bytes) -> bytes:
    """Network order <-> the table's host-order 32-bit words (either way)."""
    if sys.byteorder == "big":
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def _endpoint(text: str) -> tuple[bytes, int]:
    addr, _, port = text.rpartition(":")
    return _words(bytes.fromhex(addr)), int(port, 16)


def _printed(addr: bytes, port: int) -> str:
    """An endpoint as the table prints it (upper-case hex)."""
    return f"{_words(addr).hex().upper()}:{port:04X}"


def parse(text: str, family: int, states: frozenset[int] | None = None,
          sock: SockId | None = None) -> list[DiagSock]:
    """Parse a tcp or tcp6 table; malformed lines are skipped, not fatal.

    The table holds every TCP socket of the namespace, TIME_WAIT by the ten
    thousand on a busy host: a line is split whole and its addresses decoded
    only if its state (and with ``sock``, its endpoints) is wanted."""
    local = remote = None
    if sock is not None:
        local, remote = _printed(sock.laddr, sock.lport), _printed(sock.raddr, sock.rport)
    out = []
    for line in text.splitlines()[1:]:
        head = line.split(None, 4)   # sl, local, remote, state, the rest
        if len(head) < 5 or (local is not None and (head[1] != local or head[2] != remote)):
            continue
        try:
            state = int(head[3], 16)
            if states is not None and state not in states:
                continue
            fields = line.split()
            if len(fields) < 10:
                continue
            laddr, lport = _endpoint(fields[1])
            raddr, rport = _endpoint(fields[2])
            wq, _, rq = fields[4].partition(":")
            rqueue, wqueue = int(rq, 16), int(wq, 16)
            uid, inode = int(fields[7]), int(fields[9])
        except ValueError:
            continue
        if len(laddr) != (4 if family == 4 else 16):
            continue
        out.append(DiagSock(SockId(family, laddr, lport, raddr, rport), state, inode, 0,
                            rqueue, uid, wqueue))
    return out


class ProcNetTcp:
    """The same queries as SockDiag, for the namespace of ``pid`` (``ino``:
    that namespace, confirmed at every read: the pid may be reused)."""

    def __init__(self, pid: int | str, proc: Proc = HOST, ino: int | None = None) -> None:
        self.base = proc.path(pid, "net")
        self._pid, self._proc, self._ino = pid, proc, ino

    def close(self) -> None:
        pass

    def _read(self, family: int) -> str:
        name = "tcp" if family == 4 else "tcp6"
        try:
            if self._ino is not None:
                return netns.read_net_file(self._pid, self._ino, name, self._proc)
            with open(f"{self.base}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            if not os.path.isdir(self.base):
                raise NamespaceGone(f"{self.base} is gone (its process left)") from None
            if family == 6:  # IPv6 disabled: no sockets of that family
                return ""
            raise KernelQueryError(f"{self.base}/{name} is missing") from None
        except OSError as exc:
            raise KernelQueryError(f"cannot read {self.base}/{name}: {exc.strerror}") from exc

    def dump(self, states: Iterable[int], families: Iterable[int] = (4, 6),
             info: bool = False) -> list[DiagSock]:
        """``info`` is accepted for symmetry: /proc/net/tcp has no tcp_info."""
        wanted = frozenset(states)
        out: list[DiagSock] = []
        for family in families:
            out.extend(parse(self._read(family), family, wanted))
        return out

    def lookup(self, sock: SockId) -> DiagSock | None:
        found = parse(self._read(sock.family), sock.family, sock=sock)
        return found[0] if found else None
