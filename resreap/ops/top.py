"""`resreap top`: a live view of the processes heading for a reap.

It runs the same event source and the same watcher as `watch`, always as a
dry run (it never signals, takes no lock), and draws engine/view.rows each
second: one row per process holding CLOSE_WAIT sockets or passing sockets
through it.  Its source keeps every transition (no kernel first pass, as
`trace`), so that each process's churn is seen.  The reaps it lists are
the acting watch's (ops/recent.py), not its own would-be ones.  `--once`
prints one frame after a short look, `--json` the same data as one object.
Interactive: `q` quits, `s` changes the sort.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import time
from typing import Callable

from resreap.engine.churn import Churn
from resreap.engine.owners import check_privileges
from resreap.engine.view import Row, rows
from resreap.engine.watch import Watcher
from resreap.ops.escaping import safe
from resreap.ops.formatting import clock
from resreap.ops.instance import watch_holder
from resreap.ops.recent import read as read_recent
from resreap.ops import stack
from resreap.ops.settings import WatchSettings

SORTS = ("reap-in", "close-wait", "counting", "oldest", "churn", "out")
# --once: the first look lasts the grace and a little, so that every socket
# has been judged once (its evidence says when it would count).
FIRST_LOOK_EXTRA = 0.5
# ... and where a rule acts on forecasts (--act-before), this long at least:
# a forecast needs some seconds of growth (engine/forecast: 3 sockets over
# 4 s after the grace), so that a fast leak's shows in one frame.
FORECAST_LOOK = 8.0


def _key(sort: str):
    return {"close-wait": lambda r: -r.close_wait, "counting": lambda r: -r.counting,
            "oldest": lambda r: -r.oldest, "churn": lambda r: (-r.enter_rate, -r.exit_rate),
            "reap-in": lambda r: (r.reap_in is None, r.reap_in or 0.0, -r.close_wait),
            "out": lambda r: (r.exhausted_in is None, r.exhausted_in or 0.0, -r.counting)}[sort]


def start(st: WatchSettings, churn: bool = True) -> Watcher:
    """The watch's stack, as a dry run.  Its decision lines are what top
    shows: they are not printed too (a stray `would-reap` on stderr).
    ``churn``: record each process's rates (top); without, holders only
    (`rules`).  Both run the watch's kernel first pass: a socket that leaves
    CLOSE_WAIT before it is taken never reaches user space, and with churn
    the kernel counts it for the process that closed it (its IN and OUT)."""
    decisions = logging.getLogger("resreap.engine.decisions")
    decisions.addHandler(logging.NullHandler())
    decisions.propagate = False
    check_privileges()
    watcher = stack.build(st, st.engine.dry_run(), first_pass=True, credit=churn).watcher
    if churn:
        watcher.sockets.churn = Churn(time.monotonic())
    watcher.start()
    return watcher


def actions(st: WatchSettings) -> dict[str, str]:
    """What each rule would do, by name, as configured (top itself runs
    them all as dry runs)."""
    return {r.name: "dry run" if r.plan.dry_run else r.plan.describe()
            for r in st.engine.ruleset().every()}


def frame(watcher: Watcher, now: float, rate: float, sort: str,
          plans: dict[str, str] | None = None) -> dict:
    """One frame's data: the header's figures and the rows, sorted; each
    row's ``action`` from ``plans`` (by rule name); the acting watch's
    last reaps."""
    source = watcher.source
    found = [r._replace(action=(plans or {}).get(r.rule, "-")) for r in rows(watcher, now)]
    holder, recent = watch_holder(), read_recent()
    return {"backend": source.name, "loader": source.loader or "-",
            "close_wait": len(watcher.table), "events_per_s": round(rate, 1),
            "lost": source.lost(), "limit": watcher.current.limits.limit, "sort": sort,
            "rules": len(watcher.current.rules.rules),
            "rows": sorted(found, key=_key(sort)),
            "watch": holder.pid if holder is not None else None,
            "reaps": list(recent.reaps) if recent is not None else []}


def as_json(data: dict) -> str:
    return json.dumps({**data, "rows": [r._asdict() for r in data["rows"]],
                       "reaps": [r._asdict() for r in data["reaps"]]}, default=str)


# The columns at 80: with rules, RULE takes OLD's and RSS's place (the JSON
# has them all).  OUT: when its fds run out at its leak's pace.
COLUMNS = (("PID", 7), ("COMM", 8), ("UNIT/CONT", 9), ("CW/CNT", 7), ("EVID", 6),
           ("OLD", 3), ("IN/OUT", 8), ("FDS", 9), ("OUT", 3), ("RSS", 5), ("REAP", 4))
RULED = (("PID", 7), ("COMM", 8), ("UNIT/CONT", 9), ("CW/CNT", 7), ("EVID", 6),
         ("RULE", 9), ("IN/OUT", 8), ("FDS", 9), ("OUT", 3), ("REAP", 4))
REAPS_SHOWN = 3


# Past 80 columns, UNIT/CONT takes the room (a pod's namespace/name is long).
PLACE_MAX = 48


def render(data: dict, height: int = 24, width: int = 80):
    """A rich renderable that fits ``height`` lines and ``width`` columns
    (80 at least)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lost = data["lost"] if data["lost"] is not None else "?"
    rules = f" ({data['rules']} rules)" if data.get("rules") else ""
    head = Text(f"resreap top  {data['backend']}/{data['loader']}  CLOSE_WAIT "
                f"{data['close_wait']}  ev/s {data['events_per_s']:g}  lost {lost}  -l "
                f"{data['limit']}{rules}", no_wrap=True, overflow="ellipsis")
    keys = Text(f"sort {data['sort']}  [s]ort [q]uit   EVID: e=eof-ignored u=unread "
                "q=queued s=sending", no_wrap=True, overflow="ellipsis")
    ruled = bool(data.get("rules"))
    table = Table(box=None, pad_edge=False, expand=False, padding=(0, 1, 0, 0))
    extra = min(max(0, width - 80), PLACE_MAX - 9)
    for name, size in RULED if ruled else COLUMNS:
        size += extra if name == "UNIT/CONT" else 0
        table.add_column(name, width=size, no_wrap=True, overflow="ellipsis")
    reaps = _reap_lines(data)
    for r in data["rows"][:max(1, height - 4 - len(reaps))]:
        table.add_row(*_cells(r, ruled))
    return Group(head, keys, table, *(Text(line, no_wrap=True, overflow="ellipsis")
                                      for line in reaps))


def _reap_lines(data: dict) -> list[str]:
    """The acting watch's last reaps, newest first (its pid, or that none
    runs)."""
    who = f"watch {data['watch']}" if data.get("watch") else "no watch running"
    if not data["reaps"]:
        return [f"reaps ({who}): none recorded"]
    lines = [f"reaps ({who}), newest first:"]
    for r in reversed(data["reaps"][-REAPS_SHOWN:]):
        stamp = clock(r.ts)
        revive = f" revive={r.revive}" if r.revive else ""
        took = f"{r.took * 1000:.0f}ms" if r.took < 1 else f"{r.took:.1f}s"
        lines.append(f" {stamp} {r.result} {took}{revive}  {r.pid} {r.comm[:15]} "
                     f"{(r.where or '-')[:24]} rule={r.rule[:16]}")
    return lines


def _cells(r: Row, ruled: bool) -> list[str]:
    evidence = "".join(f"{_EVID.get(k, k[:1])}{_count(n)}"
                       for k, n in sorted(r.evidence.items())) or "-"
    fds = f"{_count(r.fds) if r.fds is not None else '?'}/{_count(r.fd_limit) if r.fd_limit else '-'}"
    reap, out = _when(r.reap_in), _when(r.exhausted_in)
    churn = f"{_rate(r.enter_rate)}/{_rate(r.exit_rate)}"
    head = [str(r.pid), safe(r.comm), safe(r.place or "-"),
            f"{_count(r.close_wait)}/{_count(r.counting)}", evidence]
    if ruled:
        return head + [safe(r.rule), churn, fds, out, reap]
    return head + [_age(r.oldest) if r.close_wait else "-", churn, fds, out, _bytes(r.rss), reap]


_EVID = {"eof-ignored": "e", "unread": "u", "queued": "q", "sending": "s"}


def _when(seconds: float | None) -> str:
    """In how long: "-" never, "now", else an age."""
    return "-" if seconds is None else "now" if seconds == 0 else _age(seconds)


def _age(seconds: float) -> str:
    """Three characters (four past 999 days): 59s, 99m, 48h, 30d."""
    for unit, size in (("s", 1), ("m", 60), ("h", 3600)):
        if seconds < 99.5 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def _rate(per_s: float) -> str:
    if per_s == 0:
        return "0"
    if per_s < 10:
        return f"{per_s:.1f}"
    return f"{per_s:.0f}" if per_s < 1000 else f"{per_s / 1000:.0f}k"


def _count(n: int) -> str:
    return str(n) if n < 10000 else f"{n // 1000}k"


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{n}B"


def run(st: WatchSettings, *, once: bool, json_out: bool, sort: str,
        out: Callable[[str], None]) -> None:
    watcher = start(st)
    try:
        if once or json_out or not sys.stdin.isatty():
            _once(watcher, sort, json_out, out, actions(st))
        else:
            _live(watcher, sort, actions(st))
    finally:
        watcher.source.close()


def _events(watcher: Watcher) -> int:
    return sum(watcher.sockets.events_seen.values())


def first_look(watcher: Watcher) -> float:
    """Run the watcher until every socket has been judged once; the
    events per second meanwhile."""
    began, seen = time.monotonic(), _events(watcher)
    rules = watcher.current.rules
    look = rules.earliest + FIRST_LOOK_EXTRA
    if rules.act_before is not None:
        look = max(look, FORECAST_LOOK)
    while time.monotonic() - began < look:
        watcher.step()
    return (_events(watcher) - seen) / max(0.001, time.monotonic() - began)


def _once(watcher: Watcher, sort: str, json_out: bool, out, plans: dict[str, str]) -> None:
    rate = first_look(watcher)
    data = frame(watcher, time.monotonic(), rate, sort, plans)
    if json_out:
        out(as_json(data))
    else:
        from rich.console import Console

        Console(width=80, force_terminal=False).print(render(data))


def _live(watcher: Watcher, sort: str, plans: dict[str, str]) -> None:
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    console = Console()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        last, seen, rate = 0.0, _events(watcher), 0.0
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                watcher.step()
                now = time.monotonic()
                if now - last >= 1.0:
                    rate = (_events(watcher) - seen) / max(0.001, now - last) if last else 0.0
                    seen, last = _events(watcher), now
                    live.update(render(frame(watcher, now, rate, sort, plans), console.height,
                                       console.width),
                                refresh=True)
                if select.select([fd], [], [], 0)[0]:
                    key = os.read(fd, 1)
                    if key in (b"q", b"Q"):
                        return
                    if key in (b"s", b"S"):
                        sort = SORTS[(SORTS.index(sort) + 1) % len(SORTS)]
                        last = 0.0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
