import ipaddress
import json

from resreap.ops.escaping import safe
from resreap.ops.formatting import summary_json, summary_lines, trace_json, trace_line
from resreap.model import Evidence, Owner, SockId, format_addr
from resreap.host.supervisor import parse
from resreap.engine.trace import TraceKind as Event, ProcSummary, TraceRecord, Via

SOCK = SockId(4, ipaddress.IPv4Address("127.0.0.1").packed, 8080,
              ipaddress.IPv4Address("127.0.0.1").packed, 51234)


def rec(kind=Event.EXIT, owners=(Owner(1234, 99, "fe-server"),), age=1.5, evidence=None):
    return TraceRecord(1700000000.25, kind, SOCK, owners, age, 4026531833, evidence)


def test_trace_line_fits_80_columns_and_shows_everything():
    line = trace_line(rec())
    assert len(line) < 80
    assert "EXIT" in line and "1234" in line and "fe-server" in line
    assert "127.0.0.1:8080 -> 127.0.0.1:51234" in line and line.endswith("1.5s")


def test_trace_line_with_several_owners_and_none():
    two = trace_line(rec(owners=(Owner(1, 1, "a"), Owner(2, 1, "b"))))
    assert " 1+1 " in two
    assert " - " in trace_line(rec(owners=()))


def test_json_fields():
    obj = json.loads(trace_json(rec()))
    assert obj == {"ts": 1700000000.25, "event": "exit", "pids": [1234], "comms": ["fe-server"],
                   "owner_from": "fd",
                   "family": 4, "laddr": "127.0.0.1", "lport": 8080, "raddr": "127.0.0.1",
                   "rport": 51234, "age": 1.5, "netns": 4026531833}
    assert "age" not in json.loads(trace_json(rec(kind=Event.ENTER, age=None)))


def test_where_an_owner_came_from():
    likely = rec(kind=Event.ENTER, age=None)._replace(via=Via.LISTENER)
    assert " ~1234 " in trace_line(likely)
    assert json.loads(trace_json(likely))["owner_from"] == "listener"
    closed = rec()._replace(via=Via.CLOSE)
    assert " 1234 " in trace_line(closed) and "~" not in trace_line(closed)
    assert json.loads(trace_json(closed))["owner_from"] == "close"
    assert json.loads(trace_json(rec(owners=())._replace(via=Via.NONE)))["owner_from"] == "-"


def test_stayed_shows_its_evidence():
    stayed = rec(kind=Event.STAYED, age=2.0, evidence=Evidence.EOF_IGNORED)
    line = trace_line(stayed)
    assert "STAYED" in line and line.endswith(":51234 eof") and len(line) < 80
    assert json.loads(trace_json(stayed))["evidence"] == "eof-ignored"


def test_unit_and_container_in_json_and_summary():
    where = parse("0::/system.slice/nginx.service")
    obj = json.loads(trace_json(rec()._replace(where=where)))
    assert obj["unit"] == "nginx.service" and "container" not in obj
    docker = parse(f"0::/system.slice/docker-{'f' * 64}.scope")
    rows = [ProcSummary(Owner(7, 1, "srv"), 3, 2, 4.25, where),
            ProcSummary(Owner(8, 1, "app"), 1, 1, 1.0, docker),
            ProcSummary(Owner(9, 1, "gone"), 1, 0, 1.0, None)]
    lines = summary_lines(rows)
    assert "UNIT|CONTAINER" in lines[0]
    assert lines[1].endswith(" nginx.service") and lines[2].endswith(" " + "f" * 12)
    assert lines[3].endswith(" -") and all(len(line) < 80 for line in lines)
    assert json.loads(summary_json(rows))["summary"][1]["container"] == "f" * 12
    # a hostile cgroup name is no container name at all (#21 item 11: control
    # characters are kept out at the source), and a hostile unit name is
    # escaped like any name on output
    evil = parse("0::/machine.slice/machine-a\x1b[2J.scope")
    assert evil.container is None
    hostile = where._replace(unit="a\x1b[2J.service")
    line = summary_lines([rows[0]._replace(where=hostile)])[1]
    assert "\x1b" not in line and line.endswith("a\\x1b[2J.service")


def test_hostile_names_are_escaped():
    evil = "x\x1b[2J\nrm -rf /\x07\x9b"
    out = safe(evil)
    assert "\x1b" not in out and "\n" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b" in out and "\\x0a" in out
    line = trace_line(rec(owners=(Owner(5, 1, evil),)))
    assert "\x1b" not in line and "\n" not in line


def test_summary():
    rows = [ProcSummary(Owner(7, 1, "srv"), 3, 2, 4.25)]
    lines = summary_lines(rows)
    assert "ENTERED" in lines[0] and "7" in lines[1] and "4.2s" in lines[1]
    assert "no process" in summary_lines([])[0]


def test_lines_to_the_journal_carry_their_priority(tmp_path, monkeypatch):
    """Under systemd, stderr is the journal: "<4>" makes a reap a warning
    there (`journalctl -u resreap -p warning`); elsewhere lines are plain."""
    import logging
    import os

    from resreap.ops import decisionlog
    from resreap.engine import decisions

    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        decisionlog.configure(debug=False, json_lines=False, log_file=None, stream=stream)
        decisions.decision(decisions.Event.REAP, logging.WARNING, pid=7)
        decisions.decision(decisions.Event.RELOAD, logging.ERROR, error="bad")
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        decisionlog.configure(debug=False, json_lines=False, log_file=None, stream=stream)
        decisions.decision(decisions.Event.STOP, logging.WARNING)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("<4>") and " reap pid=7" in lines[0]
    assert lines[1].startswith("<3>") and lines[2][0].isdigit()


def _reference_json(r) -> str:
    """What trace_json made with json.dumps of a dict (before #35): the
    pieces must make the same bytes."""
    obj = {"ts": round(r.ts, 6), "event": r.kind.value, "pids": [o.pid for o in r.owners],
           "comms": [o.comm for o in r.owners], "owner_from": r.via.value,
           "family": r.sock.family, "laddr": format_addr(r.sock.family, r.sock.laddr),
           "lport": r.sock.lport, "raddr": format_addr(r.sock.family, r.sock.raddr),
           "rport": r.sock.rport}
    if r.age is not None:
        obj["age"] = round(r.age, 6)
    if r.evidence is not None:
        obj["evidence"] = r.evidence.value
    if r.netns is not None:
        obj["netns"] = r.netns
    if r.where is not None:
        obj.update(r.where.fields())
    return json.dumps(obj, ensure_ascii=True)


def test_json_lines_are_what_json_dumps_makes_whatever_the_fields():
    from resreap.host.supervisor import Supervisor

    hostile = ['a"b\\c', "tab\there", "\x1b[31mred", "nl\nx", "日本", "\u2028", ""]
    six = SockId(6, bytes(15) + b"\1", 443, b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2]), 5)
    from resreap.host.pods import Pod, Ref

    uid = "6b0e2d6c-1a4f-4b8e-9d5e-2f7c1c0b3a11"
    pod = Pod("shop", "checkout-7d9f6", uid, "fe", "containerd", "/run/x", None)
    wheres = [None, Supervisor("/x", "nginx.service", None),
              Supervisor("/y", None, 'ma"chine\\'), Supervisor("/z", "a.service", "3f2a9c81d0e4"),
              Supervisor("/k", None, "3f2a9c81d0e4", Ref("3f2a9c81d0e4" + "0" * 52, uid), pod),
              Supervisor("/k", None, "3f2a9c81d0e4", Ref("3f2a9c81d0e4" + "0" * 52, uid))]
    seen = 0
    for i, comm in enumerate(hostile):
        owners = (Owner(100 + i, 7, comm),) + ((Owner(9, 8, "x"),) if i % 2 else ())
        for where in wheres:
            for base in (rec(), rec(kind=Event.ENTER, age=None), rec()._replace(sock=six)):
                r = base._replace(owners=owners, where=where, ts=1796641528.1234567 + i,
                                  netns=None if i % 3 else 4026531840,
                                  evidence=Evidence.UNREAD if i == 2 else None)
                assert trace_json(r) == _reference_json(r)
                seen += 1
    assert seen == len(hostile) * len(wheres) * 3
    assert trace_json(rec(owners=())) == _reference_json(rec(owners=()))
