"""The watch loop's longest gap while a tenant piles up hostile process trees
(#31): how long the loop can go without a turn, so without its watchdog
ping and without reaping anyone else's leak.

    sudo .venv/bin/python bench/loopgap.py chain [--depth 200] [--holders 201] [--reap]
    sudo .venv/bin/python bench/loopgap.py owners [--owners 10000]
    sudo .venv/bin/python bench/loopgap.py rename [--seconds 100]
        [--code DIR]     run the resreap of another checkout (a "before")
        [--profile FILE] the watch runs under cProfile, its profile written there

- chain: `nobody` forks a chain of DEPTH processes, and at its bottom a
  server whose 4 accepted sockets (their EOF read) are shared by HOLDERS
  processes (it and its forked children).  The watch spares them (`-f`
  matches only the fenced leak) unless --reap.
- owners: `nobody` makes OWNERS processes, each holding 2 such sockets,
  all spared.
- rename: 2 of `nobody`'s leaking processes rename themselves 20 times a
  second (prctl PR_SET_NAME), spared; the watch's memory is sampled.

The loop's turns are counted through systemd's protocol: the watch runs with
WATCHDOG_USEC=20000 (a ping every 10 ms of turns) and NOTIFY_SOCKET set to
this script's own socket.  A fenced leak (2 sockets, root's, matched by
`-f`) is started once the tenant is in place: its reap's delay past the
grace is printed too.  Loopback only; every process is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
GRACE = 2.0
FENCE = "rrgapfenced"

# The tenant, run as nobody: prints READY once every socket is in place.
TENANT = r"""
import ctypes, os, signal, socket, sys, time
mode, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def pair(lst):
    c = socket.create_connection(lst.getsockname())
    a = lst.accept()[0]
    c.close()
    a.recv(1)          # the EOF, read: eof-ignored once the grace is over
    return a

lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(64)
if mode == "chain":
    for _ in range(n):             # each level waits for the next
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            os._exit(0)
    held = [pair(lst) for _ in range(4)]
    for _ in range(m - 1):
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
elif mode == "owners":
    for _ in range(n):
        held = [pair(lst), pair(lst)]
        if os.fork() == 0:
            signal.pause()
            os._exit(0)
        for s in held:
            s.close()
else:   # rename
    libc = ctypes.CDLL(None)
    for _ in range(n):
        held = [pair(lst), pair(lst)]
        if os.fork() == 0:
            i = 0
            while True:
                i += 1
                libc.prctl(15, f"rn{i}".encode(), 0, 0, 0)   # PR_SET_NAME
                time.sleep(0.05)
        for s in held:
            s.close()
print("READY", flush=True)
signal.pause()
"""

FENCED = r"""
import signal, socket, sys
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(8)
cs = [socket.create_connection(lst.getsockname()) for _ in range(2)]
held = [lst.accept()[0] for _ in range(2)]
for c in cs:
    c.close()
for h in held:
    h.recv(1)
print("READY", flush=True)
signal.pause()
"""


class Pings:
    """WATCHDOG=1 datagrams, timestamped as they arrive."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.times: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.times.append(time.monotonic())

    def gaps(self, since: float) -> list[float]:
        t = [x for x in self.times if x >= since]
        return [b - a for a, b in zip(t, t[1:])]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("chain", "owners", "rename"))
    ap.add_argument("--depth", type=int, default=200)
    ap.add_argument("--holders", type=int, default=201)
    ap.add_argument("--owners", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--reap", action="store_true", help="let the watch reap the tenant")
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose resreap runs")
    ap.add_argument("--profile", help="write the watch's cProfile here")
    args = ap.parse_args()
    n, m = {"chain": (args.depth, args.holders), "owners": (args.owners, 0),
            "rename": (2, 0)}[args.mode]
    work = tempfile.mkdtemp(prefix="rrgap-")
    os.chmod(work, 0o755)
    pings = Pings(f"{work}/notify")
    tenant = subprocess.Popen([*NOBODY, sys.executable, "-c", TENANT, args.mode, str(n), str(m),
                               "rrgaptenant"], stdout=subprocess.PIPE, text=True, cwd="/",
                              start_new_session=True)
    fenced = watch = None
    try:
        began = time.monotonic()
        assert tenant.stdout.readline().strip() == "READY"
        print(f"tenant {args.mode} ready in {time.monotonic() - began:.1f}s", flush=True)
        env = dict(os.environ, PYTHONPATH=args.code, NOTIFY_SOCKET=f"{work}/notify",
                   WATCHDOG_USEC="20000", RESREAP_LOCK=f"{work}/lock/watch.lock")
        pick = f"{FENCE}|rrgaptenant" if args.reap else FENCE
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        watch = subprocess.Popen([sys.executable, "-P", *profile, "-m", "resreap", "watch", "--json",
                                  "-f", pick, "-i", str(GRACE), "-l", "2"],
                                 env=env, stderr=subprocess.PIPE, text=True, cwd="/")
        events: list[dict] = []
        # Each line with the time it arrived (its "ts" is the wall clock).
        threading.Thread(target=lambda: [events.append({**json.loads(ln), "at": time.monotonic()})
                                         for ln in watch.stderr if ln.startswith("{")],
                         daemon=True).start()
        deadline = time.monotonic() + 60
        while not any(e.get("event") == "start" for e in events):
            assert time.monotonic() < deadline and watch.poll() is None, "watch did not start"
            time.sleep(0.05)
        t0 = time.monotonic()
        fenced = subprocess.Popen([sys.executable, "-c", FENCED, FENCE], stdout=subprocess.PIPE,
                                  text=True, start_new_session=True)
        assert fenced.stdout.readline().strip() == "READY"
        leaked = time.monotonic()
        rss = []
        while time.monotonic() < t0 + args.seconds:
            time.sleep(1.0)
            rss.append(round(rss_mib(watch.pid), 1))
        reap = next((e for e in events if e.get("event") == "reap"
                     and e.get("pid") == fenced.pid), None)
        # The time since the last ping counts too: a turn still running at
        # the end of the window is the longest gap of all.
        gaps = sorted(pings.gaps(t0) + [time.monotonic() - max([t0] + pings.times)])
        print(json.dumps({
            "mode": args.mode, "code": args.code, "tenant": {"n": n, "m": m},
            "turns": len(gaps), "longest_gap_s": round(gaps[-1], 3) if gaps else None,
            "p99_gap_s": round(gaps[int(len(gaps) * 0.99)], 3) if gaps else None,
            "fenced_reap_after_grace_s":
                round(reap["at"] - leaked - GRACE, 2) if reap else "not reaped",
            "reaped": sum(1 for e in events if e.get("event") == "reap"),
            "rss_mib_first_last_max": [rss[0], rss[-1], max(rss)] if rss else None,
        }), flush=True)
    finally:
        if fenced is not None:
            fenced.kill()
            fenced.wait()
        for p in (watch,):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        try:
            os.killpg(tenant.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        tenant.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
