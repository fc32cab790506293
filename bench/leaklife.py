"""A leak's life on one time axis, from a real run: a server that reads its
clients' EOF and never closes (bench/workload.py leaker), watched by
`resreap watch -D --json`.  Its three sockets enter CLOSE_WAIT, stay, are
looked at on their deadline (the evidence), count, and the process is
reaped; the picture is drawn from the watch's own decision lines.

    sudo .venv/bin/python bench/leaklife.py [--out docs/leak-life.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRACE = 2.0


def run(resreap: str) -> tuple[list[dict], float]:
    """The watch's decision lines and the monotonic time the clients closed."""
    tag = f"rrlife{uuid.uuid4().hex[:8]}"
    watch = subprocess.Popen([resreap, "watch", "--json", "-D", "-f", tag, "-i", str(GRACE),
                              "-w", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lines: list[dict] = []
    threading.Thread(target=lambda: [lines.append(json.loads(ln)) for ln in watch.stderr
                                     if ln.startswith("{")], daemon=True).start()
    procs = []
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "start" for e in lines):
            if time.monotonic() > deadline:
                raise SystemExit("leaklife: the watch did not start")
            time.sleep(0.05)
        leaker = subprocess.Popen([sys.executable, str(HERE / "workload.py"), "leaker", tag],
                                  stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        procs.append(leaker)
        port = leaker.stdout.readline().split()[1].split("=")[1]
        driver = subprocess.Popen([sys.executable, str(HERE / "workload.py"), "leak", port],
                                  stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        procs.append(driver)
        driver.stdout.readline()
        time.sleep(0.5)
        driver.stdin.write("close\n")
        driver.stdin.flush()
        closed_wall = time.time()
        deadline = time.monotonic() + 30
        while not any(e["event"] == "outcome" for e in lines):
            if time.monotonic() > deadline:
                raise SystemExit("leaklife: no outcome")
            time.sleep(0.05)
        time.sleep(0.5)
        return list(lines), closed_wall
    finally:
        for p in procs:
            p.kill()
            p.wait()
        watch.terminate()
        watch.wait(15)


def plot(lines: list[dict], closed: float, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def t(e: dict) -> float:
        return e["ts"] - closed

    socks = sorted({e["socket"] for e in lines if e["event"] in ("transition", "timer")})
    row = {s: i for i, s in enumerate(socks)}
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=110)
    reap = next(e for e in lines if e["event"] == "reap")
    outcome = next(e for e in lines if e["event"] == "outcome")
    # In CLOSE_WAIT from the kernel's entry time (its deadline less the
    # grace: timers run on kernel timestamps) to its exit.
    entered = {e["socket"]: t(e) - GRACE for e in lines
               if e["event"] == "timer" and e["verdict"] == "counts"}
    left = {e["socket"]: t(e) for e in lines
            if e["event"] == "transition" and e["kind"] == "exit"}
    for sock, y in row.items():
        start, end = entered.get(sock), left.get(sock, t(outcome))
        if start is not None:
            ax.plot([start, end], [y, y], color="tab:blue", lw=6, alpha=0.35,
                    solid_capstyle="butt", label="in CLOSE_WAIT" if y == 0 else None)
    for e in lines:
        if e["event"] == "transition":
            y = row[e["socket"]]
            enter = e["kind"] == "enter"
            ax.plot(t(e), y, "o" if enter else "s", color="tab:blue" if enter else "black",
                    ms=5, label=(("seen (taken from the kernel's map)" if enter else "exit")
                                 if y == 0 else None))
        if e["event"] == "timer":
            y = row[e["socket"]]
            ax.plot(t(e), y, "D", color="tab:red" if e["verdict"] == "counts" else "tab:orange",
                    label="deadline: counts" if y == 0 else None)
            ax.annotate(f"{e.get('evidence', '')}", (t(e), y), textcoords="offset points",
                        xytext=(-60, 6), fontsize=7)
    ax.axvline(t(reap), color="tab:red", ls="--", lw=1)
    ax.annotate(f"reap ({reap['evidence']})", (t(reap), len(socks) - 0.4), fontsize=8,
                xytext=(4, 0), textcoords="offset points", color="tab:red")
    ax.axvline(t(outcome), color="black", ls=":", lw=1)
    ax.annotate(f"outcome: {outcome['result']} ({outcome['took']:g}s)", (t(outcome), -0.6),
                fontsize=8, xytext=(4, 0), textcoords="offset points")
    ax.axvline(GRACE, color="grey", lw=0.8)
    ax.set_yticks(range(len(socks)), [s.split("->")[1] for s in socks], fontsize=7)
    ax.set_ylim(-0.9, len(socks) - 0.1)
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    ax.set_xlabel(f"seconds after the clients closed (grace {GRACE:g} s, the grey line)")
    ax.set_title("A leak's life: CLOSE_WAIT entered, looked at on its deadline, counted, reaped",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resreap", default=str(ROOT / ".venv" / "bin" / "resreap"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "leak-life.png"))
    args = ap.parse_args()
    lines, closed = run(args.resreap)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"closed": closed, "lines": [e for e in lines if e["event"] in
                                     ("transition", "timer", "reap", "outcome")]}, indent=1))
    plot(lines, closed, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
