"""An operator's mistakes (issue #15, items 4-8): two watches at once, a dead
log pipe, a double Ctrl-C in the middle of a kill, a slow start, a closed
stdout for trace."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from procs import patience
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


def test_one_watch_per_host_but_a_dry_run_may_run_beside_it(resreap_bin, tag):
    first = WatchRun(resreap_bin, "-f", tag[4:])
    try:
        second = subprocess.run([resreap_bin, "watch", "-f", tag[4:]], capture_output=True,
                                text=True, timeout=patience(60))
        assert second.returncode == 1
        assert f"another resreap watch is running (pid {first.proc.pid})" in second.stderr
        dry = WatchRun(resreap_bin, "-f", tag[4:], "--dry-run")
        assert dry.stop() == 0
    finally:
        assert first.stop() == 0
    # The lock went with the process: a new watch starts.
    assert WatchRun(resreap_bin, "-f", tag[4:]).stop() == 0


def test_a_dead_log_pipe_stops_watch(resreap_bin, actors, tag):
    """`resreap watch 2>&1 | head -3`: once head is gone there is nowhere to
    log, and a watchdog that cannot say what it does must stop."""
    proc = subprocess.Popen([resreap_bin, "watch", "-f", tag[4:], "-d", "-i", "0.5"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(10):                      # loading, existing ... start
            if " start " in proc.stderr.readline():
                break
        else:
            raise AssertionError("no start line")
        proc.stderr.close()                      # the reader is gone
        server = actors("leaky-server", "127.0.0.1", tag)
        actors("clients", "127.0.0.1", server.port, 2, tag).send("close", "CLOSED")
        assert proc.wait(patience(15)) == 1      # its next line hit EPIPE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_says_what_it_waits_for_and_a_second_one_what_it_abandons(resreap_bin, actors, tag):
    server = actors("ignoring-server", "127.0.0.1", "TERM", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = WatchRun(resreap_bin, "-f", tag[4:], "-i", "0.5", "-w", "10")
    client.send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid)
    time.sleep(patience(0.3))                    # SIGTERM sent, waiting -w
    run.proc.send_signal(signal.SIGINT)
    stopping = run.wait_for(lambda e: e["event"] == Event.STOPPING)
    assert stopping["kills_in_progress"] == [server.pid]
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(patience(10)) == 0
    run.stop()
    abandon = run.wait_for(lambda e: e["event"] == Event.ABANDON, timeout=1)
    assert abandon["kills_in_progress"] == [server.pid]
    assert run.wait_for(lambda e: e["event"] == Event.STOP, timeout=1)


def test_start_says_at_once_that_bpf_is_loading(resreap_bin, tag):
    run = WatchRun(resreap_bin, "-f", tag[4:], "--backend", "bpf")
    try:
        events = [e["event"] for e in run.events]
        assert events.index("loading") < events.index("start")
    finally:
        assert run.stop() == 0


def test_trace_with_stdout_closed_is_an_error(resreap_bin):
    out = subprocess.run([resreap_bin, "trace"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, timeout=patience(60), pass_fds=(), close_fds=True,
                         preexec_fn=lambda: __import__("os").close(1))
    assert out.returncode == 2 and "stdout is closed" in out.stderr
