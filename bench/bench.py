"""resreap's benchmark: cost and latency against the polling tools.

    sudo scripts/bench [--sizes 1000,10000,20000,50000,100000] [--tools bpf,bpf-bcc,proc,netstat,ss]
    sudo scripts/bench --startup                  start-to-ready, idle and beside 3 CPU hogs
    sudo scripts/bench --sizes 1000,10000,100000,1000000 --tools bpf,proc --leakers 20 \
        --out docs/scale                          the curve to a million connections

For each size N it builds N idle established loopback connections (spread
over holder processes: the hard fd limit is 20000 per process) inside a
network namespace of its own, then runs each tool in turn through three
phases and prints one table:

  idle   CPU seconds per minute with N idle connections, after start-up
         has settled (twice the time of one full fd scan at that size)
  leak   K leaking processes, staggered; detection latency = time of the
         first signal - (time the leaker's sockets entered CLOSE_WAIT +
         grace), p50 and p99
  churn  R connections/s passing through CLOSE_WAIT (bench/churn.c):
         the tool's CPU as % of one core, and as % of the CPU the traffic
         itself took (the generator's client and server), events lost,
         false kills
  costs  one sock_diag poll, where its time goes per namespace, one poll
         once quiet namespaces are skipped, and one full fd scan at this
         size (bench/costs.py)

Tools: bpf (the prebuilt CO-RE program, loaded by libbpf), bpf-bcc (the same
program compiled by bcc at start: the fallback), proc (polling), netstat
and ss (the original's approach, bench/pollers.py).  Start-up is the
seconds from launch to the start line with the N connections in place.
With three sizes or more, the curve is plotted next to the table (OUT.png).

--sweep RATES runs only the churn phase, at each rate, for resreap (bpf:
the kernel's first pass; bpf-full: without it, RESREAP_FIRST_PASS=0, as
before), the polling backend and bcc's tcpstates, and plots the cost against
the rate (docs/churn-cost.png).

Peak RSS is VmHWM of the tool's process.  Figures are compared as ratios
measured in the same run: machines are noisy.  Results land in
docs/benchmark.json and docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Its own lock: a benchmark's watch must not collide with a production one
# on the same host (one watch per host, resreap/instance.py).
os.environ.setdefault("RESREAP_LOCK", "/run/resreap/bench.lock")
ROOT = HERE.parent
NS = "rrbench"
PER_HOLDER = 9000          # 18000 fds: under the hard limit of 20000
GRACE = 2.0
RESREAP_TOOLS = ("bpf", "bpf-bcc", "bpf-full", "proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ns_exec(argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


def make_netns() -> None:
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"],
                ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]):
        subprocess.run(ns_exec(cmd), check=True)


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            bufsize=1, **kw)


def expect(proc: subprocess.Popen, word: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith(word):
            return line.strip()
    return None


def reap(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread (ns precision) plus waited-for children."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(") ")[2].split()
        total += (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime, cstime
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


LOST = re.compile(r"lost (\d+) events|Possibly lost (\d+) samples|(\d+) event\(s\) were lost")


class Tool:
    """One contender, started and stopped around the three phases."""

    def __init__(self, name: str, tag: str, resreap: str) -> None:
        self.name = name
        self.events: list[dict] = []
        self.start_s: float | None = None
        if name in ("tcpstates", "tcpstates-libbpf"):
            # bcc's tool (bpfcc-tools, Python) and libbpf-tools' (C), as
            # shipped: every TCP transition, printed into a pipe we drain.
            binary = "/usr/sbin/tcpstates-bpfcc" if name == "tcpstates" else "/usr/sbin/tcpstates"
            self.proc = subprocess.Popen([binary], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            self._drain_stderr()
            if name == "tcpstates-libbpf":
                # C stdio into a pipe: its header waits in a buffer.
                time.sleep(3.0)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start")
            elif expect(self.proc, "SKADDR", 120) is None:
                raise RuntimeError(f"{name} did not start")
            threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        elif name in ("trace", "trace-summary"):
            # What an operator runs in an incident: every entry and exit,
            # JSON lines into a file; or above 2000 transitions/s one line
            # per process per second (--summary, a terminal's default).
            self._sink = tempfile.TemporaryFile()
            summary = ["--summary", "2000"] if name == "trace-summary" else []
            self.proc = subprocess.Popen([resreap, "trace", "--json", "--backend", "bpf",
                                          *summary],
                                         stdout=self._sink, stderr=subprocess.PIPE, text=True)
            if "Tracing" not in self.proc.stderr.readline():
                raise RuntimeError("resreap trace did not start")
            self._drain_stderr()
        elif name == "top":
            # Live, on a terminal of its own (a pty we drain), narrowed to
            # the churn generator as an operator would narrow it.
            master, slave = os.openpty()
            self.proc = subprocess.Popen([resreap, "top", "-f", "churn"], stdin=slave,
                                         stdout=slave, stderr=slave, start_new_session=True,
                                         env=dict(os.environ, TERM="xterm", COLUMNS="80",
                                                  LINES="24"))
            os.close(slave)

            def drain(fd=master):
                while True:
                    try:
                        if not os.read(fd, 65536):
                            return
                    except OSError:
                        return
            threading.Thread(target=drain, daemon=True).start()
            time.sleep(3.0)  # its first look
            if self.proc.poll() is not None:
                raise RuntimeError("resreap top did not start")
        elif name in RESREAP_TOOLS:
            # -f: the leakers and the churn generator are eligible, so a
            # false kill of the churn server would show.
            backend = "bpf" if name.startswith("bpf") else name
            argv = [resreap, "watch", "--json", "--backend", backend, "-f", f"{tag}|churn",
                    "-i", str(GRACE), "-w", "1"]
            env = dict(os.environ, RESREAP_FIRST_PASS="0" if name == "bpf-full" else "1",
                       RESREAP_BPF_LOADER="bcc" if name == "bpf-bcc" else
                       "core" if name.startswith("bpf") else "auto")
            began = time.monotonic()
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env=env)
            threading.Thread(target=self._read, daemon=True).start()
            deadline = time.monotonic() + 120
            while not any(e.get("event") == "start" for e in self.events):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"resreap ({name}) did not start")
                time.sleep(0.01)
            self.start_s = time.monotonic() - began
        else:
            self.proc = spawn(ns_exec([sys.executable, str(HERE / "pollers.py"), name, tag,
                                       str(GRACE), "2"]))
            if expect(self.proc, "READY", 600) is None:
                raise RuntimeError(f"{name} poller did not start")

    def _drain_stderr(self) -> None:
        """Keep what the tool says of lost events: libbpf-tools' "lost N
        events on CPU #C", bcc's "Possibly lost N samples", resreap trace's
        "N event(s) were lost"."""
        self.lost = 0

        def drain():
            for line in self.proc.stderr:
                found = LOST.search(line)
                if found:
                    self.lost += int(next(g for g in found.groups() if g))
        threading.Thread(target=drain, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def stop(self) -> dict:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGINT if self.name in (
            *RESREAP_TOOLS, "tcpstates", "tcpstates-libbpf", "trace", "trace-summary", "top")
            else signal.SIGKILL)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.2)
        stop = [e for e in self.events if e.get("event") == "stop"]
        lost = stop[0]["lost_events"] if stop else getattr(self, "lost", None)
        return {"peak_rss_mb": round(rss, 1), "start_s": fmt(self.start_s, ".3f"),
                "lost_events": lost}


def phase_idle(tool: Tool, seconds: float, chatter: float = 0.0) -> float:
    """``chatter``: meanwhile a connection in the host's namespace (the
    tools run there) exchanges a byte that often, so its TCP counters never
    stand still and the polling fallback dumps it at every poll."""
    talker = None
    if chatter:
        talker = spawn([sys.executable, str(HERE / "workload.py"), "chatter", str(chatter)])
        if expect(talker, "READY", 10) is None:
            raise RuntimeError("the chatter did not start")
    try:
        c0 = cpu_seconds(tool.proc.pid)
        time.sleep(seconds)
        return (cpu_seconds(tool.proc.pid) - c0) / seconds * 60
    finally:
        if talker is not None:
            reap([talker])


def phase_leak(tool: Tool, tag: str, leakers: int, gap: float, wait_cap: float) -> dict:
    servers, drivers = [], []
    try:
        for _ in range(leakers):
            # Distinct command lines, as distinct services: one command line is
            # rate-limited by the storm guard (--max-rate).
            s = spawn(ns_exec([sys.executable, str(HERE / "workload.py"), "leaker", f"{tag}-{len(servers)}"]))
            port = expect(s, "READY", 30).split()[1].split("=")[1]
            d = spawn(ns_exec([sys.executable, str(HERE / "workload.py"), "leak", port]))
            expect(d, "READY", 30)
            servers.append(s)
            drivers.append(d)
        closed = []
        for d in drivers:
            d.stdin.write("close\n")
            d.stdin.flush()
            closed.append(float(expect(d, "CLOSED", 10).split()[1]))
            time.sleep(gap)
        latencies, missed = [], 0
        deadline = time.monotonic() + GRACE + wait_cap
        for s, t_closed in zip(servers, closed):
            line = expect(s, "SIGNAL", max(0.1, deadline - time.monotonic()))
            if line is None:
                missed += 1
            else:
                latencies.append(float(line.split()[1]) - (t_closed + GRACE))
        return {"latencies": latencies, "missed": missed}
    finally:
        reap(servers + drivers)


def phase_churn(tool: Tool, churn_bin: str, rate: int, seconds: float, leaker_pids) -> dict:
    c0 = cpu_seconds(tool.proc.pid)
    before = len(tool.events)
    # Outside the namespace's ephemeral range (1024-65000): never taken by a holder.
    churn = spawn(ns_exec([churn_bin, "65432", str(rate), str(seconds)]))
    expect(churn, "READY", 10)
    done = expect(churn, "DONE", seconds + 30)
    cpu = cpu_seconds(tool.proc.pid) - c0
    # The traffic's own CPU: the generator and its server child, which it
    # waits for before it exits (ip netns exec execs it: same pid).
    traffic = None
    if done:
        _pid, _status, usage = os.wait4(churn.pid, 0)
        churn.returncode = 0
        traffic = usage.ru_utime + usage.ru_stime
    reap([churn])
    made, took = (int(done.split()[1]), float(done.split()[2])) if done else (0, seconds)
    reaps = [e for e in tool.events[before:] if e.get("event") == "reap"]
    return {"cpu_pct": cpu / took * 100, "rate": made / took,
            "traffic_cpu_pct": traffic / took * 100 if traffic else None,
            "vs_traffic_pct": 100 * cpu / traffic if traffic else None,
            "false_kills": sum(1 for e in reaps if e["pid"] not in leaker_pids)
            if tool.name in RESREAP_TOOLS else None}


def sweep(args, churn_bin: str, resreap: str) -> list[dict]:
    """Only the churn phase, at each rate, each tool started afresh."""
    rows = []
    for name in args.tools:
        for rate in args.sweep:
            tool = Tool(name, f"rrbench{uuid.uuid4().hex[:8]}", resreap)
            try:
                time.sleep(1.0)  # past start-up
                churn = phase_churn(tool, churn_bin, rate, args.churn_secs, set())
            finally:
                end = tool.stop()
            row = {"tool": name, "asked": rate, "rate": round(churn["rate"]),
                   "lost_events": end["lost_events"],
                   "cpu_pct": round(churn["cpu_pct"], 2),
                   "traffic_cpu_pct": fmt(churn["traffic_cpu_pct"], ".1f"),
                   "vs_traffic_pct": fmt(churn["vs_traffic_pct"], ".2f")}
            rows.append(row)
            print(f"  {name:<10} {row['rate']:>7} conn/s: {row['cpu_pct']:.2f}% of a core, "
                  f"{row['vs_traffic_pct']}% of the traffic's CPU, lost "
                  f"{fmt(row['lost_events'])}", file=sys.stderr)
    return rows


def sweep_table(rows: list[dict]) -> list[str]:
    lines = ["| tool | conn/s | tool CPU % core | traffic CPU % core | tool / traffic CPU | lost |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tool']} | {r['rate']} | {r['cpu_pct']:.2f} | {r['traffic_cpu_pct']} | "
                     f"{r['vs_traffic_pct']}% | {fmt(r.get('lost_events'))} |")
    return lines


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    names = {"bpf": "resreap watch (kernel first pass)", "bpf-full": "resreap watch (before: "
             "every transition)", "proc": "resreap watch --backend proc",
             "tcpstates": "bcc tcpstates (Python)", "tcpstates-libbpf": "libbpf-tools tcpstates (C)",
             "trace": "resreap trace --json > file",
             "trace-summary": "resreap trace --json --summary 2000 > file",
             "top": "resreap top (live, on a pty)"}
    for tool in dict.fromkeys(r["tool"] for r in rows):
        pts = [(r["rate"], r["cpu_pct"]) for r in rows if r["tool"] == tool]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=names.get(tool, tool))
    ax.set_xlabel("connections per second through CLOSE_WAIT")
    ax.set_ylabel("CPU, % of one core")
    ax.set_title("Cost of watching CLOSE_WAIT churn")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_scale(rows: list[dict], path: str) -> None:
    """Idle CPU, latency and the cost of one look against N (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    for tool in dict.fromkeys(r["tool"] for r in rows):
        pts = sorted((r["n"], r) for r in rows if r["tool"] == tool)
        ns = [n for n, _ in pts]
        a.plot(ns, [max(r["idle_cpu_s_per_min"], 1e-3) for _, r in pts], marker="o", label=tool)
        b.plot(ns, [r["lat_p99_ms"] or float("nan") for _, r in pts], marker="o", label=tool)
    costs = sorted({(r["n"], r["poll_s"], r["scan_s"]) for r in rows})
    c.plot([x[0] for x in costs], [x[1] for x in costs], marker="o", label="one sock_diag poll")
    c.plot([x[0] for x in costs], [x[2] for x in costs], marker="o", label="one full fd scan")
    for ax, title, unit in ((a, "idle CPU", "CPU s per minute"), (b, "kill overshoot, p99", "ms"),
                            (c, "one look", "s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("idle established connections")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def machine() -> dict:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": model,
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def file_max(need: int) -> int | None:
    """Raise fs.file-max to at least ``need`` (a million connections are
    two million fds); the old value, to put back, or None if untouched."""
    path = Path("/proc/sys/fs/file-max")
    old = int(path.read_text())
    if old >= need:
        return None
    path.write_text(str(need))
    return old


def run_size(n: int, args, churn_bin: str, resreap: str) -> list[dict]:
    holders = []
    rows = []
    restore = file_max(2 * n + 200000)
    try:
        left = n
        while left > 0:
            take = min(PER_HOLDER, left)
            holders.append(spawn(ns_exec([sys.executable, str(HERE / "workload.py"), "hold", str(take)])))
            left -= take
        for h in holders:
            if expect(h, "READY", 1800) is None:
                raise RuntimeError("a holder failed to set up its connections")
        import costs

        cost = costs.measure()
        print(f"  N={n:>7} one sock_diag poll {cost['poll_s']:.4f} s, one full fd scan "
              f"{cost['scan_s']:.3f} s ({cost['scan_sockets']} sockets)", file=sys.stderr)
        for part in cost["poll_parts"]:
            print(f"  N={n:>7}   netns {part['netns']}: counters {part['counters_us']} us, "
                  f"sockstat {part['sockstat_us']} us, dump {part['dump_ms']} ms "
                  f"({part['close_wait']} CLOSE_WAIT)", file=sys.stderr)
        print(f"  N={n:>7} a settled poll {cost['quiet_poll_s'] * 1000:.3f} ms "
              f"({cost['quiet_poll_dumps']} dumped, {cost['quiet_poll_skips']} quiet)",
              file=sys.stderr)
        for name in args.tools:
            most = {"netstat": args.netstat_max, "ss": args.ss_max}.get(name)
            if most is not None and n > most:
                print(f"  N={n:>7} {name:<8} skipped (--{name}-max {most})", file=sys.stderr)
                continue
            tag = f"rrbench{uuid.uuid4().hex[:8]}"
            print(f"  N={n:>6} {name:<8}", end="", flush=True, file=sys.stderr)
            tool = Tool(name, tag, resreap)
            try:
                # Past start-up: the owners' first full fd scan may still run
                # after the start line (15 s at a million connections); the
                # idle phase measures the steady state after it.
                time.sleep(2 * cost["scan_s"])
                idle = phase_idle(tool, args.idle, args.chatter)
                leak = phase_leak(tool, tag, args.leakers, args.gap, args.wait_cap)
                churn = phase_churn(tool, churn_bin, args.churn, args.churn_secs, set())
            finally:
                end = tool.stop()
            lat = leak["latencies"]
            row = {"n": n, "tool": name, "idle_cpu_s_per_min": round(idle, 4),
                   "lat_p50_ms": None if not lat else round(pct(lat, 0.5) * 1000, 1),
                   "lat_p99_ms": None if not lat else round(pct(lat, 0.99) * 1000, 1),
                   "leaks_missed": leak["missed"], "churn_rate": round(churn["rate"]),
                   "churn_cpu_pct": round(churn["cpu_pct"], 2),
                   "vs_traffic_pct": fmt(churn["vs_traffic_pct"], ".2f"),
                   "false_kills": churn["false_kills"], **end, **cost}
            rows.append(row)
            print(f" idle {row['idle_cpu_s_per_min']:.3f} cpu-s/min, p50 {row['lat_p50_ms']} ms",
                  file=sys.stderr)
    finally:
        reap(holders)
        if restore is not None:
            Path("/proc/sys/fs/file-max").write_text(str(restore))
    return rows


def fmt(v, spec="") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    head = ("| N | tool | start s | idle CPU s/min | vs netstat | latency p50 ms | p99 ms | "
            "missed | churn conn/s | churn CPU % core | vs traffic CPU | lost | false kills | "
            "peak RSS MB |")
    lines = [head, "|" + "---|" * 14]
    by_n: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_n.setdefault(r["n"], {})[r["tool"]] = r
    for r in rows:
        base = by_n[r["n"]].get("netstat", {}).get("idle_cpu_s_per_min")
        ratio = (f"{100 * r['idle_cpu_s_per_min'] / base:.2f}%" if base else "-")
        lines.append(
            f"| {r['n']} | {r['tool']} | {r.get('start_s', '-')} | {r['idle_cpu_s_per_min']:.3f} | {ratio} | "
            f"{fmt(r['lat_p50_ms'])} | {fmt(r['lat_p99_ms'])} | {r['leaks_missed']} | "
            f"{r['churn_rate']} | {r['churn_cpu_pct']:.1f} | {r.get('vs_traffic_pct', '-')}% | "
            f"{fmt(r['lost_events'])} | "
            f"{fmt(r['false_kills'])} | {r['peak_rss_mb']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,20000,100000")
    ap.add_argument("--tools", default="bpf,bpf-bcc,proc,netstat,ss")
    ap.add_argument("--idle", type=float, default=15.0, help="idle phase seconds")
    ap.add_argument("--chatter", type=float, default=0.0, metavar="SECONDS",
                    help="during the idle phase, a byte each way every SECONDS on a "
                         "connection in the host's namespace (never quiet: the polling "
                         "fallback dumps it every poll)")
    ap.add_argument("--leakers", type=int, default=12)
    ap.add_argument("--netstat-max", type=int, default=20000,
                    help="skip the netstat poller above this size (18 s per call at 100k)")
    ap.add_argument("--ss-max", type=int, default=100000,
                    help="skip the ss poller above this size")
    ap.add_argument("--startup", action="store_true",
                    help="only start-to-ready, idle and beside 3 CPU hogs, per loader")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between leaks")
    ap.add_argument("--wait-cap", type=float, default=15.0, help="max wait for a kill")
    ap.add_argument("--churn", type=int, default=10000, help="connections/s")
    ap.add_argument("--churn-secs", type=float, default=10.0)
    ap.add_argument("--churn-bin", required=True)
    ap.add_argument("--sweep", default="",
                    help="churn rates, e.g. 1000,5000,20000,40000: only the churn phase, "
                         "plotted (tools default to bpf,bpf-full,proc,tcpstates)")
    ap.add_argument("--resreap", default=str(ROOT / ".venv" / "bin" / "resreap"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmark"))
    args = ap.parse_args()
    if args.sweep and "--tools" not in sys.argv:
        args.tools = "bpf,bpf-full,proc,tcpstates"
    args.tools = args.tools.split(",")
    args.sweep = [int(r) for r in args.sweep.split(",") if r]
    if os.geteuid() != 0:
        sys.exit("bench: run as root (sudo scripts/bench)")
    if args.startup:
        import startup

        srows = startup.run(args.resreap, args.startup_runs)
        lines = startup.table(srows)
        print("\n".join(lines))
        Path(args.out + "-startup.json").write_text(json.dumps(
            {"machine": machine(), "rows": srows}, indent=1) + "\n")
        return
    make_netns()
    if args.sweep:
        try:
            rows = sweep(args, args.churn_bin, args.resreap)
        finally:
            subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
        lines = sweep_table(rows)
        print("\n".join(lines))
        Path(args.out + "-sweep.json").write_text(json.dumps(
            {"machine": machine(), "settings": vars(args), "rows": rows}, indent=1) + "\n")
        plot(rows, str(Path(args.out).parent / "churn-cost.png"))
        return
    rows: list[dict] = []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            rows += run_size(n, args, args.churn_bin, args.resreap)
    finally:
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    info = machine()
    lines = table(rows)
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"machine": info, "grace_s": GRACE,
                                                    "settings": vars(args) | {"tools": args.tools},
                                                    "rows": rows}, indent=1) + "\n")
    if len({r["n"] for r in rows}) >= 3:
        plot_scale(rows, args.out + ".png")
    Path(args.out + ".md").write_text(
        f"# Benchmark results\n\nMachine: {info['cpus']} x {info['cpu']}, {info['mem_gb']} GiB, "
        f"Linux {info['kernel']}, Python {info['python']}, {info['date']}.  Grace {GRACE:g} s, "
        f"{args.leakers} leakers, churn {args.churn} conn/s for {args.churn_secs:g} s, idle "
        f"phase {args.idle:g} s.  Produced by `sudo scripts/bench`; see docs/benchmarks.md for "
        "what each column means.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
