"""`resreap top` as a person uses it (#25): against a real leak, a frame as
JSON for scripts, and the live view in tmux (80x24: keys sort and quit,
nothing is ever signalled)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest

from procs import patience, until

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


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is missing (scripts/setup --test installs it)")
def test_top_live_in_tmux_sorts_and_quits(resreap_bin, actors, tag):
    server = _leak(actors, tag)
    session = f"rrtop{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"{resreap_bin} top -f {tag[4:]} -l 2 --stall 60"], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    try:
        assert until(lambda: str(server.pid) in screen(), 20), screen()
        text = screen()
        assert "by reap-in" in text and "UNIT/CONT" in text
        assert all(len(line) <= 80 for line in text.splitlines())
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)
        assert until(lambda: "by close-wait" in screen(), 10), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        assert until(lambda: subprocess.run(["tmux", "has-session", "-t", session],
                                            capture_output=True).returncode != 0, 10)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    time.sleep(0.2)
    assert server.alive()  # a dry run: nothing signalled
