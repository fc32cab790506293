"""How well resreap forecasts fd exhaustion, how early --act-before reaps,
and what the forecast costs per loop turn.

    sudo .venv/bin/python bench/forecast.py [--every 0.25] [--act-before 20]

1. Accuracy: a real server with a soft RLIMIT_NOFILE of 200 that reads
   each EOF and keeps the socket, fed by a client that connects and closes
   one socket every 0.25 s (steady), then ten every 2.5 s (bursty: the
   same pace in steps).  The watch's own stack runs in this process (a dry
   run, the BPF source, the kernel first pass) and its forecast is read
   every 0.25 s until the server's first EMFILE (it prints the moment);
   the table gives the forecast's error against the real time left at
   25, 50 and 75% of the way there.
2. The reap: the same leaks under a real `resreap watch -l 1000
   --act-before 20` (fenced by -f on this run's tag): when it reaps,
   against when the first run's server hit EMFILE at the same pace, and
   whether this one ever did.
3. The cost: the forecaster alone (engine/forecast) with 10,000 holders,
   per loop turn, when every holder's count changed in the turn, when 1%
   did and when none did; the metrics' "soonest" pass over all of them;
   and one read of a live process's fds and fd limit by the /proc edge.

Prints markdown; docs/benchmarks.md cites it.  Absolute figures drift
between days: read them as orders of magnitude, compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACTORS = ROOT / "tests" / "actors.py"
FD_LIMIT = 200


class Actor:
    """One subject from tests/actors.py (READY line, then commands)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ACTORS), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        line = self.expect("READY")
        self.facts = dict(kv.split("=", 1) for kv in line.split()[1:])

    def expect(self, word: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], deadline - time.monotonic())[0]:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith(word):
                    return line.strip()
        raise TimeoutError(f"no {word} from {self.proc.args}")

    def said(self, word: str) -> str | None:
        """A line starting with ``word`` if one is waiting (no wait)."""
        while select.select([self.proc.stdout], [], [], 0)[0]:
            line = self.proc.stdout.readline()
            if not line:
                return None
            if line.startswith(word):
                return line.strip()
        return None

    def send(self, command: str, reply: str | None = None) -> str | None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(reply) if reply else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def subjects(tag: str, every: float, burst: int) -> tuple[Actor, Actor, int]:
    server = Actor("limited-server", "127.0.0.1", FD_LIMIT, "leak", f"tag={tag}")
    clients = Actor("paced-clients", "127.0.0.1", server.facts["port"], every, burst,
                    f"tag={tag}")
    base = int(server.send("fds", "FDS").split()[1])
    return server, clients, base


def accuracy(every: float, burst: int) -> dict:
    """Run the watch's stack in this process; read its forecast for the
    server every 0.25 s until the server's first EMFILE."""
    from resreap.cli import _watch_defaults
    from resreap.ops import settings, top

    tag = "rrfc" + uuid.uuid4().hex[:8]
    server, clients, base = subjects(tag, every, burst)
    given = {**_watch_defaults(), "limit": 1000, "command_pattern": tag}
    st = settings.validate(given)  # no config file: these settings alone
    watcher = top.start(st, churn=False)
    pid = int(server.facts["pid"])
    samples: list[tuple[float, float | None]] = []
    try:
        began = float(clients.send("go", "GO").split()[1])
        emfile, next_look = None, time.monotonic()
        while emfile is None and time.monotonic() - began < 300:
            watcher.step()
            now = time.monotonic()
            if now >= next_look:
                next_look += 0.25
                owner = next((o for o in watcher.sockets.counter.by_owner if o.pid == pid), None)
                samples.append((now, watcher.forecasts.seconds(owner, now) if owner else None))
            line = server.said("EMFILE")
            if line:
                emfile = float(line.split()[1])
    finally:
        watcher.source.close()
        clients.close()
        server.close()
    if emfile is None:
        raise RuntimeError("the server never ran out of fds")
    first = next((t for t, f in samples if f is not None), None)
    points = {}
    for share in (0.25, 0.5, 0.75):
        at = began + share * (emfile - began)
        t, f = min(samples, key=lambda s: abs(s[0] - at))
        left = emfile - t
        points[f"{int(share * 100)}%"] = None if f is None else round((f - left) / left * 100, 1)
    return {"every": every, "burst": burst, "base_fds": base,
            "to_emfile": round(emfile - began, 2),
            "first_forecast_after": round(first - began, 2) if first else None,
            "error_pct": points}


def reap(every: float, burst: int, act_before: float, to_emfile: float) -> dict:
    """A real watch with --act-before: when it reaps, against the time to
    EMFILE the accuracy run measured at the same pace."""
    tag = "rrfc" + uuid.uuid4().hex[:8]
    server, clients, _base = subjects(tag, every, burst)
    watch = subprocess.Popen([str(ROOT / ".venv" / "bin" / "resreap"), "watch", "--json",
                              "-f", tag, "-l", "1000", "--act-before", str(act_before)],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: dict = {}
    try:
        for line in watch.stderr:
            if '"start"' in line:
                break
        began = float(clients.send("go", "GO").split()[1])
        for line in watch.stderr:
            event = json.loads(line)
            if event.get("event") == "reap" and str(event.get("pid")) == server.facts["pid"]:
                found = event
                reaped = time.monotonic()
                break
        server.proc.wait(10)
        emfile = server.said("EMFILE")
    finally:
        clients.close()
        server.close()
        watch.terminate()
        watch.wait(15)
    return {"every": every, "burst": burst, "reaped_after": round(reaped - began, 2),
            "margin_s": round(to_emfile - (reaped - began), 2), "reason": found.get("reason"),
            "count": found.get("count"), "exhausted_in": found.get("exhausted_in"),
            "emfile_seen": emfile is not None}


def cost(holders: int = 10_000) -> dict:
    """The forecaster's own work per loop turn, fd reads stubbed (measured
    apart), and one real read."""
    from resreap.engine import forecast
    from resreap.engine.policy import Counter
    from resreap.host.procinfo import Proc
    from resreap.model import Owner

    class Stub:
        def fd_count(self, pid):
            return 100

        def fd_soft_limit(self, pid):
            return 1024

    f = forecast.Forecaster(Stub())
    counter = Counter()
    owners = [Owner(10_000 + i, i, "leaker") for i in range(holders)]
    key = 0
    out: dict = {"holders": holders}
    for label, changing in (("all change", holders), ("1% change", holders // 100),
                            ("none change", 0)):
        turns, took = 50, 0.0
        for turn in range(turns):
            now = 1000.0 + turn * 0.5
            for owner in owners[:changing]:
                key += 1
                counter.add(key, (owner,))
            t0 = time.perf_counter()
            for owner in f.follow(counter.by_owner, counter.changed, now):
                f.of(owner, now)          # as the watch does with --act-before
            took += time.perf_counter() - t0
        out[f"turn_ms ({label})"] = round(took / turns * 1000, 3)
    t0 = time.perf_counter()
    f.soonest(20, 1030.0)
    out["soonest_ms (metrics, once a second)"] = round((time.perf_counter() - t0) * 1000, 2)
    proc, pid = Proc(), os.getpid()
    t0 = time.perf_counter()
    for _ in range(1000):
        proc.fd_count(pid)
        proc.fd_soft_limit(pid)
    out["fd_read_us (fd count + limit, one process)"] = round((time.perf_counter() - t0) * 1000, 1)
    out["fd_reads_per_s (all growing, FD_FRESH)"] = round(holders / forecast.FD_FRESH)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--act-before", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = [(args.every, 1), (args.every * 10, 10)]
    acc = [accuracy(e, b) for e, b in runs]
    reaps = [reap(e, b, args.act_before, a["to_emfile"]) for (e, b), a in zip(runs, acc)]
    costs = cost()
    if args.json:
        print(json.dumps({"accuracy": acc, "reap": reaps, "cost": costs}))
        return
    print("| leak | to EMFILE | first forecast after | error at 25% | 50% | 75% |")
    print("|---|---|---|---|---|---|")
    for a in acc:
        e = a["error_pct"]
        print(f"| {a['burst']} every {a['every']:g} s | {a['to_emfile']} s | "
              f"{a['first_forecast_after']} s | {e['25%']}% | {e['50%']}% | {e['75%']}% |")
    print()
    print(f"| leak | --act-before {args.act_before:g}: reaped after | margin before EMFILE | "
          "reason | count | exhausted_in | EMFILE seen |")
    print("|---|---|---|---|---|---|---|")
    for r in reaps:
        print(f"| {r['burst']} every {r['every']:g} s | {r['reaped_after']} s | "
              f"{r['margin_s']} s | {r['reason']} | {r['count']} | {r['exhausted_in']} s | "
              f"{'yes' if r['emfile_seen'] else 'no'} |")
    print()
    for k, v in costs.items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
