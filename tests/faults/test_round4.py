"""#31 (security, round four), with real processes: a user's deep process
tree cannot blind the loop.  The attacker is `nobody` (through setpriv: no
user is made).  The fake-host versions, and the other findings, are in
tests/unit/test_round4.py; docs/faults.md has the table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

# A chain of DEPTH processes, each waiting for the next; at its bottom a
# server whose 4 accepted sockets (their EOF read: eof-ignored) it shares
# with HOLDERS - 1 forked children.  READY once all are in place.
TREE = r"""
import os, signal, socket, sys
depth, holders = int(sys.argv[1]), int(sys.argv[2])
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(8)
for _ in range(depth):
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        os._exit(0)
held = []
for _ in range(4):
    c = socket.create_connection(lst.getsockname())
    a = lst.accept()[0]
    c.close()
    a.recv(1)
    held.append(a)
for _ in range(holders - 1):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
print("READY", flush=True)
signal.pause()
"""


class Pings:
    """The watch's WATCHDOG=1 datagrams (one per loop turn, at most every
    10 ms with WATCHDOG_USEC=20000), with their arrival times."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.times: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.times.append(time.monotonic())

    def longest_gap(self, since: float) -> float:
        t = [since] + [x for x in self.times if x >= since] + [time.monotonic()]
        return max(b - a for a, b in zip(t, t[1:]))


@pytest.mark.alone
def test_1_a_users_deep_tree_of_shared_holders_never_blinds_the_loop(actors, tag, resreap_bin):
    """201 of nobody's processes share 4 leaked sockets below a chain of 200:
    each decision walked every co-holder's ancestry to init, the loop made
    no turn for 35 s or more, and a leak elsewhere was not reaped (then the
    watchdog restarted it into the same stall).  Now the tenant is spared
    at one read each, and the fenced leak is reaped at its grace; the
    loop's turns go on (the figure is the benchmark's: bench/loopgap.py)."""
    work = tempfile.mkdtemp(prefix="rr-round4-")
    tree = subprocess.Popen([*NOBODY, sys.executable, "-c", TREE, "200", "201"],
                            stdout=subprocess.PIPE, text=True, cwd="/", start_new_session=True)
    run = None
    try:
        assert tree.stdout.readline().strip() == "READY"
        pings = Pings(f"{work}/notify")
        env = dict(os.environ, NOTIFY_SOCKET=f"{work}/notify", WATCHDOG_USEC="20000")
        run = WatchRun(resreap_bin, "-f", tag.split("=")[1], "-i", "2", env=env)
        run.wait_for(lambda e: e["event"] == Event.START)
        since = time.monotonic()
        server = actors("leaky-server", "127.0.0.1", tag)
        actors("clients", "127.0.0.1", server.port, 2, tag).send("close", "CLOSED")
        # The tenant's sockets counted at start + 2 s: the loop judged them
        # all by now, and a leak that came meanwhile is reaped on time.
        run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=15)
        time.sleep(3)
        assert len([t for t in pings.times if t >= since]) > 10
        assert pings.longest_gap(since) < 5.0     # before: no turn for 35 s and more
        assert not run.find(lambda e: e["event"] == Event.REAP and e["pid"] != server.pid)
    finally:
        if run is not None:
            run.stop()
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait()
        subprocess.run(["rm", "-rf", work], check=False)
