"""Real servers from Debian packages as test subjects (scripts/setup --test
installs nginx-light, socat and redis-server without starting them), and
the loopback helpers the tests around them share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from procs import kill_quietly, patience, until


def need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/setup --test installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close_wait(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "close-wait", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    kids: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        kids.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def connect_and_close(port: int, count: int) -> None:
    """All connected first, then all closed: their CLOSE_WAITs begin
    together, however slowly this process is scheduled."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for conn in conns:
        conn.close()


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=64;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(directory: Path) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """A real nginx, a master and one worker, serving "ok" on a free
    loopback port from ``directory``: yields (master, worker pid, port).
    Stopped after, its worker too (even a stopped one: SIGKILL)."""
    binary = need("nginx")
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=directory, port=port))
    master = subprocess.Popen([binary, "-c", str(conf), "-p", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert until(lambda: len(descendants(master.pid)) == 1, 10)
        yield master, descendants(master.pid).pop(), port
    finally:
        workers = descendants(master.pid)  # before the master goes (they are reparented)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped worker hears the QUIT
        master.send_signal(signal.SIGQUIT)
        try:
            master.wait(patience(10))
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        for pid in workers:
            kill_quietly(pid)
