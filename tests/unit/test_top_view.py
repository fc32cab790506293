"""What `resreap top` draws (#25), apart from the watcher: each process's
rates in and out of CLOSE_WAIT (bounded memory however many processes
churn), the acting watch's last reaps (a file only root may write, read as
untrusted bytes), and a frame that fits 80 columns whatever the values."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import pytest

from resreap.engine import churn as churn_mod
from resreap.engine.churn import Churn
from resreap.engine.killer import Outcome, Result, Target
from resreap.engine.view import Row
from resreap.host.procinfo import ProcInfo
from resreap.model import Owner
from resreap.ops import recent, top

A, B = Owner(10, 1, "a"), Owner(20, 2, "b")


# -- rates ---------------------------------------------------------------------------

def test_rates_are_taken_over_the_window_and_forget_what_fell_out_of_it():
    c = Churn(started=0.0, window=10)
    for i in range(20):                       # 20 sockets, each 0.1 s in CLOSE_WAIT
        c.left([A], entered=i * 0.5, left=i * 0.5 + 0.1)
    assert c.rates(10.0, {}) == {A: (2.0, 2.0)}
    assert c.rates(10.0, {B: [9.0, 9.5, -5.0]}) == {A: (2.0, 2.0), B: (0.2, 0.0)}  # 2 fresh
    assert c.rates(40.0, {}) == {} and len(c) == 0    # a quiet process is forgotten


def test_before_a_whole_window_rates_are_over_the_time_seen():
    c = Churn(started=100.0, window=10)
    c.left([A], entered=100.5, left=100.6)
    c.left([A], entered=101.0, left=101.5)
    assert c.rates(102.0, {}) == {A: (1.0, 1.0)}


def test_a_socket_that_stayed_longer_than_the_window_is_an_exit_only():
    c = Churn(started=0.0, window=10)
    c.left([A, B], entered=1.0, left=50.0)        # held by two: each closed it
    assert c.rates(52.0, {}) == {A: (0.0, 0.1), B: (0.0, 0.1)}


def test_memory_is_bounded_however_many_processes_churn(monkeypatch):
    monkeypatch.setattr(churn_mod, "MAX_OWNERS", 50)
    c = Churn(started=0.0, window=10)
    for pid in range(200):
        c.left([Owner(pid, pid, "x")], entered=5.0, left=5.1)
    assert len(c) == 50 and c.dropped == 150
    for pid in range(200, 260):                    # the old ones have left the window
        c.left([Owner(pid, pid, "x")], entered=30.0, left=30.1)
    assert len(c) == 50 and c.dropped == 160
    for second in range(1000):                     # one process, for a long time
        c.left([Owner(200, 200, "x")], entered=second + 40.0, left=second + 40.5)
    assert len(c._seconds[Owner(200, 200, "x")]) <= c.window + 2


# -- the acting watch's reaps ----------------------------------------------------------

def _outcome(pid: int, comm: str, result: Result = Result.TERMINATED, unit: str | None = None):
    info = ProcInfo(pid, 1, 1, comm, comm, False)
    where = SimpleNamespace(unit=unit, container=None, shown=unit or "")
    return Outcome(Target(info, (), 0.0, where=where), result, ("SIGTERM",), None, 0.25)


@pytest.fixture
def path(tmp_path):
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    return str(private / "recent.json")


def test_the_watch_keeps_its_last_outcomes_across_its_own_restart(path):
    rec = recent.Recorder(path, clock=lambda: 1000.0)
    assert recent.read(path).reaps == () and recent.read(path).pid == os.getpid()
    rec.heard(_outcome(1, "one", unit="web.service"), {})
    assert rec.flush() and not rec.flush()                           # nothing new: no write
    for n in range(2, 15):
        rec.heard(_outcome(n, f"p{n}"), {})
    assert recent.read(path).reaps[-1].pid == 1                      # written at the flush
    rec.flush()
    got = recent.read(path)
    assert [r.pid for r in got.reaps] == list(range(5, 15))          # the last KEEP
    again = recent.Recorder(path)                                    # the watch restarted
    again.heard(_outcome(99, "new", Result.KILLED), {})
    again.flush()
    reaps = recent.read(path).reaps
    assert len(reaps) == recent.KEEP and reaps[-1].pid == 99 and reaps[-1].result == "killed"
    assert reaps[0].pid == 6


def test_a_first_outcome_names_its_unit_rule_and_result(path):
    rec = recent.Recorder(path, clock=lambda: 1234.5)
    rec.heard(_outcome(7, "nginx", unit="nginx.service"), {})
    rec.flush()
    (reap,) = recent.read(path).reaps
    assert reap == recent.Reap(1234.5, 7, "nginx", "nginx.service", "default", "terminated", 0.25)


def _write(path: str, obj, mode: int = 0o600) -> None:
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    os.chmod(path, mode)


GOOD = {"pid": 5, "start": 9, "reaps": [{"ts": 1.0, "pid": 7, "comm": "x", "where": "",
                                          "rule": "default", "result": "killed", "took": 0.1}]}


@pytest.mark.parametrize("bad", [
    {"pid": 5, "reaps": [{**GOOD["reaps"][0], "comm": 7}]},          # a value of the wrong type
    {"pid": 5, "reaps": [{**GOOD["reaps"][0], "took": True}]},
    {"pid": "5", "reaps": []},
    {"pid": 5, "reaps": "x"},
    "[" * 50000,                                                    # nested past the stack
    "{" + " " * (recent.MAX_BYTES + 10) + "}",                     # too long to read
    "not json",
])
def test_a_file_that_does_not_parse_shows_nothing(path, bad):
    _write(path, GOOD)
    assert recent.read(path) is not None
    _write(path, bad)
    assert recent.read(path) is None


def test_a_file_others_could_write_or_a_link_is_not_read(path, tmp_path):
    _write(path, GOOD, mode=0o622)
    assert recent.read(path) is None
    os.unlink(path)
    _write(str(tmp_path / "elsewhere.json"), GOOD)
    os.symlink(tmp_path / "elsewhere.json", path)
    assert recent.read(path) is None
    os.unlink(path)
    _write(path, GOOD)
    os.chmod(os.path.dirname(path), 0o777)                         # a directory anyone writes
    try:
        assert recent.read(path) is None
    finally:
        os.chmod(os.path.dirname(path), 0o700)


def test_what_another_process_named_itself_is_escaped(path):
    _write(path, {**GOOD, "reaps": [{**GOOD["reaps"][0], "comm": "evil\x1b[2J\nname"}]})
    (reap,) = recent.read(path).reaps
    assert "\x1b" not in reap.comm and "\n" not in reap.comm


# -- the frame -------------------------------------------------------------------------

def _row(**kw) -> Row:
    base = dict(pid=4194304, comm="a-very-long-command-name", unit="a-very-long-unit-name.service",
                container="", close_wait=19999, counting=19999,
                evidence={"eof-ignored": 9999, "unread": 9999, "queued": 1, "sending": 1},
                oldest=86400 * 30, fds=19999, fd_limit=20000, reap_in=7200.0, rule="a-long-rule",
                enter_rate=123456.0, exit_rate=9.94, rss=123 << 30, exhausted_in=840.0)
    base.update(kw)
    return Row(**base)


def _frame(rules: int, reaps: list) -> dict:
    return {"backend": "bpf", "loader": "core", "close_wait": 123456, "events_per_s": 123456.7,
            "lost": 123456, "limit": 1000, "sort": "close-wait", "rules": rules,
            "rows": [_row(), _row(pid=1, comm="\x1b[31mred", reap_in=0.0, rss=None, fds=None),
                     _row(pid=2, close_wait=0, counting=0, evidence={}, reap_in=None)] * 10,
            "watch": 4194304, "reaps": reaps}


@pytest.mark.parametrize("rules", [0, 3])
def test_a_frame_fits_80_by_24_whatever_the_values(rules):
    from rich.console import Console

    reaps = [recent.Reap(1.0e9, 4194304, "c" * 100, "u" * 100, "r" * 100, "terminated", 1.5,
                         "start-failed")] * 5
    console = Console(width=80, record=True, force_terminal=False)
    console.print(top.render(_frame(rules, reaps), height=24))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "\x1b" not in text and "IN/OUT" in text and ("RULE" in text) == bool(rules)
    assert ("RSS" in text) != bool(rules) and ("123G" in text) != bool(rules)
    assert "reaps (watch 4194304), newest first:" in text and "start-failed" in text
    assert "123k/9.9" in text and "now" in text and "2h" in text
    assert " OUT " in text and re.search(r"19k/20k +14m ", text)  # fds, when they run out


def test_without_a_watch_the_frame_says_so():
    from rich.console import Console

    console = Console(width=80, record=True, force_terminal=False)
    console.print(top.render({**_frame(0, []), "watch": None}, height=24))
    assert "reaps (no watch running): none recorded" in console.export_text()


def test_a_pods_row_shows_namespace_and_pod_and_a_wider_terminal_shows_more():
    from rich.console import Console

    pod = _row(pid=7, unit="", container="fe", namespace="shop", pod="checkout-7d9f6")
    data = {**_frame(0, []), "rows": [pod]}
    narrow = Console(width=80, record=True, force_terminal=False)
    narrow.print(top.render(data, height=24))
    assert "shop/che…" in narrow.export_text()
    wide = Console(width=120, record=True, force_terminal=False)
    wide.print(top.render(data, height=24, width=120))
    lines = wide.export_text().splitlines()
    assert any("shop/checkout-7d9f6 " in line for line in lines)
    assert all(len(line) <= 120 for line in lines)
