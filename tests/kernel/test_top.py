"""`resreap top` as a person uses it (#25): against a real leak, a frame as
JSON for scripts; the live view in tmux against two real nginx, one hung
and one healthy (80x24: keys sort and quit, nothing is ever signalled);
and the acting watch's reaps."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import uuid

import pytest

from procs import patience, until
from services import connect_and_close, need, nginx
from watchrun import WatchRun

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


def _leak(actors, tag):
    """A pool that never reads its idle connections: two unread sockets,
    counting only after --stall."""
    server = actors("leaky-server", "127.0.0.1", "unread", tag)
    actors("clients", "127.0.0.1", server.port, 2, tag).send("close", "CLOSED")
    return server


def _frame(resreap_bin, tag, *args) -> dict:
    run = subprocess.run([resreap_bin, "top", "--json", "-f", tag[4:], *args],
                         capture_output=True, text=True, timeout=patience(60))
    assert run.returncode == 0 and run.stderr == "", run.stderr  # its decisions are the frame
    return json.loads(run.stdout)


def test_top_names_a_leak_before_it_counts_and_when_it_would_be_reaped(resreap_bin, actors,
                                                                        tag):
    server = _leak(actors, tag)
    assert until(lambda: subprocess.run(["ss", "-Htn", "state", "close-wait",
                                         f"( sport = :{server.port} )"], capture_output=True,
                                        text=True).stdout.count("\n") >= 2, 10)
    frame = _frame(resreap_bin, tag, "-l", "5")
    (row,) = [r for r in frame["rows"] if r["pid"] == server.pid]
    assert (row["close_wait"], row["counting"], row["reap_in"]) == (2, 0, None)
    assert frame["backend"] == "bpf" and row["fds"] >= 3 and row["fd_limit"]
    frame = _frame(resreap_bin, tag, "-l", "2", "--stall", "60")
    (row,) = [r for r in frame["rows"] if r["pid"] == server.pid]
    assert 50 <= row["reap_in"] <= 60            # the stall, from its (start-up) entry
    assert server.alive()


class Churner:
    """A client of a real nginx that keeps its connections alive: each
    request answered, then closed by the client, so that nginx's end passes
    through CLOSE_WAIT until nginx's own close().  Bounded: stops on
    ``stop()`` or after MAX requests."""

    MAX = 20000

    def __init__(self, port: int) -> None:
        self.port, self.done, self.served = port, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(self.MAX):
            if self.done.is_set():
                return
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                got = b""
                while not got.endswith(b"ok\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            self.served += 1
            self.done.wait(0.01)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(") ")[2].split()[0]


def test_top_live_in_tmux_shows_a_hung_and_a_healthy_real_nginx(resreap_bin, tmp_path):
    """What an operator sees at 80x24: a hung nginx (its worker stopped,
    three closed connections queued in the listener it shares with its
    master) is heading for a reap, a healthy one passes its sockets through
    CLOSE_WAIT as fast as they come (IN = OUT); the keys sort and quit, and
    nothing is ever signalled."""
    need("tmux")
    (tmp_path / "hung").mkdir()
    (tmp_path / "healthy").mkdir()
    with nginx(tmp_path / "hung") as (hung, hung_worker, hung_port), \
            nginx(tmp_path / "healthy") as (healthy, healthy_worker, healthy_port):
        subprocess.run(["kill", "-STOP", str(hung_worker)], check=True)
        connect_and_close(hung_port, 3)
        churner = Churner(healthy_port)
        session = f"rrtop{uuid.uuid4().hex[:8]}"
        pids = [a for pid in (hung.pid, hung_worker, healthy.pid, healthy_worker)
                for a in ("-p", str(pid))]
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                        f"{resreap_bin} top {' '.join(pids)} -l 2 --stall 60"], check=True)

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        def row(pid: int) -> list[str]:
            for line in screen().splitlines():
                if line.split()[:1] == [str(pid)]:
                    return line.split()
            return []

        def churning(cells: list[str]) -> bool:
            # PID COMM UNIT/CONT CW/CNT EVID OLD IN/OUT FDS OUT RSS REAP
            return len(cells) == 11 and all(float(x) > 0 for x in cells[6].split("/"))

        try:
            assert until(lambda: row(hung_worker)[3:5] == ["3/0", "q3"], 20), screen()
            assert row(hung.pid)[3:5] == ["3/0", "q3"]            # the master holds them too
            assert re.fullmatch(r"\d+s", row(hung_worker)[10])    # after the stall
            assert row(hung_worker)[8] == "-"     # queued, not growing: no forecast
            assert until(lambda: churning(row(healthy_worker)), 20), screen()
            assert row(healthy_worker)[3] == "0/0" and row(healthy_worker)[8:11:2] == ["-", "-"]
            text = screen()
            assert "sort reap-in" in text and all(len(line) <= 80 for line in text.splitlines())
            assert "reaps (" in text
            for _ in range(4):                                     # reap-in .. churn
                subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)
            assert until(lambda: "sort churn" in screen(), 10), screen()
            assert until(lambda: _first_row(screen()) == str(healthy_worker), 5), screen()
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
            assert until(lambda: subprocess.run(["tmux", "has-session", "-t", session],
                                                capture_output=True).returncode != 0, 10)
        finally:
            churner.stop()
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        assert churner.served > 0
        assert _state(hung_worker) == "T" and hung.poll() is None and healthy.poll() is None


def _first_row(text: str) -> str:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PID"))
    return lines[header + 1].split()[0]


def test_top_lists_the_reaps_of_the_watch_that_acts(resreap_bin, actors, tag):
    """top runs its own dry run; what was really reaped is the acting
    watch's: its last outcomes, and whether it still runs."""
    server = _leak(actors, tag)
    run = WatchRun(resreap_bin, "-f", tag[4:], "-l", "2", "--stall", "1", "-i", "0.5",
                   "-w", "0.5")
    try:
        out = run.outcome(server.pid, timeout=15)
        frame = _frame(resreap_bin, tag)
        assert frame["watch"] == run.proc.pid
        (reap,) = [r for r in frame["reaps"] if r["pid"] == server.pid]
        assert reap["result"] == out["result"] and reap["rule"] == "default"
    finally:
        assert run.stop() == 0
    frame = _frame(resreap_bin, tag)
    assert frame["watch"] is None                  # it stopped; what it did stays listed
    assert [r for r in frame["reaps"] if r["pid"] == server.pid]
