"""psutil or the hand-written /proc edge, for the facts one decision reads.

    sudo .venv/bin/python bench/procfacts.py [--procs 200] [--rounds 20]

(needs psutil: `pip install psutil`, the bench extra.)  One decision reads,
per process: its stat (start time, parent, name), its command line, its
uids, its cgroup, and where --fd-percent is set its soft RLIMIT_NOFILE and
its fd count.  Each side reads the same facts of the same live processes;
psutil inside ``oneshot()``, its cache for several reads of one process.
Then three hostile processes: a 1.8 MB command line, one that exits while
it is read, and a read that blocks (a /proc read of a process stuck in
the kernel is simulated by a FUSE-less stand-in: a fake root whose cmdline
is a FIFO nobody writes).  Prints one table; docs/architecture.md cites it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from resreap.errors import ResreapError  # noqa: E402
from resreap.host import supervisor  # noqa: E402
from resreap.host.procinfo import HOST, Proc  # noqa: E402


def edge_facts(proc: Proc, pid: int, fd_percent: bool) -> tuple:
    info = proc.read_bounded(pid)
    uids = proc.read_uids(pid)
    where = supervisor.read(pid, proc)
    extra = (proc.fd_soft_limit(pid), proc.fd_count(pid)) if fd_percent else ()
    return info.start, info.ppid, info.comm, info.cmdline, uids, where.unit, extra


def psutil_facts(pid: int, fd_percent: bool) -> tuple:
    p = psutil.Process(pid)
    with p.oneshot():
        start, ppid, name = p.create_time(), p.ppid(), p.name()
        cmdline = " ".join(p.cmdline())
        uids = frozenset(p.uids())  # real, effective, saved: psutil has no fsuid
        # psutil has no cgroup reader: the unit needs the file itself.
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            cgroup = f.read(65536)
        extra = (p.rlimit(psutil.RLIMIT_NOFILE)[0], p.num_fds()) if fd_percent else ()
    return start, ppid, name, cmdline, uids, cgroup, extra


def timed(fn, pids, rounds: int) -> float:
    """Microseconds per process per read, the best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for pid in pids:
            try:
                fn(pid)
            except (ResreapError, psutil.Error, OSError):
                pass
        best = min(best, time.perf_counter() - t0)
    return best / len(pids) * 1e6


def hostile_long_cmdline() -> dict:
    # One argument is at most 128 KiB (MAX_ARG_STRLEN), all of them about
    # 2 MB with the environment (ARG_MAX): 14 of them.
    args = ["x" * 131000] * 14
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *args])
    try:
        time.sleep(0.3)
        t0 = time.perf_counter()
        info = HOST.read_bounded(child.pid)
        edge = (time.perf_counter() - t0, len(info.cmdline))
        t0 = time.perf_counter()
        got = " ".join(psutil.Process(child.pid).cmdline())
        ps = (time.perf_counter() - t0, len(got))
    finally:
        child.kill()
        child.wait()
    return {"edge": f"{edge[0] * 1e3:.2f} ms, keeps {edge[1]:,} chars (cut at 64 KiB)",
            "psutil": f"{ps[0] * 1e3:.2f} ms, keeps {ps[1]:,} chars (all of it, each look)"}


def hostile_exiting() -> dict:
    """A process that exits between the stat and the command line: the edge
    says ProcessGone or ProcessReplaced (pid reused), psutil NoSuchProcess."""
    out = {}
    for name, fn in (("edge", lambda pid: edge_facts(HOST, pid, True)),
                     ("psutil", lambda pid: psutil_facts(pid, True))):
        seen: dict[str, int] = {}
        for _ in range(200):
            child = subprocess.Popen(["/bin/true"])
            try:
                fn(child.pid)
                seen["read"] = seen.get("read", 0) + 1
            except Exception as exc:  # noqa: BLE001 - what each raises is the finding
                seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
            child.wait()
        out[name] = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
    return out


def hostile_blocking() -> dict:
    """A read that never returns (a process stuck in the kernel makes
    /proc/PID/cmdline block on its mmap lock): a fake /proc whose cmdline
    is a FIFO with no writer."""
    root = Path(tempfile.mkdtemp(prefix="rr-procfacts-"))
    me = os.getpid()
    (root / str(me)).mkdir()
    (root / str(me) / "stat").write_bytes(Path(f"/proc/{me}/stat").read_bytes())
    os.mkfifo(root / str(me) / "cmdline")
    fake = Proc(str(root))
    t0 = time.perf_counter()
    try:
        fake.read_bounded(me, timeout=1.0)
        edge = "read"
    except ResreapError as exc:
        edge = f"{type(exc).__name__} after {time.perf_counter() - t0:.2f} s (the loop goes on)"
    # psutil reads /proc/PID/cmdline with no timeout: the same FIFO through
    # its own procfs path setting blocks the caller; shown on a thread.
    psutil.PROCFS_PATH = str(root)
    done = threading.Event()

    def read() -> None:
        try:
            psutil.Process(me).cmdline()
        except Exception:  # noqa: BLE001
            pass
        done.set()

    threading.Thread(target=read, daemon=True).start()
    blocked = not done.wait(3.0)
    psutil.PROCFS_PATH = "/proc"
    ps = "still blocked after 3 s (no timeout: the loop would stop)" if blocked else "returned"
    return {"edge": edge, "psutil": ps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(args.procs)]
    try:
        time.sleep(0.3)
        pids = [c.pid for c in children]
        rows = []
        for fd_percent in (False, True):
            edge = timed(lambda pid: edge_facts(HOST, pid, fd_percent), pids, args.rounds)
            ps = timed(lambda pid: psutil_facts(pid, fd_percent), pids, args.rounds)
            rows.append((fd_percent, edge, ps))
    finally:
        for c in children:
            c.kill()
            c.wait()
    print(f"psutil {psutil.__version__}, Python {sys.version.split()[0]}, "
          f"{args.procs} processes, best of {args.rounds}")
    print("| facts of one decision | /proc edge us/process | psutil oneshot us/process |")
    print("|---|---|---|")
    for fd_percent, edge, ps in rows:
        what = "stat, cmdline, uids, cgroup" + (", rlimit, fd count" if fd_percent else "")
        print(f"| {what} | {edge:.1f} | {ps:.1f} |")
    for name, res in (("1.8 MB command line", hostile_long_cmdline()),
                      ("exits while read (200 tries)", hostile_exiting()),
                      ("a read that blocks", hostile_blocking())):
        print(f"| {name} | {res['edge']} | {res['psutil']} |")


if __name__ == "__main__":
    main()
