"""Flood: N sockets in CLOSE_WAIT across P processes at once (default 100k
across 1000), then `resreap watch` reaps them all.  Prints how long it took,
resreap's peak RSS and CPU, and whether every process was reaped once.

    sudo .venv/bin/python bench/flood.py [--procs 1000] [--per 100] [--backend bpf]

Runs in a network namespace of its own; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

# Its own lock: a benchmark's watch must not collide with a production one
# on the same host (one watch per host, resreap/instance.py).
os.environ.setdefault("RESREAP_LOCK", "/run/resreap/flood.lock")
ROOT = Path(__file__).resolve().parent.parent
NS = "rrflood"


def child(per: int, ready_w: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(per)
    port = srv.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(per)]
    held = [srv.accept()[0] for _ in range(per)]
    for c in clients:
        c.close()                   # the peer closes; `held` stays in CLOSE_WAIT
    os.write(ready_w, b"x")
    signal.pause()
    del held


def leak(procs: int, per: int, tag: str) -> list[int]:
    """Fork the leakers (run inside the namespace: this script re-executes
    itself there with --child-mode)."""
    r, w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                child(per, w)
            finally:
                os._exit(0)
        pids.append(pid)
    got = 0
    while got < procs:
        got += len(os.read(r, procs))
    return pids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--per", type=int, default=100)
    ap.add_argument("--backend", default="bpf")
    ap.add_argument("--leak-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="rrflood")
    args = ap.parse_args()
    if args.leak_only:
        pids = leak(args.procs, args.per, args.tag)
        print(json.dumps(pids), flush=True)
        sys.stdin.read()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        return
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"], check=True)
    tag = f"rrflood{os.getpid()}"
    leaker = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, __file__, "--leak-only",
                               "--procs", str(args.procs), "--per", str(args.per), "--tag", tag],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        began = time.monotonic()
        pids = set(json.loads(leaker.stdout.readline()))
        print(f"{len(pids)} processes hold {len(pids) * args.per} sockets in CLOSE_WAIT "
              f"(set up in {time.monotonic() - began:.1f}s)", flush=True)
        watch = subprocess.Popen(
            [str(ROOT / ".venv/bin/resreap"), "watch", "--json", "--backend", args.backend,
             "-f", "flood.py", "-l", str(args.per // 2), "-i", "1", "-w", "1",
             "--max-rate", f"{args.procs * 2}/60"],
            stderr=subprocess.PIPE, text=True)
        events: list[dict] = []
        threading.Thread(target=lambda: [events.append(json.loads(l)) for l in watch.stderr],
                         daemon=True).start()
        t0 = time.monotonic()
        deadline = t0 + 600
        while time.monotonic() < deadline:
            done = {e["pid"] for e in list(events) if e.get("event") == "outcome"}
            if pids <= done:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        proc = psutil.Process(watch.pid)
        hwm = proc.memory_full_info().uss / 2**20  # unique memory: what resreap itself costs
        times = proc.cpu_times()
        cpu = times.user + times.system
        watch.send_signal(signal.SIGINT)
        watch.wait(60)
        reaps = [e["pid"] for e in events if e.get("event") == "reap"]
        print(json.dumps({"processes": len(pids), "sockets": len(pids) * args.per,
                          "all_reaped": pids <= set(reaps), "reaped_twice": len(reaps) - len(set(reaps)),
                          "seconds_from_start_to_last_outcome": round(took, 1),
                          "uss_mb": round(hwm, 1), "cpu_s": round(cpu, 2)}))
    finally:
        leaker.stdin.close()
        leaker.wait(120)
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
