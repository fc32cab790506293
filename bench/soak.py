"""Soak: `resreap watch` under steady churn for 10 minutes; samples its open
fds, RSS and CPU every 30 s.  A leak of its own resources shows as growth.

    sudo .venv/bin/python bench/soak.py [--minutes 10] [--rate 2000] [--backend bpf]
    sudo .venv/bin/python bench/soak.py --slow-close --rate 100 --minutes 5

--slow-close: every socket stays in CLOSE_WAIT 0.5-1 s (its server closes
that long after its peer), long enough for resreap to look up its owner:
the case where a per-connection cache grew without bound.  The `stop`
line's tracked sockets and cached owners are printed at the end.

Needs the churn generator: scripts/bench builds bench/.build/churn.
"""

from __future__ import annotations

import argparse
import os
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Its own lock: a benchmark's watch must not collide with a production one
# on the same host (one watch per host, resreap/instance.py).
os.environ.setdefault("RESREAP_LOCK", "/run/resreap/soak.lock")
ROOT = Path(__file__).resolve().parent.parent
NS = "rrsoak"


def sample(proc: psutil.Process) -> tuple[int, float, float]:
    with proc.oneshot():
        cpu = proc.cpu_times()
        return proc.num_fds(), proc.memory_info().rss / 2**20, cpu.user + cpu.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--backend", default="bpf")
    ap.add_argument("--churn-bin", default=str(ROOT / "bench/.build/churn"))
    ap.add_argument("--slow-close", action="store_true")
    args = ap.parse_args()
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for cmd in (["ip", "link", "set", "lo", "up"], ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"],
                ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]):
        subprocess.run(["ip", "netns", "exec", NS, *cmd], check=True)
    log = open(f"/tmp/resreap-soak-{NS}.log", "w+")
    watch = subprocess.Popen([str(ROOT / ".venv/bin/resreap"), "watch", "--backend", args.backend,
                              "--json", "-f", "churn|slowclose", "-i", "2"], stderr=log)
    seconds = args.minutes * 60
    if args.slow_close:
        generator = [sys.executable, str(ROOT / "bench/workload.py"), "slowclose", str(args.rate),
                     str(seconds)]
    else:
        generator = [args.churn_bin, "65432", str(args.rate), str(seconds)]
    churn = subprocess.Popen(["ip", "netns", "exec", NS, *generator], stdout=subprocess.DEVNULL)
    try:
        time.sleep(3)
        print(f"{'t (s)':>6} {'fds':>5} {'RSS MB':>7} {'CPU s':>7}", flush=True)
        began = time.monotonic()
        rows = []
        proc = psutil.Process(watch.pid)
        while churn.poll() is None and time.monotonic() - began < seconds + 5:
            fds, rss, cpu = sample(proc)
            rows.append((fds, rss))
            print(f"{time.monotonic() - began:>6.0f} {fds:>5} {rss:>7.1f} {cpu:>7.2f}", flush=True)
            time.sleep(30)
        first, last = rows[0], rows[-1]
        print(f"fd growth {last[0] - first[0]:+d}, RSS growth {last[1] - first[1]:+.1f} MB "
              f"over {args.minutes:g} min at {args.rate} connections/s")
    finally:
        churn.kill()
        churn.wait()
        watch.send_signal(signal.SIGINT)
        watch.wait(30)
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
        log.seek(0)
        stops = [line for line in log if '"event": "stop"' in line]
        if stops:
            stop = json.loads(stops[-1])
            print(f"at stop: tracked={stop.get('tracked')} owner_cache={stop.get('owner_cache')}")


if __name__ == "__main__":
    main()
