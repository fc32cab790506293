"""Real processes that play servers and clients in the tests.

Run as ``python actors.py ROLE [args]``.  Each prints ``READY key=value ...``
on stdout once set up, then obeys one-word commands on stdin (so the test
decides when things happen) and exits when stdin closes.  Nothing here ever
talks to an address other than the one the test passes (loopback, or an
address inside a network namespace the test made).
"""

from __future__ import annotations

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


def accept_each(srv: socket.socket, handle) -> None:
    """In a daemon thread: accept connections until the listener closes,
    handing each to ``handle``."""
    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            handle(conn)

    threading.Thread(target=loop, daemon=True).start()


def commands():
    for line in sys.stdin:
        yield line.split()


def read_to_eof(conn: socket.socket) -> None:
    """Read until the peer's FIN (recv returns b''), then keep the socket:
    the classic leak, an EOF seen and ignored."""
    def drain():
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()


def leaky_server(host: str, mode: str = "eof") -> None:
    """Accepts and never closes: the socket leak resreap exists for.  It
    reads each connection to its EOF; mode ``unread`` never reads (a pool
    that forgot its idle connections: the FIN stays unread)."""
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
            if mode == "eof":
                read_to_eof(conn)

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
            for fd in fds:
                held.append(socket.socket(fileno=fd))
                read_to_eof(held[-1])
    child_end.close()

    def handle(conn):
        socket.send_fds(parent_end, [b"x"], [conn.fileno()])
        conn.close()

    accept_each(srv, handle)
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

    def handle(conn):
        conn.recv(1)
        conn.close()

    accept_each(srv, handle)
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


def set_comm(name: str) -> None:
    """This process's comm (prctl PR_SET_NAME): tell processes apart in a
    trace by name, not only by pid."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(15, name.encode(), 0, 0, 0)


def churn_server(host: str) -> None:
    """Accepts, reads to the peer's FIN, closes: each connection passes
    through CLOSE_WAIT for as long as that takes (its comm: churn-srv)."""
    set_comm("churn-srv")
    srv = listen(host, 4096)
    say(port=srv.getsockname()[1], pid=os.getpid())

    def loop():
        while True:
            conn, _ = srv.accept()
            while conn.recv(4096):
                pass
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    for _ in commands():
        pass


def churn_clients(host: str, port: str, seconds: str, paced: str = "") -> None:
    """Connects and closes at once, as fast as it can, for SECONDS: the
    peer of churn-server, in another process (its comm: churn-cli).  With
    PACED ("paced"), each connection waits for the server's close before the
    next: one socket at most in CLOSE_WAIT however the two are scheduled
    (without, a starved server's accept queue fills with them)."""
    set_comm("churn-cli")
    say(pid=os.getpid())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    made, began = 0, time.monotonic()
    while time.monotonic() - began < float(seconds):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, int(port)))
        if paced:
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):
                pass
        c.close()
        made += 1
    print(f"DONE {made} {made / (time.monotonic() - began):.0f}", flush=True)
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


def big_http_server(host: str, megabytes: str = "64") -> None:
    """A stock http.server.ThreadingHTTPServer that answers every GET with a
    large body: healthy, and slow only when its clients are."""
    import http.server

    body = b"x" * (int(megabytes) << 20)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *_args):
            pass

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    http.server.ThreadingHTTPServer.address_family = family
    srv = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    say(port=srv.server_address[1], pid=os.getpid())
    for _ in commands():
        pass
    srv.shutdown()


def slow_readers(host: str, port: str, count: str) -> None:
    """Attack 1: COUNT clients each send a request, half-close (FIN) and then
    read the answer slowly, 4 KiB every 0.1 s."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    conns = []
    for _ in range(int(count)):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect((host, int(port)))
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        conns.append(c)
    got = [0]
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for c in conns:
                try:
                    got[0] += len(c.recv(4096))
                except OSError:
                    pass
            time.sleep(0.1)

    threading.Thread(target=trickle, daemon=True).start()
    say(pid=os.getpid())
    for cmd in commands():
        if cmd[0] == "got":
            print(f"GOT {got[0]}", flush=True)
    stop.set()


def busy_server(host: str, work: str = "3") -> None:
    """A healthy single-threaded server: WORK seconds per request, one at a
    time; its accept queue waits meanwhile."""
    srv = listen(host)
    served = [0]

    def handle(conn):
        with conn:
            request = conn.recv(65536)
            if request:
                time.sleep(float(work))
                try:
                    conn.sendall(b"done " + request)
                except OSError:
                    pass
            served[0] += 1

    accept_each(srv, handle)
    say(port=srv.getsockname()[1], pid=os.getpid())
    for cmd in commands():
        if cmd[0] == "served":
            print(f"SERVED {served[0]}", flush=True)
    srv.close()


def request(host: str, port: str, text: str = "hello") -> None:
    """One client that sends a request and prints the full reply."""
    c = socket.create_connection((host, int(port)))
    say(pid=os.getpid())
    c.sendall(text.encode())
    c.settimeout(30)
    reply = b""
    try:
        while chunk := c.recv(65536):
            reply += chunk
    except OSError:
        pass
    print(f"REPLY {reply.decode(errors='replace') or '-'}", flush=True)
    for _ in commands():
        pass


def connect_and_close(host: str, port: str, count: str) -> None:
    """COUNT connections that close at once: they wait, closed, in the
    server's accept queue."""
    for _ in range(int(count)):
        socket.create_connection((host, int(port))).close()
    say(pid=os.getpid())
    for _ in commands():
        pass


def holder_daemon(path: str) -> None:
    """Stands for a daemon of another user that keeps fds it is sent over a
    unix socket (dbus-daemon holds the fds of queued messages)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    os.chmod(path, 0o777)
    held = []

    def receive():
        while True:
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(srv, 16, 8)
            except OSError:
                return
            held.extend(fds)

    threading.Thread(target=receive, daemon=True).start()
    say(pid=os.getpid(), uid=os.getuid())
    for cmd in commands():
        if cmd[0] == "count":
            print(f"COUNT {len(held)}", flush=True)


def fd_injector(path: str, count: str) -> None:
    """Attack 3: makes COUNT sockets of its own reach CLOSE_WAIT with their
    EOF read (the strongest evidence there is), sends them to PATH and
    closes its own copies: the receiver alone holds them."""
    srv = listen("127.0.0.1")
    port = srv.getsockname()[1]
    mine = [socket.create_connection(("127.0.0.1", port)) for _ in range(int(count))]
    for _ in mine:
        srv.accept()[0].close()          # the peer closes: ours go to CLOSE_WAIT
    for c in mine:
        c.settimeout(5)
        c.recv(1)                        # read the EOF: "eof-ignored"
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out.connect(path)
    for c in mine:
        socket.send_fds(out, [b"x"], [c.fileno()])
        c.close()
    say(pid=os.getpid(), uid=os.getuid(), port=port)
    for _ in commands():
        pass


def twin_churn(host: str, port: str, cports: str) -> None:
    """Attack 4, inside another network namespace: sockets with exactly the
    4-tuples of a leak elsewhere (server HOST:PORT, clients on CPORTS) pass
    through CLOSE_WAIT again and again until told "stop": the peer
    half-closes, waits, then resets (no TIME_WAIT: the 4-tuple is free again
    at once).  Answers "DONE cycles"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)

    def handle(conn):
        # Reset children stay in the queue until accepted: take them, and
        # close each well after its peer's reset.
        threading.Timer(1.0, conn.close).start()

    accept_each(srv, handle)
    stop, cycles = threading.Event(), [0]
    linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")

    def churn():
        while not stop.is_set():
            conns = []
            for cport in cports.split(","):
                c = socket.socket(family, socket.SOCK_STREAM)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                c.bind((host, int(cport)))
                c.connect((host, int(port)))
                c.shutdown(socket.SHUT_WR)   # the twin enters CLOSE_WAIT
                conns.append(c)
            time.sleep(0.3)
            for c in conns:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                c.close()                    # RST: the twin leaves CLOSE_WAIT
            cycles[0] += 1
            time.sleep(0.05)

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    say(pid=os.getpid())
    for words in commands():
        if words == ["stop"]:
            stop.set()
            worker.join(5)
            print(f"DONE {cycles[0]}", flush=True)


def closing_server(host: str) -> None:
    """Accepts and closes at once: its clients' ends go to CLOSE_WAIT."""
    srv = listen(host)

    def handle(conn):
        conn.close()

    accept_each(srv, handle)
    say(port=srv.getsockname()[1], pid=os.getpid())
    for _ in commands():
        pass


def eof_clients(host: str, port: str, count: str) -> None:
    """A client-side leak (a pool): on ``go`` it connects COUNT times to a
    server that closes at once, reads each EOF, and keeps the sockets.  No
    listener of its own: only a scan of every process finds its sockets."""
    say(pid=os.getpid())
    held = []
    for cmd in commands():
        if cmd[0] == "go":
            for _ in range(int(count)):
                c = socket.create_connection((host, int(port)))
                c.settimeout(5)
                c.recv(1)  # the EOF
                held.append(c)
            print("HELD", flush=True)


def fd_hogs(processes: str, fds: str) -> None:
    """PROCESSES processes with FDS open descriptors each (dups of
    /dev/null): huge fd tables that make a scan of every process slow."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = os.open("/dev/null", os.O_RDONLY)
    want = min(int(fds), hard - 16)
    for _ in range(want - 4):
        os.dup(base)
    stay_r, stay_w = os.pipe()
    children = []
    for _ in range(int(processes) - 1):
        pid = os.fork()
        if pid == 0:
            os.close(stay_w)
            os.read(stay_r, 1)  # returns when the parent is gone
            os._exit(0)
        children.append(pid)
    say(pid=os.getpid(), children=",".join(map(str, children)))
    for _ in commands():
        pass
    os.close(stay_w)
    for pid in children:
        os.waitpid(pid, 0)


def in_flight(count: str) -> None:
    """COUNT CLOSE_WAIT sockets (EOF read) sent into a unix socket that no
    one reads, own copies closed: in flight, held by no process."""
    srv = listen("127.0.0.1")
    mine = [socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
            for _ in range(int(count))]
    for _ in mine:
        srv.accept()[0].close()
    for c in mine:
        c.settimeout(5)
        c.recv(1)
    limbo_a, limbo_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for c in mine:
        socket.send_fds(limbo_a, [b"x"], [c.fileno()])
        c.close()
    say(pid=os.getpid())
    for _ in commands():
        pass
    limbo_b.close()


def slow_closers(host: str, count: str) -> None:
    """COUNT connections, each closed by the server 0.5-1 s after its peer
    closed: slow but healthy (every socket does leave CLOSE_WAIT)."""
    import random

    srv = listen(host)
    port = srv.getsockname()[1]
    closed = threading.Semaphore(0)

    def finish(conn):
        conn.close()
        closed.release()

    def handle(conn):
        read_to_eof(conn)
        threading.Timer(random.uniform(0.5, 1.0), finish, (conn,)).start()

    accept_each(srv, handle)
    say(port=port, pid=os.getpid())
    for _ in range(int(count)):
        socket.create_connection((host, port)).close()
        time.sleep(0.005)
    for _ in range(int(count)):
        closed.acquire(timeout=30)
    print("DONE", flush=True)
    for _ in commands():
        pass


def limited_server(host: str, fd_limit: str, mode: str = "leak") -> None:
    """A server whose soft RLIMIT_NOFILE is FD_LIMIT: mode ``leak`` reads
    each connection to its EOF and keeps it (the article's outage, at its
    clients' pace), ``healthy`` closes it once read.  Prints ``EMFILE
    <CLOCK_MONOTONIC>`` at its first accept() refused for want of an fd;
    ``fds`` prints its fds in use."""
    import errno
    import resource

    set_comm(f"lim-{mode}")  # apart in the metrics' per-holder labels
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(fd_limit), hard))
    srv = listen(host)
    held = []  # the leak: references kept, so nothing closes them

    def serve(conn):
        if mode == "leak":
            held.append(conn)

        def run():
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            if mode == "healthy":
                conn.close()
        threading.Thread(target=run, daemon=True).start()

    def loop():
        told = False
        while True:
            try:
                conn, _ = srv.accept()
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    return
                if not told:
                    print(f"EMFILE {time.monotonic():.3f}", flush=True)
                    told = True
                time.sleep(0.05)
                continue
            serve(conn)

    threading.Thread(target=loop, daemon=True).start()
    say(port=srv.getsockname()[1], pid=os.getpid())
    for cmd in commands():
        if cmd[0] == "fds":
            print(f"FDS {len(os.listdir('/proc/self/fd')) - 1}", flush=True)


def paced_clients(host: str, port: str, every: str, burst: str = "1") -> None:
    """On ``go``: BURST connections every EVERY seconds, each closed at
    once (a leaking server keeps its end); prints ``GO <CLOCK_MONOTONIC>``.
    Until stdin closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    say(pid=os.getpid())

    def pace():
        began = time.monotonic()
        print(f"GO {began:.3f}", flush=True)
        for i in range(1_000_000):
            for _ in range(int(burst)):
                c = socket.socket(family, socket.SOCK_STREAM)
                c.settimeout(1)
                try:
                    c.connect((host, int(port)))
                except OSError:
                    pass
                c.close()
            time.sleep(max(0.0, began + (i + 1) * float(every) - time.monotonic()))

    for cmd in commands():
        if cmd[0] == "go":
            threading.Thread(target=pace, daemon=True).start()


def pod_leaker(host: str, port: str) -> None:
    """The leaky server as it runs in a pod: on a port the test chose (a
    hostNetwork pod), with no stdin to obey; it reads each EOF and keeps the
    socket until it is killed.  It claims to be another pod in every way a
    process can (its environment, and its comm): none of it may count."""
    import ctypes

    os.environ.update(HOSTNAME="victim-0", POD_NAME="victim-0", POD_NAMESPACE="other")
    set_comm("victim-0")
    # Its own hostname too: a user and UTS namespace of its own (no
    # privilege needed), where it may name itself anything.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x04000000) == 0:  # CLONE_NEWUSER | CLONE_NEWUTS
        libc.sethostname(b"victim-0", 8)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)
    held = []
    while True:
        conn, _ = srv.accept()
        held.append(conn)
        read_to_eof(conn)


ROLES = {
    "pod-leaker": pod_leaker,
    "limited-server": limited_server,
    "paced-clients": paced_clients,
    "closing-server": closing_server,
    "churn-server": churn_server,
    "churn-clients": churn_clients,
    "eof-clients": eof_clients,
    "fd-hogs": fd_hogs,
    "in-flight": in_flight,
    "slow-closers": slow_closers,
    "big-http-server": big_http_server,
    "slow-readers": slow_readers,
    "busy-server": busy_server,
    "request": request,
    "connect-and-close": connect_and_close,
    "holder-daemon": holder_daemon,
    "fd-injector": fd_injector,
    "twin-churn": twin_churn,
    "flood": flood,
    "fork-storm": fork_storm,
    "leaky-server": leaky_server,
    "stuck-server": stuck_server,
    "passing-server": passing_server,
    "clients": clients,
    "ignoring-server": ignoring_server,
}

if __name__ == "__main__":
    import resource

    # Thousands of connections for a test that asks for them.
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    # tag=... arguments only mark the command line (for -f in tests).
    ROLES[sys.argv[1]](*[a for a in sys.argv[2:] if not a.startswith("tag=")])
