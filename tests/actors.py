"""Real processes that play servers and clients in the tests.

Run as ``python actors.py ROLE [args]``.  Each prints ``READY key=value ...``
on stdout once set up, then obeys one-word commands on stdin (so the test
decides when things happen) and exits when stdin closes.  Nothing here ever
talks to an address other than the one the test passes (loopback, or an
address inside a network namespace the test made).
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
import threading
import time


def say(**facts) -> None:
    print("READY " + " ".join(f"{k}={v}" for k, v in facts.items()), flush=True)


def listen(host: str, backlog: int = 512) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(backlog)
    return srv


def commands():
    for line in sys.stdin:
        yield line.split()


def leaky_server(host: str) -> None:
    """Accepts and never closes: the socket leak resreap exists for."""
    srv = listen(host)
    held = []
    stop = threading.Event()

    def accept_forever():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept_forever, daemon=True).start()
    say(port=srv.getsockname()[1], pid=os.getpid())
    children = []
    for cmd in commands():
        if cmd[0] == "count":
            print(f"COUNT {len(held)}", flush=True)
        elif cmd[0] == "close":  # the fix: close what was leaked
            for conn in held:
                conn.close()
            held.clear()
            print("CLOSED", flush=True)
        elif cmd[0] == "fork":  # a child that shares every socket
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.setsid()
                while True:
                    time.sleep(60)
            children.append(pid)
            print(f"CHILD {pid}", flush=True)
    stop.set()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def stuck_server(host: str) -> None:
    """Listens and never calls accept(): a hung server whose connections
    wait in the accept queue without an inode."""
    srv = listen(host)
    say(port=srv.getsockname()[1], pid=os.getpid())
    for _ in commands():
        pass
    srv.close()


def passing_server(host: str) -> None:
    """Accepts, then passes each connection over a unix socket to a worker
    process and closes its own copy: the worker alone holds it."""
    srv = listen(host)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    worker = os.fork()
    if worker == 0:
        srv.close()
        parent_end.close()
        held = []
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(child_end, 16, 4)
            if not msg:
                return
            held.extend(socket.socket(fileno=fd) for fd in fds)
    child_end.close()

    def accept_forever():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            socket.send_fds(parent_end, [b"x"], [conn.fileno()])
            conn.close()

    threading.Thread(target=accept_forever, daemon=True).start()
    say(port=srv.getsockname()[1], pid=os.getpid(), worker=worker)
    for _ in commands():
        pass
    os.kill(worker, signal.SIGKILL)
    os.waitpid(worker, 0)


def clients(host: str, port: str, count: str) -> None:
    """Opens COUNT connections; ``close`` closes them first (so the server's
    ends go to CLOSE_WAIT), and the client itself stays alive."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    conns = []
    for _ in range(int(count)):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, int(port)))
        conns.append(c)
    ports = ",".join(str(c.getsockname()[1]) for c in conns)
    say(pid=os.getpid(), ports=ports)
    for cmd in commands():
        if cmd[0] == "close":
            n = int(cmd[1]) if len(cmd) > 1 else len(conns)
            for c in conns[:n]:
                c.close()
            del conns[:n]
            print("CLOSED", flush=True)


def ignoring_server(host: str, names: str = "TERM") -> None:
    """A leaky server that ignores some signals (a JVM in a coma)."""
    for name in names.split(","):
        signal.signal(getattr(signal, "SIG" + name), signal.SIG_IGN)
    leaky_server(host)


def flood(host: str, seconds: str) -> None:
    """Connections that pass through CLOSE_WAIT as fast as Python can make
    them (client closes first, server closes on EOF), for SECONDS."""
    srv = listen(host, 4096)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    say(port=port, pid=os.getpid())
    made, end = 0, time.monotonic() + float(seconds)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < end:
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, port))
        c.close()
        made += 1
    print(f"DONE {made}", flush=True)
    for _ in commands():
        pass


def fork_storm(seconds: str) -> None:
    """Processes starting and exiting as fast as fork allows."""
    say(pid=os.getpid())
    made, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        made += 1
    print(f"DONE {made}", flush=True)
    for _ in commands():
        pass


ROLES = {
    "flood": flood,
    "fork-storm": fork_storm,
    "leaky-server": leaky_server,
    "stuck-server": stuck_server,
    "passing-server": passing_server,
    "clients": clients,
    "ignoring-server": ignoring_server,
}

if __name__ == "__main__":
    # tag=... arguments only mark the command line (for -f in tests).
    ROLES[sys.argv[1]](*[a for a in sys.argv[2:] if not a.startswith("tag=")])
