"""Soak: `resreap watch` under steady churn for 10 minutes; samples its open
fds, RSS and CPU every 30 s.  A leak of its own resources shows as growth.

    sudo .venv/bin/python bench/soak.py [--minutes 10] [--rate 2000] [--backend bpf]

Needs the churn generator: scripts/bench builds bench/.build/churn.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

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
    args = ap.parse_args()
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for cmd in (["ip", "link", "set", "lo", "up"], ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"],
                ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]):
        subprocess.run(["ip", "netns", "exec", NS, *cmd], check=True)
    watch = subprocess.Popen([str(ROOT / ".venv/bin/resreap"), "watch", "--backend", args.backend,
                              "-f", "churn", "-i", "2"], stderr=subprocess.DEVNULL)
    seconds = args.minutes * 60
    churn = subprocess.Popen(["ip", "netns", "exec", NS, args.churn_bin, "65432", str(args.rate),
                              str(seconds)], stdout=subprocess.DEVNULL)
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


if __name__ == "__main__":
    main()
