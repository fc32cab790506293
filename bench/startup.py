"""Start-to-ready: from launching `resreap watch` to its `start` line, for
each way of loading the event source, on an idle host and beside three CPU
hogs.  The median of a few runs; each run is a fresh process.

    sudo scripts/bench --startup [--startup-runs 5]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid

# tool -> (backend, RESREAP_BPF_LOADER)
LOADERS = {"bpf-core": ("bpf", "core"), "bpf-bcc": ("bpf", "bcc"), "proc": ("proc", "auto")}
HOGS = 3


def start_to_ready(resreap: str, backend: str, loader: str, timeout: float = 180) -> float:
    """Seconds from launch to the start line (a dry run: nothing signalled)."""
    env = dict(os.environ, RESREAP_BPF_LOADER=loader)
    began = time.monotonic()
    proc = subprocess.Popen([resreap, "watch", "--json", "-d", "--backend", backend,
                             "-f", f"rrstart{uuid.uuid4().hex[:8]}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd="/")
    try:
        deadline = began + timeout
        for line in proc.stderr:
            if time.monotonic() > deadline:
                break
            try:
                if json.loads(line).get("event") == "start":
                    return time.monotonic() - began
            except ValueError:
                continue
        raise RuntimeError(f"{backend}/{loader} did not start")
    finally:
        proc.terminate()
        proc.wait(30)


def hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run(resreap: str, runs: int) -> list[dict]:
    rows = []
    for load in ("idle", f"{HOGS} CPU hogs"):
        busy = hogs(HOGS) if load != "idle" else []
        try:
            time.sleep(0.5 if busy else 0)
            for tool, (backend, loader) in LOADERS.items():
                times = [start_to_ready(resreap, backend, loader) for _ in range(runs)]
                rows.append({"load": load, "tool": tool, "median_s": round(statistics.median(times), 3),
                             "max_s": round(max(times), 3), "runs": runs})
                print(f"  {load:<12} {tool:<9} median {rows[-1]['median_s']:.3f} s", file=sys.stderr)
        finally:
            for h in busy:
                h.kill()
                h.wait()
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| host | loader | start-to-ready, median s | max s | vs proc |", "|---|---|---|---|---|"]
    for r in rows:
        base = next(x["median_s"] for x in rows if x["load"] == r["load"] and x["tool"] == "proc")
        lines.append(f"| {r['load']} | {r['tool']} | {r['median_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['median_s'] / base:.1f}x |")
    return lines
