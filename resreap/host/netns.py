"""Network namespaces in use on the host, and netlink sockets inside them.

Containers have their own TCP tables: a socket leak inside one is invisible
to a netlink socket opened in the host namespace.  A netlink socket stays
bound to the namespace it was created in, so we create one per namespace by
entering it from a short-lived thread (setns changes only the calling thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from typing import Iterator

from resreap.errors import KernelQueryError, NamespaceGone, OutOfFds
from resreap.host.procinfo import HOST, Proc

CLONE_NEWNET = 0x40000000
NETLINK_SOCK_DIAG = 4

_libc = ctypes.CDLL(None, use_errno=True)


def _each(proc: Proc) -> Iterator[tuple[int, int]]:
    """(network namespace inode, pid) for every process that has one."""
    for pid in proc.pids():
        try:
            yield proc.namespace(pid, "net"), pid
        except OSError:  # exited, or a kernel thread without a namespace link
            continue


def namespaces(proc: Proc = HOST) -> dict[int, int]:
    """Map each network namespace inode in use to one pid inside it."""
    found: dict[int, int] = {}
    for ino, pid in _each(proc):
        found.setdefault(ino, pid)
    return found


def pid_in(ino: int, proc: Proc = HOST) -> int | None:
    """One live process in the network namespace ``ino`` (None: no process
    uses it any more).  Called only when the process a namespace was known
    by has left.  Raises OutOfFds: a full fd table says nothing of the
    namespace."""
    return next((pid for found, pid in _each(proc) if found == ino), None)


def own_namespace(proc: Proc = HOST) -> int:
    return proc.namespace("self", "net")


def own_user_namespace(proc: Proc = HOST) -> int:
    return proc.namespace("self", "user")


def user_namespace_of(pid: int, proc: Proc = HOST) -> int | None:
    """The user namespace of ``pid`` (None: gone).  A network namespace
    whose processes live in resreap's own user namespace was made by root
    (a container runtime, ip netns); one in another user namespace by
    anyone (`unshare -Urn`, a rootless container)."""
    try:
        return proc.namespace(pid, "user")
    except OSError:
        return None


def read_net_file(pid: int | str, ino: int, name: str, proc: Proc = HOST) -> str:
    """``/proc/PID/net/NAME`` of the network namespace ``ino``, read through
    its process ``pid`` ("self": ours).  The file is bound to the namespace
    the pid had when it was opened, so the pid is confirmed to be in ``ino``
    right after: a pid reused by a process of another namespace (another
    tenant's, a quiet one) would otherwise answer for this one.  Raises
    NamespaceGone (the process left, or its pid is now another's),
    FileNotFoundError (no such file in this kernel) or OSError."""
    try:
        with open(proc.path(pid, "net", name)) as f:
            text = f.read()
        same = pid == "self" or proc.namespace(pid, "net") == ino
    except FileNotFoundError:
        if not os.path.isdir(proc.path(pid)):
            raise NamespaceGone(f"pid {pid}, through which its network namespace was "
                                "reached, has left") from None
        raise
    if not same:
        raise NamespaceGone(f"pid {pid} is no longer in network namespace {ino}")
    return text


def netlink_socket_in(pid: int | None, proc: Proc = HOST, ino: int | None = None) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the network namespace of ``pid``
    (``None``: our own), confirmed to be ``ino`` where given (the pid may
    have been reused by a process of another namespace since it was
    picked)."""
    if pid is None:
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise OutOfFds("opening sock_diag") from exc
            raise KernelQueryError(f"cannot open sock_diag: {exc.strerror}") from exc
    result: list[object] = []

    def enter() -> None:
        try:
            fd = os.open(proc.path(pid, "ns", "net"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ino is not None and os.fstat(fd).st_ino != ino:
                    raise OSError(errno.ESRCH, "the pid is now in another network namespace")
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                        NETLINK_SOCK_DIAG))
        except OSError as exc:
            result.append(exc)  # EMFILE included: handed to the caller

    worker = threading.Thread(target=enter, name=f"netns-{pid}")
    worker.start()
    worker.join()
    got = result[0]
    if isinstance(got, OSError):
        if got.errno in (errno.EMFILE, errno.ENFILE):
            raise OutOfFds(f"opening sock_diag in the network namespace of pid {pid}")
        if got.errno in (errno.ENOENT, errno.ESRCH):
            raise NamespaceGone(f"pid {pid}, through which its network namespace was "
                                "reached, has left")
        raise KernelQueryError(f"cannot enter the network namespace of pid {pid}: {got.strerror}")
    assert isinstance(got, socket.socket)
    return got
