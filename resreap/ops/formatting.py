"""How records look on a terminal and as JSON lines.  Pure functions: only
the CLI prints."""

from __future__ import annotations

import json
import time
from typing import Iterable

from resreap.model import Evidence, Owner, format_addr
from resreap.ops.escaping import safe
from resreap.engine.trace import ProcSummary, TraceRecord, Via

def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _who(owners: tuple[Owner, ...], via: Via = Via.FD) -> tuple[str, str]:
    if not owners:
        return "-", "-"
    first = owners[0]
    pid = str(first.pid) if len(owners) == 1 else f"{first.pid}+{len(owners) - 1}"
    if via is Via.LISTENER:
        pid = "~" + pid  # likely: the listener's owner, not read from its fd
    return pid, safe(first.comm)


HEADER = f"{'TIME':<8} {'EVENT':<8} {'PID':>7} {'COMM':<12} LOCAL -> REMOTE  AGE|EVIDENCE"


# Text lines stay under 80 columns: a STAYED line shows its evidence where
# the others show an age (it is -i there), eof-ignored as "eof".
_SHORT = {Evidence.EOF_IGNORED: "eof"}


def trace_line(rec: TraceRecord) -> str:
    pid, comm = _who(rec.owners, rec.via)
    if rec.evidence is not None:
        tail = " " + _SHORT.get(rec.evidence, rec.evidence.value)
    else:
        tail = f" {rec.age:.1f}s" if rec.age is not None else ""
    return (f"{clock(rec.ts)} {rec.kind.name:<8} {pid:>7} {comm:<12.12} "
            f"{rec.sock.local} -> {rec.sock.remote}{tail}")


def trace_json(rec: TraceRecord) -> str:
    obj = {
        "ts": round(rec.ts, 6),
        "event": rec.kind.value,
        "pids": [o.pid for o in rec.owners],
        "comms": [o.comm for o in rec.owners],
        "owner_from": rec.via.value,
        "family": rec.sock.family,
        "laddr": format_addr(rec.sock.family, rec.sock.laddr),
        "lport": rec.sock.lport,
        "raddr": format_addr(rec.sock.family, rec.sock.raddr),
        "rport": rec.sock.rport,
    }
    if rec.age is not None:
        obj["age"] = round(rec.age, 6)
    if rec.evidence is not None:
        obj["evidence"] = rec.evidence.value
    if rec.netns is not None:
        obj["netns"] = rec.netns
    if rec.where is not None:
        obj.update(rec.where.fields())
    return json.dumps(obj, ensure_ascii=True)


def summary_lines(rows: Iterable[ProcSummary]) -> list[str]:
    rows = list(rows)
    if not rows:
        return ["no process was seen with a socket in CLOSE_WAIT"]
    lines = [f"{'PID':>7} {'COMM':<16} {'ENTERED':>8} {'OPEN':>7} {'LONGEST':>9} UNIT|CONTAINER"]
    for r in rows:
        lines.append(f"{r.owner.pid:>7} {safe(r.owner.comm):<16.16} {r.entered:>8} "
                     f"{r.still_open:>7} {r.longest:>8.1f}s {_supervised(r)}")
    return lines


def _supervised(row: ProcSummary) -> str:
    if row.where is None:
        return "-"
    return safe(row.where.container or row.where.unit or "-")[:28]


def summary_json(rows: Iterable[ProcSummary]) -> str:
    return json.dumps({"summary": [
        {"pid": r.owner.pid, "comm": r.owner.comm, "entered": r.entered,
         "open": r.still_open, "longest": round(r.longest, 3),
         **(r.where.fields() if r.where else {})} for r in rows]})
