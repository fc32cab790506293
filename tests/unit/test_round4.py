"""#31 (security, round four): a tenant cannot blind the loop, starve a
service's reaps, or forge what operators read.  Each test is one finding of
the issue, on the fake host (fakehost.py) or on the pure formatting
functions; each failed on the main the round started from.  The real
processes' versions are in tests/faults/test_round4.py; docs/faults.md has
the table."""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata

import pytest

from fakehost import World
from resreap.engine import counting, watch
from resreap.engine.decisions import Event
from resreap.engine.filters import Filters
from resreap.host import procinfo
from resreap.model import Owner, Result

HOSTILE = ("evil\x1b]0;owned\x07\x1b[8m\n2026-12-07T00:00:00 warning reap pid=1 comm=init"
           "\u202etxt.exe\u2066\u200b\u2028\ufeff\U000e0041")
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


class StatReads:
    """/proc/PID/stat reads per loop turn, and those of them that asked for
    ancestry (the turn's lineage)."""

    def __init__(self, monkeypatch) -> None:
        self.now = 0
        self.turns: list[int] = []
        self.lineage: list[int] = []
        real = procinfo.Proc.read_stat

        def counted(proc, pid):
            self.now += 1
            return real(proc, pid)
        monkeypatch.setattr(procinfo.Proc, "read_stat", counted)

    def run(self, world: World, until: float) -> None:
        w = world.watcher
        world.source.horizon = world.t0 + until
        for _ in range(100000):
            if world.clock.now >= world.t0 + until:
                return
            self.now = 0
            w.step()
            self.turns.append(self.now)
            self.lineage.append(w.lineage.reads)
        raise AssertionError("the loop did not reach its end time")


def chain(world: World, depth: int, holders: int) -> list[int]:
    """A user's chain of ``depth`` processes, and below it a server whose 4
    leaked sockets it shares with its ``holders - 1`` forked children."""
    ppid = 1
    for i in range(depth):
        world.process(100 + i, comm="sleep", ppid=ppid, uid=1000)
        ppid = 100 + i
    lead = world.process(5000, comm="leaker", ppid=ppid, uid=1000)
    world.listen(lead, 9000)
    kids = [world.process(5001 + i, comm="leaker", ppid=5000, uid=1000)
            for i in range(holders - 1)]
    world.close_wait([lead, *kids], 9000, n=4, at=1.0, uid=1000)
    return [5000] + [k.pid for k in kids]


# -- 1: ancestry per turn, bounded -------------------------------------------

def test_1_shared_holders_below_a_deep_chain_cost_each_process_once(world, monkeypatch):
    """201 holders of 4 sockets below a 200-deep chain, all spared (-f): each
    decision walked every co-holder's ancestry to init, uncached: 4 million
    stat reads in one turn (163 s on the fake host).  Now eligibility comes
    first (a spared process has no children judged), and ancestry is read
    once per turn per process."""
    chain(world, 200, 201)
    fenced = world.process(7000, comm="fenced", cmdline="fenced-leak")
    world.listen(fenced, 7070)
    world.close_wait(fenced, 7070, n=2, at=1.0)
    reads = StatReads(monkeypatch)
    world.watch(limit=2, grace=2.0, filters=Filters.parse("^fenced", (), ()))
    reads.run(world, 40)
    assert max(reads.turns) <= 2 * (201 + 200 + 10), max(reads.turns)
    assert world.reaped() == [7000]
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(3.0, abs=0.3)


def test_1_reaped_holders_below_a_deep_chain_read_the_chain_once_per_turn(world, monkeypatch):
    """The same tree, reaped: children first asked each pair's ancestry
    (~32 x N x depth reads per turn, 4 million); now each turn reads each
    process's parent at most once, and every holder is reaped (the leader
    last).  What else a turn reads is each kill's holders (at most 32 kills
    a turn, 201 holders), whatever the depth."""
    pids = chain(world, 200, 201)
    reads = StatReads(monkeypatch)
    w = world.watch(limit=2, grace=2.0)
    reads.run(world, 120)
    assert sorted(world.reaped()) == sorted(pids)
    assert world.reaped()[-1] == 5000      # the parent waited for its children
    assert 0 < max(reads.lineage) <= 201 + 200
    assert max(reads.turns) <= 32 * 201 + 2 * (201 + 200), max(reads.turns)
    assert w.lineage.depth == procinfo.ANCESTRY_DEPTH


def test_1_past_the_depth_bound_a_parent_is_judged_as_it_stands(world):
    """The bound errs toward "not a descendant": the parent, over its limit
    with sockets it holds itself, is reaped without waiting for a child
    that sits deeper than ANCESTRY_DEPTH below it (within the bound it
    waits: the same tree, shallower, in the test above)."""
    top = world.process(1000, comm="master", cmdline="master")
    world.listen(top, 8080)
    ppid = 1000
    for i in range(procinfo.ANCESTRY_DEPTH + 1):
        world.process(2000 + i, comm="sh", ppid=ppid)
        ppid = 2000 + i
    deep = world.process(3000, comm="worker", cmdline="worker", ppid=ppid)
    world.close_wait([top, deep], 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.run(10)
    assert world.said(Event.CHILDREN_FIRST) == []
    assert sorted(world.reaped()) == [1000, 3000]


def test_1_lineage_reads_each_parent_once_and_stops_at_its_depth(tmp_path):
    world = World(tmp_path)
    ppid = 1
    for i in range(100):
        world.process(10 + i, ppid=ppid)
        ppid = 10 + i
    lineage = procinfo.Lineage(procinfo.Proc(str(world.proc)), depth=8)
    assert lineage.above(109) == frozenset(range(101, 109))
    assert lineage.descends(109, 101) and not lineage.descends(109, 100)
    for pid in range(100, 110):
        lineage.above(pid)
    first = lineage.reads
    assert first <= 18                     # 109 down to 92: each parent once
    for pid in range(100, 110):
        lineage.above(pid)
    assert lineage.reads == first          # asked again: nothing read again
    lineage.clear()
    assert lineage.reads == 0 and lineage.above(12) == frozenset({11, 10, 1})


# -- 6: a user's 10,000 owners: bounded turns --------------------------------

def test_6_many_owners_are_decided_across_turns_within_the_budget(world, monkeypatch):
    """Thousands of spared owners were decided in one turn (12 s for 10,000,
    no watchdog ping); their 2 sockets each were checked in one turn too.
    Now a turn decides for TURN_BUDGET seconds (a fake timer here: 10 ms a
    decision) and checks DUE_PER_TURN sockets at most; every owner is still
    judged once, and a fenced leak is reaped."""
    n = 1500
    for i in range(n):
        proc = world.process(20000 + i, comm="sleep", cmdline=f"sleep {i}", uid=1000)
        world.close_wait(proc, 10000 + i, n=2, at=1.0, uid=1000)
    fenced = world.process(7000, comm="fenced", cmdline="fenced-leak")
    world.listen(fenced, 7070)
    world.close_wait(fenced, 7070, n=2, at=1.5)
    w = world.watch(limit=2, grace=2.0, filters=Filters.parse("^fenced", (), ()))
    ticks = iter(range(10**9))
    w._timer = lambda: next(ticks) * 0.01
    decided, checked, per_turn, due_per_turn, checked_chunk = [], [], [], [], []
    real_one, real_due = w._decide_one, w.table.due
    monkeypatch.setattr(w, "_decide_one", lambda o, now: decided.append(o.pid) or real_one(o, now))
    monkeypatch.setattr(w.table, "due", lambda now, most=None: checked.append(
        len(got := real_due(now, most))) or got)
    for _ in range(5000):
        if world.clock.now >= world.t0 + 60:
            break
        decided.clear()
        checked.clear()
        w.step()
        per_turn.append(len(decided))
        due_per_turn.append(sum(checked))
        checked_chunk += checked
    # The timer moves 10 ms a call: a turn's decisions and checks stop at
    # their budgets (a chunk of due sockets at a time).
    assert max(per_turn) <= watch.TURN_BUDGET / 0.01 + 2
    assert max(due_per_turn) <= counting.DUE_PER_TURN * (watch.CHECK_BUDGET / 0.01 + 1)
    assert max(checked_chunk) <= counting.DUE_PER_TURN
    assert sum(1 for r in world.lines if r.getMessage() == Event.SPARE) == n
    assert world.reaped() == [7000]


# -- 2: the storm bound is per supervised command ----------------------------

SVC = """\
[watch]
limit = 2
grace = 1.0

[[rule]]
name = "svc"
match = { user = "0", unit = "svc.service" }
max_rate = "1/600"
"""


def test_2_a_users_kill_never_spends_a_services_storm_budget(world, tmp_path):
    """A user's process with the service's command line is reaped under the
    default rule; the service, restarted after that, leaks: it used to get
    `storm rule=svc kills=1 ... next_in=596` (the bound was keyed by the
    command line alone).  Now the bound is per rule, uids, unit, container
    and command: the service is reaped."""
    from test_rules import resolve

    user = world.process(3000, comm="leaky", cmdline="/usr/bin/leaky --serve", uid=1000,
                         cgroup="/user.slice/user-1000.slice/session-1.scope")
    world.listen(user, 9100)
    world.close_wait(user, 9100, n=2, at=1.0, uid=1000)
    svc = world.process(4000, comm="leaky", cmdline="/usr/bin/leaky --serve", uid=0,
                        unit="svc.service", started=world.t0 + 5.0)
    world.listen(svc, 9200)
    world.close_wait(svc, 9200, n=2, at=6.0)
    world.watch(config=resolve(tmp_path, SVC).engine)
    world.run(30)
    assert world.reaped() == [3000, 4000]
    assert world.said(Event.STORM) == []
    assert [r["rule"] for r in world.said(Event.REAP)] == ["default", "svc"]


def test_2_a_restart_loop_of_one_service_is_still_bounded(world, tmp_path):
    """The same service, killed and restarted, leaking again: its second
    kill within the window waits (the storm bound still holds for what one
    supervisor restarts)."""
    from test_rules import resolve

    first = world.process(4000, comm="leaky", cmdline="/usr/bin/leaky --serve",
                          unit="svc.service", started=world.t0)
    world.listen(first, 9200)
    world.close_wait(first, 9200, n=2, at=1.0)
    again = world.process(4001, comm="leaky", cmdline="/usr/bin/leaky --serve",
                          unit="svc.service", started=world.t0 + 5.0)
    world.listen(again, 9201)
    world.close_wait(again, 9201, n=2, at=6.0)
    world.watch(config=resolve(tmp_path, SVC).engine)
    world.run(30)
    assert world.reaped() == [4000]
    (storm,) = world.said(Event.STORM)
    assert storm["pid"] == 4001 and storm["rule"] == "svc" and storm["next_in"] > 500


# -- 4: remembered processes are bounded -------------------------------------

def test_4_a_process_renaming_itself_adds_no_remembered_entry(world):
    """Spared processes were remembered by (pid, start, name): one renaming
    itself added an entry at every recheck, forever.  Now by (pid, start),
    in every per-process cache."""
    procs = []
    for pid in (3000, 3001):
        p = world.process(pid, comm="rn0", cmdline="renamer", uid=1000)
        world.listen(p, pid)
        world.close_wait(p, pid, n=2, at=1.0, uid=1000)
        procs.append(p)
    for step in range(1, 200):
        for p in procs:
            world.rename(p.pid, f"rn{step}", at=step * 1.0)
    w = world.watch(limit=2, grace=2.0, filters=Filters.parse("^never", (), ()))
    world.run(200)
    assert len(w._spared) == 2
    assert len(w.book._uids) <= 2 and len(w.book._known) <= 2
    assert len(world.said(Event.SPARE)) == 2


def test_4_reaped_and_spared_processes_are_forgotten_once_they_hold_nothing(world):
    """60 reaped processes stayed remembered until a reload; now they go
    within FORGET_EVERY of their last counting socket."""
    for i in range(60):
        p = world.process(3000 + i, comm="leaker", cmdline=f"leaker {i}")
        world.listen(p, 9000 + i)
        world.close_wait(p, 9000 + i, n=2, at=1.0)
    w = world.watch(limit=2, grace=2.0, max_kills=100)
    world.run(10)
    assert len(world.reaped()) == 60 and len(w._reaped) == 60
    world.run(10 + watch.FORGET_EVERY + 1)
    assert len(w._reaped) == 0


def test_4_the_remembered_books_have_a_ceiling():
    from resreap.bounded import BoundedDict

    book: BoundedDict[int, int] = BoundedDict(3)
    for i in range(10):
        book[i] = i
    assert list(book) == [7, 8, 9] and book.evicted == 7
    book.get(7)
    book[10] = 10
    assert list(book) == [9, 7, 10]
    assert book.keep(lambda k: k != 7) == 1 and list(book) == [9, 10]


# -- 5 and 3: one escaping for every sink ------------------------------------

def test_5_every_control_format_and_separator_character_is_escaped():
    """The running Python's Unicode: every Cc, Cf, Zl and Zp character is
    escaped (the list in ops/escaping is checked against it)."""
    from resreap.ops.escaping import safe

    missed = [hex(cp) for cp in range(sys.maxunicode + 1)
              if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zl", "Zp")
              and safe(chr(cp)) == chr(cp)]
    assert missed == []
    assert safe("caf\u00e9 \u4e2d\u6587 \U0001f600") == "caf\u00e9 \u4e2d\u6587 \U0001f600"
    assert safe("a\u202eb") == "a\\u202eb" and safe("\U000e0041") == "\\U000e0041"


def _no_raw(text: str) -> None:
    assert not RAW.search(text), repr(text)


def _hostile_row():
    from resreap.engine.view import Row

    fields = {name: 0 for name in Row._fields}
    return Row(**{**fields, "pid": 4242, "comm": HOSTILE, "unit": HOSTILE,
                  "container": None, "rule": "default", "evidence": {"eof-ignored": 2},
                  "reap_in": 0.0, "action": "SIGTERM", "fds": 3, "fd_limit": 1024,
                  "rss": 1 << 20, "close_wait": 2, "counting": 2, "oldest": 3.0})


def test_3_5_every_sink_escapes_the_same_hostile_name(tmp_path):
    """One hostile name (an OSC title, SGR conceal, a newline and a forged
    line, RLO, an isolate, a zero-width space, a line separator, a BOM, a
    tag character) through every sink: `rules` wrote it raw to root's
    terminal (#3), and bidi and format characters passed every sink (#5)."""
    from resreap.engine.trace import ProcSummary, TraceKind, TraceRecord
    from resreap.host.supervisor import Supervisor
    from resreap.model import SockId
    from resreap.ops import decisionlog, formatting, journal, recent, rules, top

    row = _hostile_row()
    owner = Owner(4242, 1, HOSTILE)
    sock = SockId(4, b"\x7f\0\0\x01", 80, b"\x7f\0\0\x01", 5555)
    where = Supervisor("/x", HOSTILE, None)
    rule = {"rule": HOSTILE, "match": {"cmd": HOSTILE}, "trusts": [], "any_user_can_match": True,
            "limit": 2, "grace": 2.0, "stall": 60.0, "fd_percent": None, "act_before": None, "max_rate": "3/60",
            "plan": "TERM", "dry_run": False, "hook": None, "restart_units": True}
    texts = []
    texts += rules.text([rule], [row])                                          # rules
    texts += top._cells(row, ruled=True) + top._cells(row, ruled=False)         # top
    # The acting watch's reaps, as top reads them (recent.json is untrusted bytes).
    reaps = recent._parse({"pid": 1, "reaps": [{"ts": 0.0, "pid": 4242, "comm": HOSTILE,
                                                "where": HOSTILE, "rule": HOSTILE,
                                                "result": "terminated", "took": 0.1}]}).reaps
    texts += top._reap_lines({"watch": 1, "reaps": list(reaps)})
    record = TraceRecord(0.0, TraceKind.EXIT, sock, (owner,), 1.0, None, None, where=where)
    texts.append(formatting.trace_line(record))                                 # trace
    texts += formatting.summary_lines([ProcSummary(owner, 1, 1, 1.0, where)])
    log = logging.LogRecord("resreap.engine.decisions", logging.WARNING, __file__, 1,
                            Event.REAP, None, None)
    log.fields = {"pid": 4242, "comm": HOSTILE, "cmd": HOSTILE, "unit": HOSTILE}
    message = decisionlog.TextFormatter(stamp=False).format(log)               # text log
    texts.append(message)
    texts += [v for _k, v in journal.entry(log, message)]                      # journald
    plain = logging.LogRecord("resreap", logging.WARNING, __file__, 1, "pid %s: %s", (1, HOSTILE),
                              None)
    texts.append(decisionlog.TextFormatter().format(plain))
    for text in texts:
        _no_raw(text)
    assert "\\u202e" in message and "\\x1b" in message and "\\x0a" in message
    # JSON keeps the exact value, as ASCII: the stream itself carries none of them.
    lines = (formatting.trace_json(record), decisionlog.JsonFormatter().format(log),
             formatting.summary_json([ProcSummary(owner, 1, 1, 1.0, where)]))
    assert all(line.isascii() for line in lines)
    assert json.loads(lines[0])["comms"] == [HOSTILE]
    assert json.loads(lines[1])["comm"] == HOSTILE
    assert json.loads(lines[2])["summary"][0]["comm"] == HOSTILE


def test_5_the_cli_error_line_and_doctor_escape(monkeypatch, capsys):
    from resreap import cli
    from resreap.errors import ResreapError

    with pytest.raises(Exception):
        cli.fail(ResreapError(f"cannot read {HOSTILE}"))
    err = capsys.readouterr().err
    _no_raw(err.rstrip("\n"))
    assert err.count("\n") == 1
