"""What resreap needs to know about a process, read from /proc.

Identity is pid + start time: a pid alone can name another process by the
time we act on it.
"""

from __future__ import annotations

import concurrent.futures
from typing import NamedTuple

from resreap.errors import ProcessGone, ProcessUnreadable

PF_KTHREAD = 0x00200000
# A command line is whatever its process wrote there (a megabyte, if it
# likes): resreap keeps at most this much of it, marked where cut.
CMDLINE_MAX = 65536


class ProcInfo(NamedTuple):
    pid: int
    start: int        # starttime, clock ticks since boot (field 22 of stat)
    ppid: int
    comm: str
    cmdline: str      # argv joined by spaces; may hold any byte, escape on output
    kthread: bool


def read_stat(pid: int, proc_root: str = "/proc") -> tuple[int, int, str, bool]:
    """(start, ppid, comm, kthread) of ``pid``; raises ProcessGone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    # comm is in parentheses and may itself contain ") ": split at the last.
    head, _, tail = raw.rpartition(b") ")
    comm = head.partition(b" (")[2].decode("utf-8", "backslashreplace")
    fields = tail.split()
    ppid = int(fields[1])
    flags = int(fields[6])
    start = int(fields[19])
    return start, ppid, comm, bool(flags & PF_KTHREAD)


def start_time(pid: int, proc_root: str = "/proc") -> int:
    return read_stat(pid, proc_root)[0]


def read(pid: int, proc_root: str = "/proc") -> ProcInfo:
    start, ppid, comm, kthread = read_stat(pid, proc_root)
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            argv = f.read(CMDLINE_MAX + 1)
            cut = len(argv) > CMDLINE_MAX
            if cut:
                argv = argv[:CMDLINE_MAX]
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    cmdline = argv.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")
    if cut:
        cmdline += "...[cut]"
    if start_time(pid, proc_root) != start:
        raise ProcessGone(pid, "was replaced while being read")
    return ProcInfo(pid, start, ppid, comm, cmdline or f"[{comm}]", kthread)


def read_uids(pid: int, proc_root: str = "/proc") -> frozenset[int]:
    """Real, effective, saved and fs uids of ``pid``; raises ProcessGone.
    (The owner of /proc/PID is not it: non-dumpable processes show root.)"""
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return frozenset(int(u) for u in line.split()[1:5])
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    raise ProcessGone(pid, "has no Uid line in its status")


def fd_soft_limit(pid: int, proc_root: str = "/proc") -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (None: unlimited or unreadable)."""
    try:
        with open(f"{proc_root}/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line[len("Max open files"):].split()[0]
                    return int(soft) if soft.isdigit() else None
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    except OSError:
        return None
    return None


def ancestors(pid: int, proc_root: str = "/proc") -> set[int]:
    """``pid`` and every process above it up to init."""
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        try:
            pid = read_stat(pid, proc_root)[1]
        except ProcessGone:
            break
    return chain


def alive(pid: int, start: int, proc_root: str = "/proc") -> bool:
    try:
        return start_time(pid, proc_root) == start
    except ProcessGone:
        return False



# Reading /proc/PID/cmdline takes the target's mmap lock: a process stuck in
# D state while holding it makes the read hang.  Reads go through a few
# worker threads and are given up after a timeout, so the event loop never
# blocks; a stuck worker stays stuck, and later reads use the others.
_READERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="procread")


def read_bounded(pid: int, proc_root: str = "/proc", timeout: float = 1.0) -> ProcInfo:
    future = _READERS.submit(read, pid, proc_root)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise ProcessUnreadable(pid, timeout) from None
