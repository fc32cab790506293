"""The polling fallback on real namespaces (#35): a namespace whose TCP
counters stood still is not dumped again (each dump walks the kernel's
whole established hash), and what happens in it is still seen at the next
poll.  A namespace's files are read through one of its processes, and
that process is confirmed to be in it still (its pid may be another's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from procs import until
from resreap.errors import NamespaceGone
from resreap.host import netns
from resreap.host.sockets import SocketTable
from resreap.model import Kind
from resreap.sources.poll_events import PollSource

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]

INTERVAL = 0.05


def test_a_quiet_namespace_is_not_dumped_and_its_entries_and_exits_are_seen_next_poll(
        actors, make_netns):
    here = make_netns()
    ino = os.stat(f"/run/netns/{here}").st_ino
    server = actors("leaky-server", "127.0.0.1", netns=here)
    clients = actors("clients", "127.0.0.1", server.port, 20, netns=here)
    table = SocketTable()
    dumped: list[int] = []
    real = table.dump_in
    table.dump_in = lambda i, *a, **k: dumped.append(i) or real(i, *a, **k)
    source = PollSource(table, interval=INTERVAL)
    try:
        assert until(lambda: ino in table.watched(), 5)
        source.start()

        def ours(kind: Kind) -> list:
            return [t for t in source.read(1.0) if t.netns == ino and t.kind == kind]

        for _ in range(3):  # idle connections: settled after two dumps
            assert ours(Kind.ENTER) == []
        dumped.clear()
        for _ in range(10):
            assert ours(Kind.ENTER) == []
        assert ino not in dumped, "a namespace whose counters stood still was dumped"
        assert source.skips >= 10

        clients.send("close", "CLOSED")
        entered = ours(Kind.ENTER) or ours(Kind.ENTER)  # the next poll, or the one after
        assert len(entered) == 20
        assert {t.sock.lport for t in entered} == {server.port}

        server.send("close", "CLOSED")
        left = ours(Kind.EXIT) or ours(Kind.EXIT)
        assert {t.sock for t in left} == {t.sock for t in entered}
    finally:
        table.close()


def test_a_namespace_is_read_only_through_a_process_still_inside_it(make_netns):
    """A pid picked for a namespace may leave and be reused by a process of
    another namespace (a quiet one of a tenant's): its files would answer
    for the wrong namespace, and a dump skipped on that say."""
    here = make_netns()
    ino = os.stat(f"/run/netns/{here}").st_ino
    own = os.stat("/proc/self/ns/net").st_ino
    holder = subprocess.Popen(["ip", "netns", "exec", here, "sleep", "30"])
    try:
        assert until(lambda: netns.user_namespace_of(holder.pid) is not None
                     and os.stat(f"/proc/{holder.pid}/ns/net").st_ino == ino, 5)
        assert netns.read_net_file(holder.pid, ino, "snmp").startswith("Ip:")
        with pytest.raises(NamespaceGone):
            netns.read_net_file(holder.pid, own, "snmp")
        with pytest.raises(NamespaceGone):
            netns.netlink_socket_in(holder.pid, ino=own)
        netns.netlink_socket_in(holder.pid, ino=ino).close()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(NamespaceGone):
        netns.read_net_file(holder.pid, ino, "snmp")


USER_NAMESPACE = r"""
import ctypes, os, signal, socket
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000 | 0x40000000) != 0:  # USER | NET
    raise SystemExit(1)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(os.readlink("/proc/self/ns/net"), flush=True)
signal.pause()
"""


def test_a_users_namespace_is_told_from_roots(make_netns):
    """The poller dumps root's namespaces at every poll and shares half an
    interval among those made in other user namespaces (anyone's)."""
    here = make_netns()
    root_made = os.stat(f"/run/netns/{here}").st_ino
    holder = subprocess.Popen(["ip", "netns", "exec", here, "sleep", "30"])
    user = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--", sys.executable, "-c", USER_NAMESPACE],
                            stdout=subprocess.PIPE, text=True, cwd="/")
    table = SocketTable()
    try:
        users = int(user.stdout.readline().strip().split("[")[1].rstrip("]"))
        assert until(lambda: {root_made, users} <= set(table.watched()), 5)
        assert table.made_by_a_user(users)
        assert not table.made_by_a_user(root_made)
        assert not table.made_by_a_user(os.stat("/proc/self/ns/net").st_ino)
    finally:
        table.close()
        for proc in (holder, user):
            proc.kill()
            proc.wait()
        user.stdout.close()
