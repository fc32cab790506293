"""Decision lines as journal entries (#25): native fields, a MESSAGE without
the time and level, OBJECT_ fields naming the process acted on; the line
is never lost where journald cannot be reached."""

from __future__ import annotations

import io
import logging
import socket
import struct

from resreap.engine.decisions import Event
from resreap.ops import journal
from resreap.ops.decisionlog import JournalHandler, TextFormatter


def parse(data: bytes) -> dict[str, str]:
    """journald's native protocol, read back."""
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            i = nl + 1
        else:
            size = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            out[line.decode()] = data[nl + 9:nl + 9 + size].decode()
            i = nl + 9 + size + 1
    return out


def record(event: Event, level: int = logging.WARNING, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("resreap.engine.decisions", level, "x", 1, event.value, None, None)
    rec.fields = fields
    return rec


def test_a_reap_is_an_entry_with_native_fields_and_its_process(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    stderr = io.StringIO()
    handler = JournalHandler(stderr, TextFormatter(stamp=False), journal.JournalSender(path))
    handler.emit(record(Event.REAP, pid=4242, comm="nginx", unit="nginx.service", count=3,
                        cmd="nginx: worker\nprocess", sockets=["a->b", "c->d"]))
    got = parse(server.recv(65536))
    server.close()
    assert got["MESSAGE"].startswith("reap pid=4242 comm=nginx unit=nginx.service count=3")
    assert got["PRIORITY"] == "4" and got["SYSLOG_IDENTIFIER"] == "resreap"
    assert got["RESREAP_EVENT"] == "reap" and got["RESREAP_PID"] == "4242"
    assert got["RESREAP_SOCKETS"] == "a->b,c->d"
    assert got["OBJECT_PID"] == "4242" and got["OBJECT_SYSTEMD_UNIT"] == "nginx.service"
    assert got["MESSAGE_ID"] == journal.message_id("reap") and len(got["MESSAGE_ID"]) == 32
    assert "\n" not in got["RESREAP_CMD"]          # escaped: one line, as in the text form
    assert stderr.getvalue() == ""


def test_each_event_kind_has_its_own_stable_message_id():
    ids = {journal.message_id(e.value) for e in Event}
    assert len(ids) == len(Event)
    assert journal.message_id("reap") == journal.message_id("reap")


def test_a_value_with_a_newline_uses_the_binary_form():
    data = journal.serialize([("MESSAGE", "two\nlines"), ("PRIORITY", "6")])
    assert parse(data) == {"MESSAGE": "two\nlines", "PRIORITY": "6"}
    assert data.startswith(b"MESSAGE\n" + struct.pack("<Q", 9))


def test_without_journald_the_line_goes_to_stderr(tmp_path):
    stderr = io.StringIO()
    handler = JournalHandler(stderr, TextFormatter(stamp=False),
                             journal.JournalSender(str(tmp_path / "none.sock")))
    handler.setFormatter(TextFormatter())
    handler.emit(record(Event.START, backend="bpf"))
    assert " warning start backend=bpf" in stderr.getvalue()
