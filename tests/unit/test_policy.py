import json
import logging
import signal

import pytest

from resreap.engine.config import Current, WatchConfig
from resreap.engine.filters import Filters
from resreap.engine.rules import Limits, Plan, parse_rate, parse_signal
from resreap.ops.decisionlog import JsonFormatter, TextFormatter
from resreap.errors import UsageError
from resreap.engine.killer import Target, hook_env
from resreap.host.supervisor import parse
from resreap.model import Owner, SockId
from resreap.engine.policy import Counter, StormGuard
from resreap.host.procinfo import ProcInfo
from resreap.engine.decisions import Event

A = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1000)
B = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1001)
P = Owner(10, 5, "srv")
Q = Owner(11, 5, "srv")


def test_counter_counts_distinct_sockets_per_holder():
    c = Counter()
    c.add(A, (P, Q))
    c.add(A, (P,))
    c.add(B, (P,))
    assert c.count(P) == 2 and c.count(Q) == 1
    c.remove(A, (P, Q))
    assert c.count(P) == 1 and c.count(Q) == 0 and Q not in c.by_owner


def test_storm_guard_bounds_the_rate():
    g = StormGuard(Current(WatchConfig(Limits(max_kills=2, per=60), Plan(), Filters())))
    assert g.next_allowed("java", 0) == 0
    g.record("java", 0)
    g.record("java", 10)
    assert g.next_allowed("java", 20) == 60  # the oldest kill leaves the window at 60
    assert g.next_allowed("other", 20) == 0
    assert g.next_allowed("java", 60) == 0


def test_storm_guard_counts_only_kills_a_target_could_replace():
    """Siblings alive together (a forking server's children) are no storm;
    a process started after the kills is a replacement, and is one."""
    g = StormGuard(Current(WatchConfig(Limits(max_kills=3, per=60), Plan(), Filters())))
    for t in (10, 11, 12, 13):
        g.record("socat", t)
    assert g.next_allowed("socat", 14, started=5) == 0          # a sibling: alive before them
    assert g.next_allowed("socat", 14, started=12.5) == 70      # after three kills: storm
    assert g.next_allowed("socat", 14, started=13.5) == 71      # after all four: a restart loop
    assert g.next_allowed("socat", 14) == 71                    # no start known: all count


@pytest.mark.parametrize("text,want", [("3/60", (3, 60.0)), ("1/0.5", (1, 0.5))])
def test_parse_rate(text, want):
    assert parse_rate(text) == want


@pytest.mark.parametrize("bad", ["", "3", "0/60", "3/0", "x/y", "-1/5"])
def test_parse_rate_rejects(bad):
    with pytest.raises(UsageError):
        parse_rate(bad)


@pytest.mark.parametrize("text,sig", [("TERM", signal.SIGTERM), ("sigquit", signal.SIGQUIT),
                                      ("9", signal.SIGKILL), ("Hup", signal.SIGHUP)])
def test_parse_signal(text, sig):
    assert parse_signal(text) is sig


@pytest.mark.parametrize("bad", ["FOO", "", "999", "SIG"])
def test_parse_signal_rejects(bad):
    with pytest.raises(UsageError, match="unknown signal"):
        parse_signal(bad)


def test_hook_env_carries_facts_not_code():
    info = ProcInfo(42, 1, 1, "srv", "srv --evil $(rm -rf /) \0x", False)
    env = hook_env(Target(info, (A, B), 3.5), Plan(signal=signal.SIGQUIT))
    assert env["RESREAP_PID"] == "42" and env["RESREAP_COUNT"] == "2"
    assert env["RESREAP_SOCKETS"] == "127.0.0.1:80->127.0.0.1:1000 127.0.0.1:80->127.0.0.1:1001"
    assert env["RESREAP_CMDLINE"] == "srv --evil $(rm -rf /) x"  # NUL cannot travel in env
    assert env["RESREAP_SIGNAL"] == "SIGQUIT" and env["RESREAP_OLDEST"] == "3.500"
    assert env["RESREAP_UNIT"] == env["RESREAP_CONTAINER"] == ""
    where = parse(f"0::/system.slice/docker-{'c' * 64}.scope")
    env = hook_env(Target(info, (A,), 1.0, where=where), Plan())
    assert env["RESREAP_UNIT"] == f"docker-{'c' * 64}.scope"
    assert env["RESREAP_CONTAINER"] == "c" * 12


def _record(event, **fields):
    rec = logging.LogRecord("resreap.engine.decisions", logging.WARNING, "", 0, event, (), None)
    rec.fields = fields
    return rec


def test_text_decision_line_is_one_escaped_line():
    line = TextFormatter().format(_record("reap", pid=5, cmd="a b\n\x1b[2J", sockets=["x", "y"],
                                          oldest=2.5))
    assert "\n" not in line and "\x1b" not in line
    assert ' reap pid=5 cmd="a b\\\\x0a\\\\x1b[2J" sockets=x,y oldest=2.5' in line


def test_json_decision_line():
    obj = json.loads(JsonFormatter().format(_record("outcome", pid=5, signals=("SIGTERM",))))
    assert obj["event"] == Event.OUTCOME and obj["pid"] == 5 and obj["signals"] == ["SIGTERM"]
    assert obj["level"] == "warning" and isinstance(obj["ts"], float)


def test_plan_describes_the_kill_sequence():
    assert Plan().describe() == "SIGTERM > wait 2s > SIGKILL"
    full = Plan(signal=signal.SIGTERM, first_signal=signal.SIGQUIT, wait=5, hook="true")
    assert full.describe() == "hook > SIGQUIT > SIGTERM > wait 5s > SIGKILL"
