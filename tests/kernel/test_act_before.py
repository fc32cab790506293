"""#34 against real processes: a server with a soft fd limit of 200 that
leaks one socket every 0.25 s (it reads each EOF and keeps the socket) is
reaped on its forecast (--act-before 20), below -l and before its first
EMFILE; a healthy server with the same limit, 150 established connections
and sockets passing through CLOSE_WAIT gets no forecast."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from procs import patience, until
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

FD_LIMIT = 200
EVERY = 0.25


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gauge(port: int) -> dict[str, float]:
    """resreap_fd_exhaustion_seconds by comm."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("resreap_fd_exhaustion_seconds{"):
            comm = line.split('comm="', 1)[1].split('"', 1)[0]
            out[comm] = float(line.rsplit(" ", 1)[1])
    return out


def test_act_before_reaps_a_real_leak_before_its_first_emfile(resreap_bin, actors, tag):
    metrics = _port()
    run = WatchRun(resreap_bin, "-f", tag[4:], "-i", "0.5", "-w", "0.5", "-l", "1000",
                   "--act-before", "20", "--metrics", f"127.0.0.1:{metrics}")
    try:
        leaker = actors("limited-server", "127.0.0.1", FD_LIMIT, "leak", tag)
        healthy = actors("limited-server", "127.0.0.1", FD_LIMIT, "healthy", tag)
        actors("clients", "127.0.0.1", healthy.port, 150, tag)      # held open
        churn = actors("paced-clients", "127.0.0.1", healthy.port, 0.05, 1, tag)
        pace = actors("paced-clients", "127.0.0.1", leaker.port, EVERY, 1, tag)
        base = int(leaker.send("fds", "FDS").split()[1])
        assert until(lambda: int(healthy.send("fds", "FDS").split()[1]) >= 150, 10)
        churn.send("go", "GO")
        began = float(pace.send("go", "GO").split()[1])
        emfile_at = began + (FD_LIMIT - base) * EVERY   # at this pace

        # Shown before it is reaped: the leaker's gauge, never the healthy one's.
        seen: dict[str, float] = {}

        def forecast() -> bool:
            seen.update(_gauge(metrics))
            return "lim-leak" in seen
        assert until(forecast, 30), seen
        assert "lim-healthy" not in seen
        left = emfile_at - time.monotonic()
        assert seen["lim-leak"] == pytest.approx(left, abs=max(8.0, 0.3 * left)), (seen, left)

        reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == leaker.pid,
                            timeout=60)
        reaped_at = time.monotonic()
        assert reap["reason"] == "exhaustion" and reap["count"] < 1000
        assert 10 <= reap["exhausted_in"] <= 25, reap
        assert run.outcome(leaker.pid)["result"] == "terminated"
        assert reaped_at < emfile_at, (reaped_at - began, emfile_at - began)
        assert leaker.wait_dead(5)
        rest = leaker.proc.stdout.read()
        assert "EMFILE" not in rest                       # it never ran out
        assert healthy.alive() and not run.find(
            lambda e: e["event"] in (Event.REAP, Event.WOULD_REAP) and e["pid"] == healthy.pid)
        assert "lim-healthy" not in _gauge(metrics)
    finally:
        assert run.stop() == 0
