"""TCP sockets straight from the kernel through netlink sock_diag.

A dump with a kernel-side state filter returns only the sockets in the asked
states (about 0.04 s at 100k connections, against 0.5 s to parse
/proc/net/tcp), and an exact lookup by 4-tuple costs one round trip.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Iterable, NamedTuple

from resreap.errors import KernelQueryError
from resreap.model import SockId

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_INFO = 2          # attribute carrying struct tcp_info
_WANT_INFO = 1 << (INET_DIAG_INFO - 1)
_RTATTR = struct.Struct("=HH")
# struct tcp_info: tcpi_last_data_sent (ms since the socket last sent data)
# sits after 8 one-byte fields and 9 u32s, in every kernel since 2.6.
_LAST_DATA_SENT = struct.Struct("=I")
_LAST_DATA_SENT_AT = 44

_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid:
# sport, dport (big endian), src[16], dst[16], if, cookie[2] (host order).
_REQ = struct.Struct("=BBBBI")
_SOCKID_PORTS = struct.Struct(">HH")
_SOCKID_REST = struct.Struct("=16s16sIII")
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes),
# expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}


class DiagSock(NamedTuple):
    """One TCP socket as sock_diag reports it.

    ``inode`` is 0 while a connection waits in a listener's accept queue
    (no file yet).  For a LISTEN socket ``rqueue`` is the accept queue
    length; for a CLOSE_WAIT socket it is 1 while the peer's FIN is unread,
    0 once the process has read the EOF, more with unread data.
    ``wqueue`` is data sent and not yet acknowledged.  ``uid`` is the
    socket's creator (inherited from the listener by accepted sockets).
    ``cookie`` is the kernel's unique socket id (0 where unknown: procfs).
    ``idle_sent`` is seconds since the socket last sent data (None where
    tcp_info was not asked for or is unavailable)."""

    sock: SockId
    state: int
    inode: int
    cookie: int
    rqueue: int
    uid: int
    wqueue: int = 0
    idle_sent: float | None = None

    @property
    def kid(self) -> int:
        """The kernel's id for this socket within its namespace: the cookie,
        or the inode where there is no cookie (the procfs reader)."""
        return self.cookie or self.inode


def states_mask(states: Iterable[int]) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


def _request(family: int, flags: int, states: int, seq: int, sock: SockId | None,
             ext: int = 0) -> bytes:
    if sock is None:
        sockid = _SOCKID_PORTS.pack(0, 0) + _SOCKID_REST.pack(
            b"", b"", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    else:
        sockid = _SOCKID_PORTS.pack(sock.lport, sock.rport) + _SOCKID_REST.pack(
            sock.laddr, sock.raddr, 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = _REQ.pack(_AF[family], socket.IPPROTO_TCP, ext, 0, states) + sockid
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          flags, seq, 0) + body


def _idle_sent(payload: memoryview) -> float | None:
    """tcpi_last_data_sent from the INET_DIAG_INFO attribute, in seconds."""
    offset = _MSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            return None
        if kind == INET_DIAG_INFO and length >= _RTATTR.size + _LAST_DATA_SENT_AT + 4:
            (ms,) = _LAST_DATA_SENT.unpack_from(payload, offset + _RTATTR.size + _LAST_DATA_SENT_AT)
            return ms / 1000.0
        offset += (length + 3) & ~3
    return None


def _parse(family: int, payload: memoryview, info: bool) -> DiagSock:
    (_fam, state, _timer, _retrans, sport, dport, src, dst, _if, ck0, ck1,
     _expires, rqueue, wqueue, uid, inode) = _MSG.unpack_from(payload)
    n = 4 if family == 4 else 16
    sock = SockId(family, src[:n], int.from_bytes(sport, "big"),
                  dst[:n], int.from_bytes(dport, "big"))
    return DiagSock(sock, state, inode, ck0 | (ck1 << 32), rqueue, uid, wqueue,
                    _idle_sent(payload) if info else None)


RECV_BUFFER = 1 << 20


class SockDiag:
    """sock_diag queries over one netlink socket (one network namespace)."""

    def __init__(self, nl: socket.socket, buf: bytearray | None = None) -> None:
        """``buf``: the receive buffer, shared by every namespace's
        connection of one table (one at a time uses it): a megabyte each
        was a megabyte per network namespace, which anyone can make."""
        self._nl = nl
        self._seq = 0
        self._buf = buf if buf is not None else bytearray(RECV_BUFFER)

    def close(self) -> None:
        self._nl.close()

    def _exchange(self, family: int, flags: int, states: int,
                  sock: SockId | None, info: bool = False) -> list[DiagSock]:
        self._seq += 1
        seq = self._seq
        try:
            self._nl.send(_request(family, flags, states, seq, sock, _WANT_INFO if info else 0))
        except OSError as exc:
            raise KernelQueryError(f"sock_diag request failed: {exc.strerror}") from exc
        found: list[DiagSock] = []
        view = memoryview(self._buf)
        while True:
            try:
                size = self._nl.recv_into(self._buf)
            except OSError as exc:
                raise KernelQueryError(f"sock_diag reply failed: {exc.strerror}") from exc
            offset = 0
            while offset + _NLMSGHDR.size <= size:
                length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(view, offset)
                if length < _NLMSGHDR.size:
                    raise KernelQueryError("sock_diag: malformed netlink reply")
                payload = view[offset + _NLMSGHDR.size: offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late reply to an abandoned request
                if mtype == NLMSG_DONE:
                    return found
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code == 0 or code == errno.ENOENT:
                        return found
                    raise KernelQueryError(f"sock_diag: {os.strerror(code)}")
                if mtype == SOCK_DIAG_BY_FAMILY:
                    found.append(_parse(family, payload, info))
            if not flags & NLM_F_DUMP and found:
                return found

    def dump(self, states: Iterable[int], families: Iterable[int] = (4, 6),
             info: bool = False) -> list[DiagSock]:
        """Every TCP socket in ``states``, filtered in the kernel.  ``info``:
        also ask for tcp_info (``idle_sent``)."""
        mask = states_mask(states)
        out: list[DiagSock] = []
        for family in families:
            out.extend(self._exchange(family, NLM_F_REQUEST | NLM_F_DUMP, mask, None, info))
        return out

    def lookup(self, sock: SockId) -> DiagSock | None:
        """The socket with exactly this 4-tuple (with tcp_info), or None."""
        for found in self._exchange(sock.family, NLM_F_REQUEST, 0xFFFFFFFF, sock, True):
            # The kernel's lookup falls back to a listener on the port: only
            # an exact 4-tuple match is this socket.
            if found.sock == sock:
                return found
        return None

