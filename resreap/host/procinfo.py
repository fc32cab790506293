"""What resreap needs to know about a process, read from /proc.

Identity is pid + start time: a pid alone can name another process by the
time we act on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from typing import Iterator, NamedTuple

from resreap.errors import AccessDenied, OutOfFds, ProcessGone, ProcessReplaced, \
    ProcessUnreadable

# resreap's own fd table (or the system's) is full: not a fact about the
# process read.
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def out_of_fds(exc: OSError, what: str) -> None:
    """Raise OutOfFds for EMFILE/ENFILE, return for any other error."""
    if exc.errno in OUT_OF_FDS:
        raise OutOfFds(what) from exc

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


@contextlib.contextmanager
def proc_errors(pid: int, what: str = "") -> Iterator[None]:
    """The /proc edge: OS errors become the domain's, here and only here
    (as psutil's wrap_exceptions does).  ENOENT/ESRCH: the process is gone;
    EACCES/EPERM: access denied."""
    try:
        yield
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    except PermissionError as exc:
        raise AccessDenied(pid, what) from exc
    except OSError as exc:
        out_of_fds(exc, f"reading /proc/{pid}{what}")
        raise


def read_stat(pid: int, proc_root: str = "/proc") -> tuple[int, int, str, bool]:
    """(start, ppid, comm, kthread) of ``pid``; raises ProcessGone or
    AccessDenied."""
    with proc_errors(pid, "/stat"), open(f"{proc_root}/{pid}/stat", "rb") as f:
        raw = f.read()
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
    with proc_errors(pid, "/cmdline"), open(f"{proc_root}/{pid}/cmdline", "rb") as f:
        argv = f.read(CMDLINE_MAX + 1)
    cut = len(argv) > CMDLINE_MAX
    if cut:
        argv = argv[:CMDLINE_MAX]
    cmdline = argv.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")
    if cut:
        cmdline += "...[cut]"
    if start_time(pid, proc_root) != start:
        raise ProcessReplaced(pid)
    return ProcInfo(pid, start, ppid, comm, cmdline or f"[{comm}]", kthread)


def read_uids(pid: int, proc_root: str = "/proc") -> frozenset[int]:
    """Real, effective, saved and fs uids of ``pid``; raises ProcessGone.
    (The owner of /proc/PID is not it: non-dumpable processes show root.)"""
    with proc_errors(pid, "/status"), open(f"{proc_root}/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return frozenset(int(u) for u in line.split()[1:5])
    raise ProcessGone(pid, "has no Uid line in its status")


def fd_soft_limit(pid: int, proc_root: str = "/proc") -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (None: unlimited or unreadable)."""
    with proc_errors(pid, "/limits"), open(f"{proc_root}/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line[len("Max open files"):].split()[0]
                return int(soft) if soft.isdigit() else None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def age(start: int) -> float:
    """Seconds since a process started (``start``: its starttime ticks)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start / CLK_TCK


def ancestors(pid: int, proc_root: str = "/proc") -> set[int]:
    """``pid`` and every process above it up to init."""
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        try:
            pid = read_stat(pid, proc_root)[1]
        except (ProcessGone, AccessDenied):
            break
    return chain


def alive(pid: int, start: int, proc_root: str = "/proc") -> bool:
    try:
        return start_time(pid, proc_root) == start
    except (ProcessGone, AccessDenied):
        return False



# Reading /proc/PID/cmdline takes the target's mmap lock: a process stuck in
# D state while holding it (a FUSE or userfaultfd trick does it on purpose)
# makes the read hang.  Each bounded read runs in a thread of its own and is
# given up after a timeout, so the caller never blocks and a stuck read takes
# nothing from the next (a fixed pool was exhausted for good by four).  A
# pid whose read is still stuck is not read again until it returns, and the
# stuck threads are capped: past the cap, reads fail at once as unreadable.
STUCK_MAX = 128
_lock = threading.Lock()
_stuck: set[int] = set()


def read_bounded(pid: int, proc_root: str = "/proc", timeout: float = 1.0) -> ProcInfo:
    with _lock:
        if pid in _stuck or len(_stuck) >= STUCK_MAX:
            raise ProcessUnreadable(pid, timeout)
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["info"] = read(pid, proc_root)
        except BaseException as exc:  # handed to the caller, or dropped if it left
            box["error"] = exc
        finally:
            with _lock:
                done.set()
                _stuck.discard(pid)

    threading.Thread(target=work, name=f"procread-{pid}", daemon=True).start()
    if not done.wait(timeout):
        with _lock:
            if not done.is_set():
                _stuck.add(pid)
                raise ProcessUnreadable(pid, timeout)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["info"]  # type: ignore[return-value]
