"""What operators run today, for comparison: the original resreap's
algorithm (two snapshots of `netstat -tnp`, their per-pid intersection,
kill at >= LIMIT) and the same with `ss -tanp state close-wait`.

  pollers.py netstat|ss TAG [INTERVAL] [LIMIT]

Only processes whose command line contains TAG are ever signalled (the
benchmark's leakers).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

SS_USER = re.compile(r"pid=(\d+)")


def netstat_snapshot() -> dict[int, set[str]]:
    out = subprocess.run(["netstat", "-tnp"], capture_output=True, text=True).stdout
    snap: dict[int, set[str]] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 7 and f[5] == "CLOSE_WAIT" and "/" in f[6]:
            snap.setdefault(int(f[6].split("/")[0]), set()).add(f"{f[3]} {f[4]}")
    return snap


def ss_snapshot() -> dict[int, set[str]]:
    out = subprocess.run(["ss", "-tanpH", "state", "close-wait"], capture_output=True,
                         text=True).stdout
    snap: dict[int, set[str]] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        for pid in SS_USER.findall(line):
            snap.setdefault(int(pid), set()).add(f"{f[2]} {f[3]}")
    return snap


def tagged(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return tag.encode() in f.read()
    except OSError:
        return False


def main() -> None:
    kind, tag = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    snapshot = netstat_snapshot if kind == "netstat" else ss_snapshot
    prev = snapshot()
    print("READY", flush=True)
    while True:
        time.sleep(interval)
        cur = snapshot()
        for pid, conns in cur.items():
            if len(conns & prev.get(pid, set())) >= limit and tagged(pid, tag):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        prev = cur


if __name__ == "__main__":
    main()
