"""watch against real leaking processes: the right one dies, peers live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from procs import patience, pid_alive, until
from watchrun import WatchRun, backend_args
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel]

FAST = ["-i", "0.5", "-w", "0.5"]


# Tests of what an event source changes (``each_backend``) run against
# every source (EVERY_BACKEND, tests/conftest.py); the policy and the kill
# engine, the same whatever the source (and tested on the fake host,
# tests/unit/test_scenarios.py), on BPF.


@pytest.fixture
def watch(watch_runs, backend):
    flags, env = backend_args(backend)

    def start(*args) -> WatchRun:
        run = watch_runs.start(*flags, *args, env=env)
        assert run.find(lambda e: e["event"] == Event.START)[0]["backend"] == flags[1]
        return run

    yield start
    for run, status in watch_runs.stop():
        assert status == 0, "\n".join(run.lines)


def leak(actors, role, host, tag, n=3, netns=None):
    server = actors(role, host, tag, netns=netns)
    client = actors("clients", host, server.port, n, tag, netns=netns)
    return server, client


def wait_dead(pid, timeout=10):
    return until(lambda: not pid_alive(pid), timeout)


@pytest.mark.each_backend
@pytest.mark.parametrize("role,host", [("leaky-server", "127.0.0.1"), ("leaky-server", "::1"),
                                       ("stuck-server", "127.0.0.1")])
def test_leaker_is_reaped_and_its_peer_survives(watch, actors, tag, role, host):
    server, client = leak(actors, role, host, tag)
    # A hung accept queue counts after --stall (default 60 s: test_attacks).
    stall = ["--stall", "1"] if role == "stuck-server" else []
    run = watch("-f", tag.split("=")[1], *FAST, *stall)
    client.send("close", "CLOSED")
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid)
    # Reaped the moment the 2nd socket counts; the 3rd may count in the same wakeup.
    assert reap["count"] in (2, 3) and reap["limit"] == 2 and reap["oldest"] >= 0.5
    assert run.outcome(server.pid)["result"] == "terminated"
    assert server.wait_dead(5)
    assert client.alive()
    assert not run.find(lambda e: e["event"] in ("reap", "would-reap") and e["pid"] == client.pid)


@pytest.mark.each_backend
def test_leaker_in_a_network_namespace(watch, actors, tag, netns):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag, netns=netns)
    run = watch("-f", tag.split("=")[1], *FAST)
    client.send("close", "CLOSED")
    assert run.outcome(server.pid)["result"] == "terminated"
    assert server.wait_dead(5) and client.alive()


@pytest.mark.each_backend
def test_fd_receiver_is_reaped_not_the_sender(watch, actors, tag):
    server, client = leak(actors, "passing-server", "127.0.0.1", tag)
    worker = int(server.facts["worker"])
    time.sleep(patience(0.2))  # accepted and passed on
    run = watch("-f", tag.split("=")[1], *FAST)
    client.send("close", "CLOSED")
    assert run.outcome(worker)["result"] == "terminated"
    assert wait_dead(worker)
    assert server.alive() and client.alive()


@pytest.mark.each_backend
def test_forked_holders_are_both_reaped(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    server.send("count", "COUNT")
    time.sleep(patience(0.1))  # the accept thread has taken both connections
    child = int(server.send("fork", "CHILD").split()[1])
    run = watch("-f", tag.split("=")[1], *FAST)
    client.send("close", "CLOSED")
    # The child first; the parent, which holds the same sockets, once the
    # child is gone and the leak remains (children-first, again_in later).
    assert run.outcome(child)["result"] == "terminated"
    assert run.outcome(server.pid, timeout=25)["result"] == "terminated"
    assert run.find(lambda e: e["event"] == Event.CHILDREN_FIRST and e["pid"] == server.pid)
    assert client.alive()


@pytest.mark.each_backend
def test_sockets_present_at_start_are_reaped(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    client.send("close", "CLOSED")
    time.sleep(patience(0.2))
    run = watch("-f", tag.split("=")[1], *FAST)
    assert run.wait_for(lambda e: e["event"] == Event.EXISTING)["sockets"] >= 3
    assert run.outcome(server.pid)["result"] == "terminated"


@pytest.mark.each_backend
def test_below_the_limit_survives(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag, n=1)
    run = watch("-f", tag.split("=")[1], "-D", *FAST)
    client.send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.BELOW and e["pid"] == server.pid
                 and e["why"] == "limit" and e["limit"] == 2)
    time.sleep(patience(0.5))
    assert server.alive()
    assert not run.find(lambda e: e["event"] == Event.REAP)


@pytest.mark.each_backend
def test_closing_within_the_grace_survives(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "-i", "1.5", "-D")
    client.send("close", "CLOSED")
    # Long enough for a poller (every 1.5/4 s) to see it, well inside the grace.
    run.wait_for(lambda e: e["event"] == Event.TRANSITION and e["kind"] == "enter")
    time.sleep(0.8)  # not scaled: the close must land inside the 1.5 s grace
    server.send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.TRANSITION and e["kind"] == "exit")
    time.sleep(patience(1.6))
    assert server.alive()
    assert not run.find(lambda e: e["event"] == Event.REAP)


def test_term_ignored_means_sigkill_after_wait(watch, actors, tag):
    server, client = leak(actors, "ignoring-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "-i", "0.5", "-w", "0.7")
    client.send("close", "CLOSED")
    out = run.outcome(server.pid)
    assert out["result"] == "killed" and out["signals"] == ["SIGTERM", "SIGKILL"]
    assert out["took"] >= 0.7
    assert server.wait_dead(5) and client.alive()


def test_first_signal_then_signal_then_sigkill(watch, actors, tag):
    server = actors("ignoring-server", "127.0.0.1", "QUIT,TERM", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = watch("-f", tag.split("=")[1], "-S", "QUIT", "-s", "TERM", "-i", "0.5", "-w", "0.3")
    client.send("close", "CLOSED")
    out = run.outcome(server.pid)
    assert out["signals"] == ["SIGQUIT", "SIGTERM", "SIGKILL"] and out["result"] == "killed"


def test_kills_run_concurrently(watch, actors, tag):
    """Both processes ignore SIGTERM: each sequence waits -w 5 s before
    SIGKILL.  Run one after the other, the second would start after the
    first ended; concurrent, both start before either ends.  No clock
    is read: it holds on a slow machine too."""
    pairs = [leak(actors, "ignoring-server", "127.0.0.1", tag) for _ in range(2)]
    run = watch("-f", tag.split("=")[1], "-i", "0.5", "-w", "5")
    for _, client in pairs:
        client.send("close", "CLOSED")
    for server, _ in pairs:
        assert run.outcome(server.pid, timeout=30)["result"] == "killed"
    pids = {server.pid for server, _ in pairs}
    reaps = run.find(lambda e: e["event"] == Event.REAP and e["pid"] in pids)
    outcomes = run.find(lambda e: e["event"] == Event.OUTCOME and e["pid"] in pids)
    assert len(reaps) == 2 and max(r["ts"] for r in reaps) < min(o["ts"] for o in outcomes)


def test_filter_mismatch_spares(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", "^no-such-command", "-D", *FAST)
    client.send("close", "CLOSED")
    spare = run.wait_for(lambda e: e["event"] == Event.SPARE and e["pid"] == server.pid)
    assert "-f" in spare["reason"]
    assert server.alive() and not run.find(lambda e: e["event"] == Event.REAP)


def test_ignored_endpoint_does_not_count(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    ports = client.facts["ports"].split(",")
    ignore = [a for p in ports[:2] for a in ("-F", f"127.0.0.1:{p}")]
    run = watch("-f", tag.split("=")[1], "-D", *ignore, *FAST)
    client.send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.BELOW and e["pid"] == server.pid)
    time.sleep(patience(0.5))
    assert server.alive() and not run.find(lambda e: e["event"] == Event.REAP)


def test_hook_gets_the_facts_in_its_environment(watch, actors, tag, tmp_path):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    facts = tmp_path / "facts"
    run = watch("-f", tag.split("=")[1], "-c", f"env | grep ^RESREAP_ > {facts}", *FAST)
    client.send("close", "CLOSED")
    out = run.outcome(server.pid)
    assert out["result"] == "terminated" and out["hook"] == "exit 0"
    reap = run.find(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid)[0]
    env = dict(line.split("=", 1) for line in facts.read_text().splitlines())
    # the limit is 2: the decision may come before the third socket counts
    assert env["RESREAP_PID"] == str(server.pid) and env["RESREAP_COUNT"] == str(reap["count"])
    assert reap["count"] >= 2 and env["RESREAP_EVIDENCE"] == reap["evidence"]
    assert env["RESREAP_COMM"] and tag in env["RESREAP_CMDLINE"]
    ports = client.facts["ports"].split(",")
    named = [p for p in ports if f"127.0.0.1:{server.port}->127.0.0.1:{p}" in env["RESREAP_SOCKETS"]]
    assert len(named) == reap["count"]


def test_hook_nonzero_spares_the_process(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "-c", "exit 3", *FAST)
    client.send("close", "CLOSED")
    out = run.outcome(server.pid)
    assert out["result"] == "spared" and out["hook"] == "exit 3" and out["signals"] == []
    assert server.alive()


def test_a_sparing_hook_is_asked_again_one_grace_later(watch, actors, tag, tmp_path):
    calls = tmp_path / "calls"
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], *FAST, "-c", f"date +%s.%N >> {calls}; exit 1")
    client.send("close", "CLOSED")
    deadline = time.monotonic() + patience(10)
    while time.monotonic() < deadline and (not calls.exists() or len(calls.read_text().split()) < 3):
        time.sleep(0.05)
    times = [float(t) for t in calls.read_text().split()]
    assert len(times) >= 3 and server.alive()
    # -i 0.5: looked at again after max(grace, 1 s), never at once
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:])), times
    run.wait_for(lambda e: len(run.find(lambda o: o["event"] == Event.OUTCOME
                                        and o["result"] == "spared")) >= 3)


def test_start_line_names_the_pid_filter(watch, actors, tag):
    server = actors("leaky-server", "127.0.0.1", tag)
    run = watch("-p", str(server.pid), *FAST)
    assert run.find(lambda e: e["event"] == Event.START)[0]["pid"] == [server.pid]


def test_hung_hook_is_cut_off(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "-c", "sleep 30", "--hook-timeout", "0.5", *FAST)
    client.send("close", "CLOSED")
    out = run.outcome(server.pid)
    assert out["result"] == "spared" and "timed out" in out["hook"] and out["took"] < 5
    assert server.alive()


def test_hostile_command_line_is_never_executed(watch, actors, tag, tmp_path):
    marker = tmp_path / "pwned"
    evil = f"tag=x;touch {marker};$(touch {marker})`touch {marker}`\n\x1b[2J"
    server = actors("leaky-server", "127.0.0.1", evil, tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    seen = tmp_path / "seen"
    run = watch("-f", tag.split("=")[1], "-c", f'printf %s "$RESREAP_CMDLINE" > {seen}', *FAST)
    client.send("close", "CLOSED")
    assert run.outcome(server.pid)["result"] == "terminated"
    assert not marker.exists()
    assert evil in seen.read_text()
    reap = run.wait_for(lambda e: e["event"] == Event.REAP)
    assert evil in reap["cmd"]  # JSON carries it exactly, escaped
    assert all("\x1b" not in line for line in run.lines)


def test_dry_run_kills_nothing(watch, actors, tag):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "-d", *FAST)
    client.send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.WOULD_REAP and e["pid"] == server.pid)
    assert run.outcome(server.pid)["result"] == "dry-run"
    time.sleep(patience(0.6))
    assert server.alive()


def test_text_log_file(resreap_bin, actors, tag, tmp_path, bpf_ready):
    server, client = leak(actors, "leaky-server", "127.0.0.1", tag)
    # In CLOSE_WAIT before the watch starts: all three found at start, one
    # age, so the reap counts all three (closed after it, one may arrive a
    # moment after the first two are due).
    client.send("close", "CLOSED")
    logfile = tmp_path / "resreap.log"
    proc = subprocess.Popen([resreap_bin, "watch", "-f", tag.split("=")[1], *FAST,
                             "--log-file", str(logfile)], stderr=subprocess.DEVNULL)

    def logged(word: str) -> bool:
        return logfile.exists() and word in logfile.read_text()

    try:
        assert server.wait_dead(20)
        assert until(lambda: logged(f"outcome pid={server.pid}"), 5)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(patience(15)) == 0
    text = logfile.read_text()
    reap = [ln for ln in text.splitlines() if " reap " in ln]
    assert len(reap) == 1 and f"pid={server.pid}" in reap[0] and "count=3" in reap[0]
    assert f"outcome pid={server.pid}" in text and "result=terminated" in text


@pytest.mark.parametrize("pidfd", [True, False])
def test_recycled_pid_is_never_signalled(monkeypatch, root_ready, pidfd):
    """The kill engine acts on pid + start time: a pid that now names
    another process (here: same pid, other start time) is left alone.  Also
    without pidfds (Linux < 5.3), where identity is re-checked right before
    each signal."""
    from resreap.host import procinfo, process
    from resreap.engine.killer import Target, execute
    from resreap.engine.rules import Plan

    monkeypatch.setattr(process, "HAVE_PIDFD", pidfd)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        info = procinfo.HOST.read(victim.pid)
        stale = info._replace(start=info.start - 1)
        out = execute(Target(stale, (), 5.0), Plan(wait=0.2))
        assert out.result == "replaced" and out.signals == ()
        assert victim.poll() is None
        out = execute(Target(info, (), 5.0), Plan(wait=0.2))
        assert out.result == "terminated" and out.signals == ("SIGTERM",)
        assert victim.wait(patience(5)) == -signal.SIGTERM
    finally:
        victim.kill()
        victim.wait()


def test_protected_processes_are_refused(root_ready):
    from resreap.host import procinfo
    from resreap.engine.filters import Filters
    from resreap.engine.policy import Eligibility

    from resreap.engine.config import Current, WatchConfig
    from resreap.engine.rules import Limits, Plan

    elig = Eligibility(Current(WatchConfig(Limits(), Plan(), Filters())))
    assert not elig.check(procinfo.HOST.read(1)).ok
    assert not elig.check(procinfo.HOST.read(os.getpid())).ok       # our ancestors
    assert not elig.check(procinfo.HOST.read(os.getppid())).ok
    assert elig.check(procinfo.HOST.read(os.getpid())._replace(pid=10**7)).ok
