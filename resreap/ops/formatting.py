"""How records look on a terminal and as JSON lines.  Pure functions: only
the CLI prints."""

from __future__ import annotations

import functools
import json
import time
from typing import Callable, Iterable

from resreap.bounded import BoundedDict
from resreap.host.supervisor import Supervisor
from resreap.model import Evidence, Owner, format_addr
from resreap.ops.escaping import safe
from resreap.engine.summary import Counted, Switched
from resreap.engine.trace import ProcSummary, TraceKind, TraceRecord, Via

def clock(ts: float) -> str:
    return _second(int(ts))


@functools.lru_cache(maxsize=64)
def _second(ts: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


_safe = functools.lru_cache(maxsize=4096)(safe)  # names repeat: escaped once each


def _who(owners: tuple[Owner, ...], via: Via = Via.FD) -> tuple[str, str]:
    if not owners:
        return "-", "-"
    first = owners[0]
    pid = str(first.pid) if len(owners) == 1 else f"{first.pid}+{len(owners) - 1}"
    if via is Via.LISTENER:
        pid = "~" + pid  # likely: the listener's owner, not read from its fd
    return pid, _safe(first.comm)


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
    """One JSON line, byte for byte what ``json.dumps`` of its fields makes
    (tests/unit/test_formatting.py compares), built from pieces: under
    churn a line is mostly the same owners and addresses again, and a
    ``json.dumps`` per event was a third of trace's cost."""
    family, sock = rec.sock.family, rec.sock
    parts = [f'{{"ts": {round(rec.ts, 6)!r}, "event": "{_VALUE[rec.kind]}", '
             f'{_owners_json(rec.owners)}, "owner_from": "{_VALUE[rec.via]}", "family": {family}, '
             f'"laddr": "{format_addr(family, sock.laddr)}", "lport": {sock.lport}, '
             f'"raddr": "{format_addr(family, sock.raddr)}", "rport": {sock.rport}']
    if rec.age is not None:
        parts.append(f', "age": {round(rec.age, 6)!r}')
    if rec.evidence is not None:
        parts.append(f', "evidence": "{rec.evidence.value}"')
    if rec.netns is not None:
        parts.append(f', "netns": {rec.netns}')
    if rec.where is not None:
        parts.append(_where_json(rec.where))
    parts.append("}")
    return "".join(parts)


_VALUE = {**{k: k.value for k in TraceKind}, **{v: v.value for v in Via}}
# Each set of owners and each unit/container, as JSON once (names are
# anyone's text: json.dumps escapes them).
_OWNERS_JSON: BoundedDict[tuple[Owner, ...], str] = BoundedDict(4096)
_WHERE_JSON: BoundedDict[Supervisor, str] = BoundedDict(4096)


def _owners_json(owners: tuple[Owner, ...]) -> str:
    piece = _OWNERS_JSON.peek(owners)
    if piece is None:
        piece = _OWNERS_JSON[owners] = (
            f'"pids": {json.dumps([o.pid for o in owners])}, '
            f'"comms": {json.dumps([o.comm for o in owners], ensure_ascii=True)}')
    return piece


def _where_json(where: Supervisor) -> str:
    piece = _WHERE_JSON.peek(where)
    if piece is None:
        piece = _WHERE_JSON[where] = "".join(
            f", {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)}"
            for k, v in where.fields().items())
    return piece


def any_line(trace: Callable[[TraceRecord], str], rec) -> str:
    """A trace line, or a SUMMARY line or a switch (engine/summary)."""
    if isinstance(rec, Counted):
        return (f"{clock(rec.ts)} {'SUMMARY':<8} {rec.owner.pid:>7} {_safe(rec.owner.comm):<12.12} "
                f"{rec.entered} in, {rec.left} out in {rec.seconds:g}s")
    if isinstance(rec, Switched):
        if rec.on:
            return (f"{clock(rec.ts)} {'SUMMARY':<8} {rec.rate:.0f} transitions/s, over "
                    f"{rec.threshold:g}: one line per process per second (--summary 0: every line)")
        return (f"{clock(rec.ts)} {'EVERY':<8} {rec.rate:.0f} transitions/s, under "
                f"{rec.threshold / 2:g}: every line again")
    return trace(rec)


def any_json(trace: Callable[[TraceRecord], str], rec) -> str:
    """A trace JSON line, or a summary one: {"event": "summary", "pid",
    "comm", "in", "out", "seconds"}, or a switch: {"event": "mode",
    "summary": true|false, "rate", "threshold"}."""
    if isinstance(rec, Counted):
        return json.dumps({"ts": round(rec.ts, 6), "event": "summary", "pid": rec.owner.pid,
                           "comm": rec.owner.comm, "in": rec.entered, "out": rec.left,
                           "seconds": rec.seconds})
    if isinstance(rec, Switched):
        return json.dumps({"ts": round(rec.ts, 6), "event": "mode", "summary": rec.on,
                           "rate": rec.rate, "threshold": rec.threshold})
    return trace(rec)


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
    return safe(row.where.shown or "-")[:28]


def summary_json(rows: Iterable[ProcSummary]) -> str:
    return json.dumps({"summary": [
        {"pid": r.owner.pid, "comm": r.owner.comm, "entered": r.entered,
         "open": r.still_open, "longest": round(r.longest, 3),
         **(r.where.fields() if r.where else {})} for r in rows]})
