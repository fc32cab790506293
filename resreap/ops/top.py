"""`resreap top`: a live view of the processes heading for a reap.

It runs the same event source and the same watcher as `watch`, always as a
dry run (it never signals, takes no lock), and draws engine/view.rows each
second: one row per process holding CLOSE_WAIT sockets.  `--once` prints
one frame after a short look, `--json` the same data as one object.
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

from resreap.engine.config import Current
from resreap.engine.owners import OwnerResolver, check_privileges
from resreap.engine.view import Row, rows
from resreap.engine.watch import Watcher, read_latency
from resreap.host.sockets import SocketTable
from resreap.ops.settings import WatchSettings
from resreap.sources.events import open_source

SORTS = ("reap-in", "close-wait", "counting", "oldest")
# --once: the first look lasts the grace and a little, so that every socket
# has been judged once (its evidence says when it would count).
FIRST_LOOK_EXTRA = 0.5


def _key(sort: str):
    return {"close-wait": lambda r: -r.close_wait, "counting": lambda r: -r.counting,
            "oldest": lambda r: -r.oldest,
            "reap-in": lambda r: (r.reap_in is None, r.reap_in or 0.0, -r.close_wait)}[sort]


def start(st: WatchSettings) -> Watcher:
    """The watch's stack, as a dry run.  Its decision lines are what top
    shows: they are not printed too (a stray `would-reap` on stderr)."""
    decisions = logging.getLogger("resreap.engine.decisions")
    decisions.addHandler(logging.NullHandler())
    decisions.propagate = False
    check_privileges()
    config = st.engine._replace(
        plan=st.engine.plan._replace(dry_run=True),
        rules=tuple(r._replace(plan=r.plan._replace(dry_run=True)) for r in st.engine.rules))
    earliest = config.ruleset().earliest
    table = SocketTable()
    selected = open_source(st.backend, table, latency=read_latency(earliest),
                           poll_interval=st.poll_interval or max(0.05, earliest / 2),
                           first_pass=True)
    watcher = Watcher(selected.source, OwnerResolver(table), Current(config))
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
    row's ``action`` from ``plans`` (by rule name)."""
    source = watcher.source
    found = [r._replace(action=(plans or {}).get(r.rule, "-")) for r in rows(watcher, now)]
    return {"backend": source.name, "loader": source.loader or "-",
            "close_wait": len(watcher.table), "events_per_s": round(rate, 1),
            "lost": source.lost(), "limit": watcher.limits.limit, "sort": sort,
            "rules": len(watcher.current.rules.rules),
            "rows": sorted(found, key=_key(sort)),
            "reaps": [(o.target.info.pid, o.target.info.comm, o.result.value)
                      for o in watcher.outcomes[-5:]]}


def as_json(data: dict) -> str:
    return json.dumps({**data, "rows": [r._asdict() for r in data["rows"]]}, default=str)


def render(data: dict, height: int = 24):
    """A rich renderable that fits ``height`` lines (80 columns)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lost = data["lost"] if data["lost"] is not None else "?"
    head = Text(f"resreap top  {data['backend']}/{data['loader']}  CLOSE_WAIT "
                f"{data['close_wait']}  ev/s {data['events_per_s']}  lost {lost}  -l "
                f"{data['limit']}  by {data['sort']}  [s]ort [q]uit", no_wrap=True)
    table = Table(box=None, pad_edge=False, expand=False, padding=(0, 1, 0, 0))
    # With rules, the rule takes the oldest age's place (80 columns).
    ruled = bool(data.get("rules"))
    columns = (("PID", 7), ("COMM", 9), ("UNIT/CONT", 11), ("CW", 4), ("CNT", 4),
               ("EVIDENCE", 10), ("RULE", 8), ("FDS", 9), ("REAP IN", 7)) if ruled else (
        ("PID", 7), ("COMM", 10), ("UNIT/CONT", 12), ("CW", 4), ("CNT", 4), ("EVIDENCE", 11),
        ("OLDEST", 6), ("FDS", 10), ("REAP IN", 7))
    for name, width in columns:
        table.add_column(name, width=width, no_wrap=True, overflow="ellipsis")
    for r in data["rows"][:max(1, height - 9)]:
        cells = _cells(r)
        table.add_row(*(cells[:6] + [r.rule] + cells[7:] if ruled else cells))
    reaps = Text("recent: " + ("  ".join(f"{pid} {comm} {result}" for pid, comm, result
                                        in data["reaps"]) or "none"), no_wrap=True)
    return Group(head, table, reaps)


def _cells(r: Row) -> list[str]:
    evidence = ",".join(f"{k[:6]}:{n}" for k, n in sorted(r.evidence.items())) or "-"
    fds = f"{r.fds if r.fds is not None else '?'}/{r.fd_limit or '-'}"
    reap = "-" if r.reap_in is None else "now" if r.reap_in == 0 else f"{r.reap_in:.0f}s"
    return [str(r.pid), r.comm, r.container or r.unit or "-", str(r.close_wait),
            str(r.counting), evidence, f"{r.oldest:.0f}s", fds, reap]


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
    return sum(watcher.events_seen.values())


def first_look(watcher: Watcher) -> float:
    """Run the watcher until every socket has been judged once; the
    events per second meanwhile."""
    began, seen = time.monotonic(), _events(watcher)
    look = watcher.current.rules.earliest + FIRST_LOOK_EXTRA
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
                    live.update(render(frame(watcher, now, rate, sort, plans), console.height),
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
