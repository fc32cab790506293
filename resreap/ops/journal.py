"""Decision lines as journal entries with native fields, when stderr is the
journal (under the unit): what `journalctl` can select on instead of text.

Each entry has a MESSAGE without the timestamp and level (journald keeps
both), PRIORITY, a MESSAGE_ID per event kind (stable: derived from the
event's name), RESREAP_EVENT and RESREAP_<FIELD> for each field, and for a
line about a process OBJECT_PID and OBJECT_SYSTEMD_UNIT, so that
`journalctl -u nginx.service` shows the reaps of nginx (journald trusts
OBJECT_ fields from root).  Sent over journald's native socket; where that
fails (no journald, a datagram too large) the line goes to stderr as before.

Every field here is the sender's word: any user can send an entry with
them.  Queries select resreap's entries by a field journald sets itself
(`_SYSTEMD_UNIT=resreap.service`, or `-u resreap`); the docs give no other.
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from typing import Iterable

from resreap.ops.escaping import plain, safe

SOCKET = "/run/systemd/journal/socket"
# MESSAGE_IDs are uuid5 of this namespace and the event's name: the same
# across versions and hosts (`journalctl _SYSTEMD_UNIT=resreap.service MESSAGE_ID=...`).
_NAMESPACE = uuid.UUID("6c7f1a9e-4e0b-4f0e-9a51-2b7d3f5c8e11")
# Syslog priorities, by logging level.
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


def message_id(event: str) -> str:
    return uuid.uuid5(_NAMESPACE, event).hex


def _name(key: str) -> str:
    """A field name journald accepts: [A-Z0-9_], not starting with '_'."""
    cleaned = "".join(c if c.isalnum() else "_" for c in key.upper()).strip("_")
    return f"RESREAP_{cleaned or 'FIELD'}"


def entry(record: logging.LogRecord, message: str) -> list[tuple[str, str]]:
    """The journal fields of one log record whose text is ``message``."""
    out = [("MESSAGE", message), ("PRIORITY", str(PRIORITY.get(record.levelno, 6))),
           ("SYSLOG_IDENTIFIER", "resreap")]
    fields = getattr(record, "fields", None)
    if fields is None:
        return out
    event = str(record.msg)
    out += [("MESSAGE_ID", message_id(event)), ("RESREAP_EVENT", event)]
    out += [(_name(k), plain(v)) for k, v in fields.items()]
    pid = fields.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool):
        out.append(("OBJECT_PID", str(pid)))
    unit = fields.get("unit")
    if isinstance(unit, str) and unit:
        out.append(("OBJECT_SYSTEMD_UNIT", safe(unit)))
    return out


def serialize(fields: Iterable[tuple[str, str]]) -> bytes:
    """journald's native protocol: KEY=value lines; a value holding a
    newline as KEY, newline, its length (le64), the bytes, newline."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """One datagram socket to journald.  ``send`` returns False where the
    entry could not be sent (the caller writes the line to stderr)."""

    def __init__(self, path: str = SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def send(self, fields: list[tuple[str, str]]) -> bool:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(serialize(fields), self.path)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
