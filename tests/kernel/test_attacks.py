"""Attacks on the leak policy (issue #10), at the DEFAULT policy: a remote
peer or a local user shapes sockets so that resreap kills a healthy
process, or hides a real leak from it.  And the true leaks that must still
be reaped at the defaults.  Real processes, real users, real namespaces."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid

import pytest

from procs import Actor, patience
from watchrun import WatchRun, backend_args
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel]

GRACE = 2.0          # the default -i
STALL = 60.0         # the default --stall
CALM = 3 * GRACE + 1  # no healthy victim may be reaped within 3x the grace
# The polling backend detects up to one interval (grace / 2) late.
LATE = {"bpf": 0.0, "proc": GRACE / 2}


# What an event source changes (timing, identity) runs on BPF and polling
# (sock_diag); the policy, the same whatever the source, on BPF (and at
# length on the fake host: tests/unit/test_scenarios.py).
EACH_BACKEND = ("bpf", "proc")


@pytest.fixture
def watch(watch_runs, backend):
    """``resreap watch`` with the default policy: only -f (to stay away
    from the machine's other processes) and -D (to see the evidence)."""
    flags, env = backend_args(backend)

    def start(tag: str, *args) -> WatchRun:
        return watch_runs.start(*flags, "-f", tag.split("=")[1], "-D", *args, env=env)

    yield start
    for run, status in watch_runs.stop():
        assert status == 0, "\n".join(run.lines[-50:])


def reaped(run: WatchRun, pid: int) -> list[dict]:
    return run.find(lambda e: e["event"] in (Event.REAP, Event.WOULD_REAP) and e.get("pid") == pid)


def timer_said(run: WatchRun, verdict: str, evidence: str) -> bool:
    """A -D timer line: a socket's deadline showed this evidence."""
    return bool(run.find(lambda e: e["event"] == Event.TIMER and e["verdict"] == verdict
                         and e.get("evidence") == evidence))


def close_wait(port: int, netns: str | None = None) -> int:
    """Sockets in CLOSE_WAIT on local port ``port`` (ss, for the test's own
    check that the attack really happened)."""
    argv = ["ss", "-Htn", "state", "close-wait", f"( sport = :{port} )"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_half_close_and_slow_read_never_kills_the_server(watch, actors, tag):
    """Attack 1: two clients of a stock ThreadingHTTPServer ask for a 64 MB
    body, half-close, and read slowly.  The server's sockets sit in
    CLOSE_WAIT with unacked data: the peer is the slow side."""
    server = actors("big-http-server", "127.0.0.1", "64", tag)
    run = watch(tag)
    readers = actors("slow-readers", "127.0.0.1", server.port, 2, tag)
    time.sleep(patience(CALM))
    assert server.alive() and not reaped(run, server.pid)
    assert close_wait(server.port) >= 2, "the attack did not put the server in CLOSE_WAIT"
    assert timer_said(run, "waiting", "sending")
    assert int(readers.send("got", "GOT").split()[1]) > 0  # they really read


def test_busy_accept_queue_never_kills_a_healthy_server(watch, actors, tag):
    """Attack 2: a single-threaded server doing 3 s of work per request; one
    real request, then two connect-and-close sitting in its accept queue."""
    server = actors("busy-server", "127.0.0.1", "3", tag)
    run = watch(tag)
    legit = actors("request", "127.0.0.1", server.port, "hello")
    time.sleep(patience(0.3))
    actors("connect-and-close", "127.0.0.1", server.port, 2)
    assert legit.expect("REPLY", timeout=15) == "REPLY done hello"
    time.sleep(patience(CALM - 3))
    assert server.alive() and not reaped(run, server.pid)
    assert timer_said(run, "waiting", "queued")
    assert int(server.send("served", "SERVED").split()[1]) == 3  # it drained its queue


@pytest.fixture
def two_users():
    """Two unprivileged users, made for the test and removed after it."""
    made = []
    for role in ("a", "b"):
        name = f"rrt{role}{uuid.uuid4().hex[:8]}"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "--user-group", name], check=True)
        made.append(name)
    try:
        yield [(int(subprocess.check_output(["id", "-u", n])), int(subprocess.check_output(["id", "-g", n])))
               for n in made]
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False)
            subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


def test_sockets_passed_to_another_users_daemon_never_count(watch, actors, tag, two_users):
    """Attack 3: an unprivileged user passes CLOSE_WAIT sockets (EOF read:
    the strongest evidence) over SCM_RIGHTS to a daemon of another user,
    which keeps them the way dbus-daemon keeps queued messages' fds."""
    attacker, victim = two_users
    where = tempfile.mkdtemp(prefix="resreap-t-")
    os.chmod(where, 0o777)
    path = f"{where}/bus"
    daemon = Actor("holder-daemon", path, tag, user=victim)
    injector = None
    try:
        run = watch(tag)
        injector = Actor("fd-injector", path, 2, tag, user=attacker)
        deadline = time.monotonic() + patience(5)
        while daemon.send("count", "COUNT") != "COUNT 2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.send("count", "COUNT") == "COUNT 2"
        time.sleep(patience(CALM))
        assert daemon.alive() and not reaped(run, daemon.pid)
        foreign = run.find(lambda e: e["event"] == Event.FOREIGN and e["pid"] == daemon.pid)
        assert foreign and foreign[0]["socket_uid"] == attacker[0]
        assert close_wait(int(injector.facts["port"])) == 0  # ours are the peers' ends
    finally:
        for actor in (injector, daemon):
            if actor is not None:
                actor.reap()
        subprocess.run(["rm", "-rf", where], check=False)


@pytest.mark.each_backend
def test_a_twin_in_another_namespace_cannot_shadow_a_leak(watch, actors, tag, make_netns, backend):
    """Attack 4: a leak in one network namespace, while sockets with exactly
    its 4-tuples go in and out of CLOSE_WAIT in another.  The twins' exits
    must not erase the leak's timers: it is reaped on time."""
    here, there = make_netns(), make_netns()
    server = actors("leaky-server", "127.0.0.1", tag, netns=here)
    client = actors("clients", "127.0.0.1", server.port, 3, tag, netns=here)
    twin = actors("twin-churn", "127.0.0.1", server.port, client.facts["ports"], tag,
                  netns=there)
    run = watch(tag)
    time.sleep(patience(1))
    client.send("close", "CLOSED")
    closed = time.monotonic()
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid,
                        timeout=GRACE + 1 + LATE[backend])
    assert time.monotonic() - closed <= patience(GRACE + 1 + LATE[backend])
    assert server.wait_dead(5) and client.alive() and twin.alive()
    assert reap["evidence"].startswith("eof-ignored:")
    done = twin.send("stop", "DONE")
    assert int(done.split()[1]) >= 5  # the twins churned all along


# -- true leaks, at the defaults ------------------------------------------


def test_fd_percent_waits_for_real_harm(watch, actors, tag):
    """--fd-percent 50: two leaked sockets of a process allowed 100 fds do
    not take it down; sixty do."""
    import resource

    server = actors("leaky-server", "127.0.0.1", tag)
    _soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (100, hard))
    few = actors("clients", "127.0.0.1", server.port, 2, tag)
    many = actors("clients", "127.0.0.1", server.port, 60, tag)
    run = watch(tag, "-i", "0.5", "--fd-percent", "50")
    few.send("close", "CLOSED")
    assert run.wait_for(lambda e: e["event"] == Event.BELOW and e["pid"] == server.pid
                        and e["why"] == "fd-percent" and e["count"] == 2
                        and e["fd_limit"] == 100)
    assert server.alive() and not reaped(run, server.pid)
    many.send("close", "CLOSED")
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=5)
    assert reap["count"] >= 50


@pytest.mark.each_backend
def test_eof_ignored_leak_is_reaped_within_grace(watch, actors, tag, backend):
    server = actors("leaky-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = watch(tag)
    client.send("close", "CLOSED")
    closed = time.monotonic()
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid,
                        timeout=GRACE + 1 + LATE[backend])
    assert time.monotonic() - closed <= patience(GRACE + 1 + LATE[backend])
    assert reap["evidence"] == "eof-ignored:2"
    assert run.outcome(server.pid)["result"] == "terminated"


def test_unread_leak_waits_for_the_stall(watch, actors, tag):
    """A pool that never reads its idle connections' FIN: counts after
    --stall, not after -i (shortened to 4 s here)."""
    server = actors("leaky-server", "127.0.0.1", "unread", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = watch(tag, "--stall", "4")
    client.send("close", "CLOSED")
    closed = time.monotonic()
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=6)
    assert time.monotonic() - closed >= 4
    assert reap["evidence"] == "unread:2"
    assert timer_said(run, "waiting", "unread")


def test_hung_accept_queue_is_reaped_after_the_stall(watch, actors, tag):
    """A server that stopped calling accept(): its queue counts after the
    stall period, and not before (shortened to 4 s; the default, 60 s, is
    tests/unit/test_scenarios.py::test_the_default_stall_for_a_hung_accept_queue)."""
    server = actors("stuck-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = watch(tag, "--stall", "4")
    client.send("close", "CLOSED")
    closed = time.monotonic()
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=6)
    assert time.monotonic() - closed >= 4
    assert reap["evidence"] == "queued:2"
