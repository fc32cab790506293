"""Benchmark actors.  Run inside the benchmark's own network namespace.

  workload.py hold CONNS         CONNS idle established loopback connections
                                 (both ends held here: 2 fds each)
  workload.py leaker TAG         a server that accepts 3 connections, reads
                                 each to its EOF and never closes them (the
                                 eof-ignored leak); on SIGTERM prints the
                                 CLOCK_MONOTONIC time and exits
  workload.py leak PORT          connects 3 clients, closes them on "close",
                                 prints the CLOCK_MONOTONIC time of the close
  workload.py slowclose RATE SECONDS
                                 RATE connections/s for SECONDS, each closed by
                                 its server 0.5-1 s after the client closed:
                                 slow but healthy (soak.py --slow-close)
  workload.py chatter EVERY      one loopback connection that exchanges a
                                 byte every EVERY seconds: a namespace whose
                                 TCP counters never stand still (bench.py
                                 --chatter runs it in the host's)
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def hold(conns: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    held = []
    for _ in range(conns):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        held += (c, s)
    print(f"READY held={conns} pid={os.getpid()}", flush=True)
    sys.stdin.read()


def leaker(_tag: str) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def on_term(_signo, _frame):
        print(f"SIGNAL {time.monotonic():.6f}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"READY port={srv.getsockname()[1]} pid={os.getpid()}", flush=True)
    held = [srv.accept()[0] for _ in range(3)]
    for conn in held:
        while conn.recv(4096):
            pass
    while held:
        time.sleep(3600)


def leak(port: str) -> None:
    clients = [socket.create_connection(("127.0.0.1", int(port))) for _ in range(3)]
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            for c in clients:
                c.close()
            print(f"CLOSED {time.monotonic():.6f}", flush=True)
            clients = []


def chatter(every: float) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    client = socket.create_connection(srv.getsockname())
    server, _ = srv.accept()
    print("READY", flush=True)
    while True:
        client.sendall(b"x")
        server.sendall(server.recv(1))
        client.recv(1)
        time.sleep(every)


def slowclose(rate: float, seconds: float) -> None:
    import random
    import threading

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]

    def handle(conn: socket.socket) -> None:
        while conn.recv(4096):
            pass
        time.sleep(random.uniform(0.5, 1.0))
        conn.close()

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    print(f"READY port={port}", flush=True)
    end, made = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        socket.create_connection(("127.0.0.1", port)).close()
        made += 1
        time.sleep(max(0.0, made / rate - (time.monotonic() - (end - seconds))))
    time.sleep(1.5)
    print(f"DONE {made}", flush=True)


if __name__ == "__main__":
    {"hold": lambda a: hold(int(a[0])), "leaker": lambda a: leaker(a[0]),
     "leak": lambda a: leak(a[0]),
     "slowclose": lambda a: slowclose(float(a[0]), float(a[1])),
     "chatter": lambda a: chatter(float(a[0]))}[sys.argv[1]](sys.argv[2:])
